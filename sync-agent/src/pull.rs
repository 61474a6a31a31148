//! Failback over the agents' SSH connection (issue 11, item 2): the primary pulls what the
//! acting backup changed before it pushes.
//!
//! The backup registers two exec commands ([`register`]): the offer (its changes since the
//! common base, see `restore_hooks::authority`) and "taken". The primary ([`pull`]) asks for the
//! offer on the connection its daemon (or `ha-sync now`) already holds, applies it to its live
//! tree, records conflicts and raises `ha:sync:conflict`, then tells the backup which live
//! state it took, so the backup's restore of the next generation may write over it. A backup
//! that was not master since the base answers at once with an empty offer: one round trip.

use crate::alerts::{self, Alert, AlertConfig};
use crate::transport::{Connection, PeerInfo, ReadWrite, Server, TransportError};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use sync_core::fsx::{self, Durability};
use sync_core::node::Node;
use sync_core::pull::{Offer, Taken, MAX_OFFER, OFFER_COMMAND, PULL_VERSION, TAKEN_COMMAND};
use sync_core::runner::Runner;

/// In the state directory: what the last pull did.
pub const PULL_FILE: &str = "pull.json";

#[derive(Debug, thiserror::Error)]
pub enum PullFailure {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("pull from {peer}: {msg}")]
    Peer { peer: String, msg: String },
    #[error("pull from {peer}: {msg}")]
    Local { peer: String, msg: String },
}

/// What the last pull did, as `ha-sync status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRecord {
    pub time: u64,
    pub peer: String,
    /// When the peer became master, if it was the authority.
    pub authority_since: Option<u64>,
    pub taken: Vec<String>,
    pub merged: Vec<String>,
    pub conflicts: usize,
    /// Offered paths this node does not sync (not taken, not an error).
    #[serde(default)]
    pub skipped: Vec<String>,
    pub errors: Vec<(String, String)>,
}

/// Adds the offer and taken commands to the backup's server.
pub fn register(server: Server, node: &Node, runner: Arc<dyn Runner>) -> Server {
    let (n, r) = (node.clone(), runner.clone());
    let server = server.with_action(
        OFFER_COMMAND,
        Arc::new(move |stream: &mut dyn ReadWrite, peer: &PeerInfo| {
            let staging = n.staging_dir();
            let ctx = restore_hooks::Ctx {
                root: n.root(),
                staging: &staging,
                runner: r.as_ref(),
            };
            let offer = restore_hooks::authority::offer(&ctx).map_err(|e| e.to_string())?;
            if !offer.changes.is_empty() {
                tracing::info!(
                    "pull: {} path(s) offered to {}",
                    offer.changes.len(),
                    peer.addr
                );
            }
            sync_core::fault::point(sync_core::fault::PULL_OFFERED);
            stream
                .write_all(&offer.encode())
                .and_then(|()| stream.flush())
                .map_err(|e| format!("sending the offer: {e}"))
        }),
    );
    let (n, r) = (node.clone(), runner.clone());
    let server = server.with_action(
        sync_core::pull::LIVE_COMMAND,
        Arc::new(move |stream: &mut dyn ReadWrite, _peer: &PeerInfo| {
            let staging = n.staging_dir();
            let ctx = restore_hooks::Ctx {
                root: n.root(),
                staging: &staging,
                runner: r.as_ref(),
            };
            let view = restore_hooks::authority::live_view(&ctx).map_err(|e| e.to_string())?;
            stream
                .write_all(&view.encode())
                .and_then(|()| stream.flush())
                .map_err(|e| format!("sending the live view: {e}"))
        }),
    );
    let n = node.clone();
    server.with_action(
        TAKEN_COMMAND,
        Arc::new(move |stream: &mut dyn ReadWrite, _peer: &PeerInfo| {
            let mut buf = Vec::new();
            stream
                .take(4096)
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading: {e}"))?;
            let t = Taken::decode(&buf).map_err(|e| e.to_string())?;
            let staging = n.staging_dir();
            let ctx = restore_hooks::Ctx {
                root: n.root(),
                staging: &staging,
                runner: runner.as_ref(),
            };
            restore_hooks::authority::taken(&ctx, &t).map_err(|e| e.to_string())
        }),
    )
}

/// Pulls from the backup on `conn` into `node`'s live tree. `Ok(None)`: the backup had
/// nothing to give (it was not master since the base, or is an agent without pulls).
pub async fn pull(
    conn: &Connection,
    node: &Node,
    runner: Arc<dyn Runner>,
) -> Result<Option<PullRecord>, PullFailure> {
    let peer = conn.peer().to_string();
    let out = match conn
        .exec(OFFER_COMMAND, tokio::io::empty(), MAX_OFFER)
        .await
    {
        Ok(o) => o,
        Err(TransportError::ExecRefused { .. }) => {
            tracing::debug!("pull: {peer} offers no pulls (an older agent)");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    if out.status != Some(0) {
        return Err(PullFailure::Peer {
            peer,
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let offer = Offer::decode(&out.stdout).map_err(|e| PullFailure::Peer {
        peer: peer.clone(),
        msg: e.to_string(),
    })?;
    if offer.authority_since.is_none() {
        return Ok(None);
    }
    let (n, r, o) = (node.clone(), runner.clone(), offer.clone());
    let applied = tokio::task::spawn_blocking(move || {
        let staging = n.staging_dir();
        let ctx = restore_hooks::Ctx {
            root: n.root(),
            staging: &staging,
            runner: r.as_ref(),
        };
        restore_hooks::authority::apply_offer(&ctx, &o)
    })
    .await
    .map_err(|e| PullFailure::Local {
        peer: peer.clone(),
        msg: format!("pull task: {e}"),
    })?
    .map_err(|e| PullFailure::Local {
        peer: peer.clone(),
        msg: e.to_string(),
    })?;
    let record = PullRecord {
        time: sync_core::clock::now_secs(),
        peer: peer.clone(),
        authority_since: offer.authority_since,
        taken: applied.taken.clone(),
        merged: applied.merged.clone(),
        conflicts: applied.conflicts.len(),
        skipped: applied.skipped.iter().map(|(p, _)| p.clone()).collect(),
        errors: applied.errors.clone(),
    };
    save(node, &record);
    if !applied.conflicts.is_empty() {
        let msg = format!(
            "{} conflict(s) pulling from {peer}: {}; the backup's values are live, the \
             primary's are in the attic (ha-sync status, ha-sync resolve)",
            applied.conflicts.len(),
            applied
                .conflicts
                .iter()
                .map(|c| match (&c.section, &c.option) {
                    (Some(s), Some(o)) => format!("/{}: {s}.{o}", c.path),
                    (Some(s), None) => format!("/{}: {s}", c.path),
                    _ => format!("/{}", c.path),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        tracing::warn!("{msg}");
        raise_conflict(node, runner.as_ref(), &msg);
    }
    tracing::info!(
        "pull from {peer}: {} path(s) taken, {} merged, {} conflict(s), {} error(s)",
        record.taken.len(),
        record.merged.len(),
        record.conflicts,
        record.errors.len()
    );
    if !applied.errors.is_empty() {
        // The backup keeps holding its changes: the next pull tries again.
        return Err(PullFailure::Local {
            peer,
            msg: format!(
                "{} path(s) could not be applied: {}",
                applied.errors.len(),
                applied
                    .errors
                    .iter()
                    .take(3)
                    .map(|(p, e)| format!("{p}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        });
    }
    sync_core::fault::point(sync_core::fault::PULL_APPLIED);
    let taken = Taken {
        version: PULL_VERSION,
        live_root: offer.live_root,
    };
    let out = conn.exec(TAKEN_COMMAND, &taken.encode()[..], 4096).await?;
    if out.status != Some(0) {
        return Err(PullFailure::Peer {
            peer,
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(Some(record))
}

/// Raises `ha:sync:conflict` with `msg` (its state timestamp and the alert command).
fn raise_conflict(node: &Node, runner: &dyn Runner, msg: &str) {
    let cfg = AlertConfig::load(node.root());
    if let Err(e) = alerts::record(
        node.root(),
        runner,
        cfg.command.as_deref(),
        Alert::Conflict,
        true,
        msg,
    ) {
        tracing::warn!("recording the conflict alert: {e}");
    }
}

fn save(node: &Node, r: &PullRecord) {
    let p = node.state_dir().join(PULL_FILE);
    if let Ok(b) = serde_json::to_vec_pretty(r) {
        if let Err(e) = fsx::write_atomic(&p, &b, 0o644, Durability::Visible) {
            tracing::warn!("{}: {e}", p.display());
        }
    }
}

/// The last pull recorded on `node`.
pub fn last(node: &Node) -> Option<PullRecord> {
    serde_json::from_slice(&std::fs::read(node.state_dir().join(PULL_FILE)).ok()?).ok()
}

// ---------------------------------------------------------------------------------------------
// The catch-up gate (issue 11, item 3)

/// How long a returning primary holds back from taking the VIP while the peer has changes it
/// cannot pull, unless UCI `keepalived.ha_peer.catchup_wait` (seconds) says otherwise.
pub const DEFAULT_CATCHUP_WAIT: Duration = Duration::from_secs(120);
/// In the state directory: since when the gate has been holding back.
pub const CATCHUP_FILE: &str = "catchup";
/// In the state directory: the last answer of `ha-sync caught-up` (time and text).
pub const CATCHUP_LAST: &str = "catchup-last";
/// The check connects within this: an unreachable peer must not hold anything back.
pub const CATCHUP_CONNECT: Duration = Duration::from_secs(2);

/// What `ha-sync caught-up` found. Only [`CatchUp::Waiting`] holds the primary's priority
/// below the peer's: availability first, a down or unreachable peer never delays a takeover.
#[derive(Debug)]
pub enum CatchUp {
    /// Not a configured primary: the gate does not apply.
    NotPrimary,
    /// Already master: never demoted by the gate.
    Master,
    /// The peer does not answer: take over.
    Unreachable(String),
    /// The peer has nothing this node lacks.
    UpToDate,
    /// The peer's changes are now in this node's live tree.
    Pulled(PullRecord),
    /// The peer holds changes that could not be pulled yet: hold back.
    Waiting(String),
    /// Held back past the bounded wait: take over anyway (alert raised).
    GaveUp(String),
}

impl CatchUp {
    /// Whether the primary must stay below the peer (the script fails).
    pub fn holds_back(&self) -> bool {
        matches!(self, CatchUp::Waiting(_))
    }
}

impl std::fmt::Display for CatchUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CatchUp::NotPrimary => write!(f, "caught up: not a primary"),
            CatchUp::Master => write!(f, "caught up: this node is master"),
            CatchUp::Unreachable(e) => write!(f, "caught up: the peer is unreachable ({e})"),
            CatchUp::UpToDate => write!(f, "caught up: the peer holds nothing new"),
            CatchUp::Pulled(r) => write!(
                f,
                "caught up: pulled {} path(s), merged {}, {} conflict(s)",
                r.taken.len(),
                r.merged.len(),
                r.conflicts
            ),
            CatchUp::Waiting(e) => write!(f, "holding back: {e}"),
            CatchUp::GaveUp(e) => write!(f, "taking over without catching up: {e}"),
        }
    }
}

fn catchup_wait(node: &Node) -> Duration {
    node.keepalived()
        .ok()
        .and_then(|p| p.get("ha_peer", "catchup_wait").map(str::to_string))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_CATCHUP_WAIT, Duration::from_secs)
}

/// Since when the gate holds back (recorded at the first failure), and forgetting it.
fn waiting_since(node: &Node, start: bool) -> Option<u64> {
    let p = node.state_dir().join(CATCHUP_FILE);
    if !start {
        let _ = std::fs::remove_file(&p);
        return None;
    }
    if let Some(t) = std::fs::read_to_string(&p)
        .ok()
        .and_then(|t| t.trim().parse().ok())
    {
        return Some(t);
    }
    let now = sync_core::clock::now_secs();
    let _ = fsx::write_atomic(
        &p,
        format!("{now}\n").as_bytes(),
        0o644,
        Durability::Visible,
    );
    Some(now)
}

/// Whether the recorded VRRP state predates the keepalived that runs this check: a killed
/// keepalived runs no NOTIFY_STOP, so its "master" outlives it, and the restarted one runs
/// the check before its first event. keepalived's VRRP process is our parent.
fn stale_state(node: &Node) -> bool {
    let Ok(recorded) = std::fs::metadata(node.vrrp_state_file()).and_then(|m| m.modified()) else {
        return true;
    };
    match parent_started() {
        Some(started) => recorded < started,
        None => false,
    }
}

/// When the parent process started (from /proc: its start in clock ticks after boot).
fn parent_started() -> Option<std::time::SystemTime> {
    let stat = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    // Fields after the command name, which may hold spaces: `pid (comm) state ppid ...`.
    let fields = |s: &str| -> Vec<String> {
        s.rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    };
    let me = fields(&stat("self")?);
    let ppid = me.get(1)?.clone();
    let parent = fields(&stat(&ppid)?);
    // starttime is field 22 of stat, the 20th after the command name.
    let ticks: u64 = parent.get(19)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let ms = btime * 1000 + ticks * 1000 / hz as u64;
    Some(std::time::UNIX_EPOCH + Duration::from_millis(ms))
}

/// The check keepalived runs on the primary (`vrrp_script`, negative weight): pulls what the
/// peer changed while it was master, and says whether this node may take the VIP back.
pub async fn catch_up(
    node: &Node,
    client: &crate::transport::ClientConfig,
    runner: Arc<dyn Runner>,
) -> CatchUp {
    if node.role() != Some(sync_core::node::Role::Primary) {
        return CatchUp::NotPrimary;
    }
    if node.vrrp_state() == Some(sync_core::node::VrrpState::Master) && !stale_state(node) {
        waiting_since(node, false);
        return CatchUp::Master;
    }
    let mut client = client.clone();
    client.connect_timeout = client.connect_timeout.min(CATCHUP_CONNECT);
    let conn = match Connection::open(&client).await {
        Ok(c) => c,
        Err(e) => {
            waiting_since(node, false);
            return CatchUp::Unreachable(e.to_string());
        }
    };
    // The daemon's syncs and `ha-sync now` take the same lock: one pull at a time.
    let path = node.sync_lock_path();
    let lock = tokio::task::spawn_blocking(move || {
        fsx::Lock::acquire(&path).map_err(|e| format!("{}: {e}", path.display()))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let result = match lock {
        Ok(_lock) => pull(&conn, node, runner.clone()).await,
        Err(msg) => Err(PullFailure::Local {
            peer: conn.peer().to_string(),
            msg,
        }),
    };
    conn.disconnect().await;
    let e = match result {
        Ok(r) => {
            waiting_since(node, false);
            return r.map_or(CatchUp::UpToDate, CatchUp::Pulled);
        }
        Err(e) => e.to_string(),
    };
    let since = waiting_since(node, true).unwrap_or(0);
    let wait = catchup_wait(node);
    if sync_core::clock::now_secs().saturating_sub(since) < wait.as_secs() {
        return CatchUp::Waiting(e);
    }
    let msg = format!(
        "the peer's changes could not be pulled for {} s ({e}): this node takes over, and its \
         next sync pulls them first",
        wait.as_secs()
    );
    // The record stays until this node is master (or the peer answers): the checks until then
    // must not start a new wait and pull the priority down again.
    if !alerts::is_raised(node.root(), Alert::Conflict) {
        raise_conflict(node, runner.as_ref(), &msg);
    }
    CatchUp::GaveUp(msg)
}

// ---------------------------------------------------------------------------------------------
// ha-sync diff (issue 11, item 5)

/// One thing that differs between the nodes' live trees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// Router path.
    pub path: String,
    /// For a UCI file: `section.option` (or the section) that differs.
    pub at: Option<String>,
    pub primary: String,
    pub backup: String,
}

fn describe(e: Option<&sync_core::manifest::Entry>) -> String {
    use sync_core::manifest::Kind;
    match e.map(|e| (&e.kind, e.mode)) {
        None => "absent".into(),
        Some((Kind::File { size, hash }, mode)) => {
            format!(
                "file {size} bytes mode {mode:o} blake3 {}",
                &hash.to_hex()[..12]
            )
        }
        Some((Kind::Dir, _)) => "directory".into(),
        Some((Kind::Symlink { target }, _)) => format!("symlink to {target}"),
    }
}

/// Option-level differences of two UCI texts (sections by name, anonymous ones as uci counts
/// them: `@rule[2]`).
fn uci_differences(path: &str, ours: &[u8], theirs: &[u8]) -> Vec<Difference> {
    use sync_core::uci::{Package, Value};
    let parse = |b: &[u8]| Package::parse(&String::from_utf8_lossy(b), std::path::Path::new(path));
    let (Ok(o), Ok(t)) = (parse(ours), parse(theirs)) else {
        return Vec::new();
    };
    let labelled = |p: &Package| -> Vec<(String, sync_core::uci::Section)> {
        let mut count = std::collections::HashMap::new();
        p.sections
            .iter()
            .map(|s| {
                let label = match &s.name {
                    Some(n) => n.clone(),
                    None => {
                        let i = count.entry(s.kind.clone()).or_insert(0);
                        *i += 1;
                        format!("@{}[{}]", s.kind, *i - 1)
                    }
                };
                (label, s.clone())
            })
            .collect()
    };
    let (ol, tl) = (labelled(&o), labelled(&t));
    let show = |v: Option<&Value>| match v {
        None => "absent".to_string(),
        Some(Value::Single(s)) => format!("'{s}'"),
        Some(Value::List(l)) => format!("[{}]", l.join(", ")),
    };
    let mut out = Vec::new();
    let mut labels: Vec<&String> = ol.iter().map(|(l, _)| l).collect();
    labels.extend(
        tl.iter()
            .map(|(l, _)| l)
            .filter(|l| !ol.iter().any(|(o, _)| o == *l)),
    );
    for label in labels {
        let os = ol.iter().find(|(l, _)| l == label).map(|(_, s)| s);
        let ts = tl.iter().find(|(l, _)| l == label).map(|(_, s)| s);
        match (os, ts) {
            (Some(a), Some(b)) => {
                let mut names: Vec<&String> = a.options.iter().map(|(n, _)| n).collect();
                names.extend(
                    b.options
                        .iter()
                        .map(|(n, _)| n)
                        .filter(|n| a.value(n).is_none()),
                );
                for n in names {
                    if a.value(n) != b.value(n) {
                        out.push(Difference {
                            path: format!("/{path}"),
                            at: Some(format!("{label}.{n}")),
                            primary: show(a.value(n)),
                            backup: show(b.value(n)),
                        });
                    }
                }
            }
            (a, b) => out.push(Difference {
                path: format!("/{path}"),
                at: Some(label.clone()),
                primary: if a.is_some() { "section" } else { "absent" }.into(),
                backup: if b.is_some() { "section" } else { "absent" }.into(),
            }),
        }
    }
    out
}

/// What differs between this node's live tree and the backup's (`ha-sync diff`): paths, and
/// options for UCI files. Empty: the nodes hold the same configuration.
pub async fn diff(
    conn: &Connection,
    node: &Node,
    runner: Arc<dyn Runner>,
) -> Result<Vec<Difference>, PullFailure> {
    let peer = conn.peer().to_string();
    let out = conn
        .exec(sync_core::pull::LIVE_COMMAND, tokio::io::empty(), MAX_OFFER)
        .await?;
    if out.status != Some(0) {
        return Err(PullFailure::Peer {
            peer,
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let view = sync_core::pull::LiveView::decode(&out.stdout).map_err(|e| PullFailure::Peer {
        peer: peer.clone(),
        msg: e.to_string(),
    })?;
    let n = node.clone();
    let ours =
        tokio::task::spawn_blocking(move || sync_core::prepare::prepare_saved(&n, runner.as_ref()))
            .await
            .map_err(|e| PullFailure::Local {
                peer: peer.clone(),
                msg: e.to_string(),
            })?
            .map_err(|e| PullFailure::Local {
                peer: peer.clone(),
                msg: e.to_string(),
            })?;
    let local = |p: &sync_core::path::RelPath| restore_hooks::authority::is_node_local(p);
    let mine: std::collections::BTreeMap<_, _> = ours
        .manifest
        .entries
        .iter()
        .filter(|e| !local(&e.path))
        .map(|e| (e.path.clone(), e))
        .collect();
    let theirs: std::collections::BTreeMap<_, _> = view
        .entries
        .iter()
        .filter(|e| !local(&e.path))
        .map(|e| (e.path.clone(), e))
        .collect();
    let mut paths: Vec<&sync_core::path::RelPath> = mine.keys().collect();
    paths.extend(theirs.keys().filter(|p| !mine.contains_key(*p)));
    paths.sort();
    let mut diffs = Vec::new();
    for p in paths {
        let (a, b) = (mine.get(p).copied(), theirs.get(p).copied());
        if sync_core::pull::same_state(a, b) {
            continue;
        }
        let both_files =
            a.and_then(|e| e.file_hash()).is_some() && b.and_then(|e| e.file_hash()).is_some();
        if both_files && sync_core::pull::is_uci(p) {
            let ours = std::fs::read(node.root().join(p.as_str())).unwrap_or_default();
            if let Some((_, theirs)) = view.uci.iter().find(|(q, _)| q == p) {
                let d = uci_differences(p.as_str(), &ours, theirs);
                if !d.is_empty() {
                    diffs.extend(d);
                    continue;
                }
            }
        }
        diffs.push(Difference {
            path: p.to_abs(),
            at: None,
            primary: describe(a),
            backup: describe(b),
        });
    }
    Ok(diffs)
}
