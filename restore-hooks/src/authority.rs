//! Failback without loss (issue 11): the backup's side of the authority, the primary's merge.
//!
//! **On the backup.** NOTIFY_MASTER on a backup marks it the authority
//! (`<data dir>/authority.json`, on flash: a reboot of the acting backup must not forget that
//! its live tree holds the admin's work). While marked, no restore may write over live changes
//! the primary has not seen: a restore (commit, NOTIFY_BACKUP, NOTIFY_SYNC, drift check) runs
//! only when the live tree is exactly what the primary last pulled ([`Taken`]); otherwise it is
//! held and says why. The mark goes once a restore completes on a node that is not master.
//! [`offer`] lists what the live tree changed since the base (the committed generation).
//!
//! **On the primary.** [`apply_offer`] takes each change by [`sync_core::pull::decide`]: the
//! backup's version when only it changed, a three-way merge for a UCI file both changed, the
//! backup's version (the authority's) for any other both-sided change, recorded as a conflict.
//! Every version replaced is kept in the attic first; the NOTIFY_SYNC actions reload what
//! changed. Conflicts are kept in `<data dir>/conflicts.json` until `ha-sync resolve`.

use crate::cron::CRONTAB;
use crate::identity::{self, is_per_node, SYSTEM_CONFIG};
use crate::{at, hooks, state, Ctx, HookError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use sync_core::attic::{Attic, Reason};
use sync_core::clock;
use sync_core::delta::MAX_FILE_SIZE;
use sync_core::fsx::{self, Dir, Durability, FileType, Meta};
use sync_core::manifest::{Entry, Hash, Kind, Manifest};
use sync_core::node::{Node, Role, VrrpState};
use sync_core::path::RelPath;
use sync_core::pull::{self, Change, Decision, Offer, Taken, PULL_VERSION};
use sync_core::restore_list::{self, Excludes};
use sync_core::staging::Staging;
use sync_core::uci;
use sync_core::{Scanner, StatCache};

/// In the node's data directory: the backup's authority mark.
pub const AUTHORITY_FILE: &str = "authority.json";
/// In the node's data directory: the primary's unresolved conflicts.
pub const CONFLICTS_FILE: &str = "conflicts.json";
/// The attic's "generation" for versions a pull replaced: `pull-<seconds>`.
const PULL_GENERATION: &str = "pull";

/// The backup was master since the base: its live changes belong to the admin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authority {
    /// When it became master, seconds since the epoch.
    pub since: u64,
    /// The live state the primary last took (hex of [`live_state`]), and when.
    pub pulled: Option<String>,
    pub pulled_at: Option<u64>,
}

fn authority_path(node: &Node) -> PathBuf {
    node.data_dir().join(AUTHORITY_FILE)
}

/// The authority mark of `node`, if set.
pub fn authority(node: &Node) -> Option<Authority> {
    let text = std::fs::read(authority_path(node)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_authority(node: &Node, a: &Authority) -> Result<(), HookError> {
    let p = authority_path(node);
    let data = serde_json::to_vec_pretty(a).unwrap_or_default();
    fsx::write_atomic(&p, &data, 0o600, Durability::Durable).map_err(at(&p))
}

fn clear_authority(node: &Node) {
    let p = authority_path(node);
    match std::fs::remove_file(&p) {
        Ok(()) => tracing::info!("authority mark cleared: the primary holds this node's changes"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("{}: {e}", p.display()),
    }
}

/// At NOTIFY_MASTER: a backup that takes over becomes the authority (kept if it already was:
/// `since` is the start of the period whose changes the primary has to pull).
pub(crate) fn mark_master(ctx: &Ctx) -> Result<(), HookError> {
    let node = Node::new(ctx.root);
    if node.role() != Some(Role::Backup) || authority(&node).is_some() {
        return Ok(());
    }
    tracing::info!(
        "this backup is master: changes made here are kept and pulled by the primary when it returns"
    );
    write_authority(
        &node,
        &Authority {
            since: clock::now_secs(),
            ..Authority::default()
        },
    )
}

/// A live tree the way failback compares it: each path's entry, and its content when the
/// comparison rewrote it (the system file).
type LiveState = BTreeMap<RelPath, (Entry, Option<Vec<u8>>)>;

/// The backup's live state over `base`'s restore list, per path, the way failback compares it:
/// per-node paths left out, the system file's hostname set to the base's.
fn live_entries(ctx: &Ctx, base: &Manifest, staging: &Staging) -> Result<LiveState, HookError> {
    let excludes = Excludes::new(base.excludes.clone()).map_err(|e| HookError::Io {
        path: ctx.staging.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let excl = |p: &str| excludes.is_excluded(p);
    let node = Node::new(ctx.root);
    let cache_path = node.state_dir().join("authority-statcache");
    let mut cache = StatCache::load(&cache_path);
    let (m, _) = Scanner {
        root: ctx.root,
        is_excluded: &excl,
        cache: &mut cache,
    }
    .scan(&base.list, &base.excludes)
    .map_err(|e| HookError::Io {
        path: ctx.root.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let _ = cache.save(&cache_path);
    let mut out = BTreeMap::new();
    for e in m.entries {
        if not_pulled(&e.path) {
            continue;
        }
        if e.path.as_str() == SYSTEM_CONFIG && matches!(e.kind, Kind::File { .. }) {
            let (e, data) = system_file(ctx, base, staging, e)?;
            out.insert(e.path.clone(), (e, data));
            continue;
        }
        out.insert(e.path.clone(), (e, None));
    }
    Ok(out)
}

/// The system file as failback compares it: its hostname is this node's own. Unchanged when
/// live is what the restore made of the base (the base with this node's hostname); else sent
/// with the base's hostname put back.
fn system_file(
    ctx: &Ctx,
    base: &Manifest,
    staging: &Staging,
    e: Entry,
) -> Result<(Entry, Option<Vec<u8>>), HookError> {
    let here = ctx.root.join(SYSTEM_CONFIG);
    let live = std::fs::read(&here).map_err(at(&here))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let base_entry = base.get(&e.path);
    let base_bytes = base_entry.and_then(Entry::file_hash).and_then(|h| {
        staging
            .read(&e.path, MAX_FILE_SIZE)
            .filter(|b| Hash::of(b) == h)
    });
    if let (Some(b), Some(bytes)) = (base_entry, &base_bytes) {
        let expected =
            identity::keep_hostname(bytes, identity::hostname_of(&text(&live)).as_deref());
        if expected.as_deref() == Ok(&live[..]) {
            return Ok((
                Entry {
                    mode: e.mode,
                    ..b.clone()
                },
                None,
            ));
        }
    }
    let base_host = base_bytes
        .or_else(|| staging.read(&e.path, MAX_FILE_SIZE))
        .and_then(|b| identity::hostname_of(&text(&b)));
    let data = identity::keep_hostname(&live, base_host.as_deref()).unwrap_or(live);
    let e = Entry {
        kind: Kind::File {
            size: data.len() as u64,
            hash: Hash::of(&data),
        },
        ..e
    };
    Ok((e, Some(data)))
}

/// Paths failback leaves alone: this node's own (identity), and the crontab, which the backup
/// rewrites with its cron overlay on every VRRP event (an edit of it on the acting backup is
/// not pulled; README, Limits).
fn not_pulled(p: &RelPath) -> bool {
    is_per_node(p) || p.as_str() == CRONTAB
}

/// One hash for a live state: paths, types, contents and modes (not times: a touch is no
/// change).
fn state_hash<'a>(entries: impl Iterator<Item = &'a Entry>) -> Hash {
    let mut h = blake3::Hasher::new();
    for e in entries {
        h.update(e.path.as_str().as_bytes());
        h.update(&[0]);
        match &e.kind {
            Kind::File { hash, .. } => {
                h.update(b"f");
                h.update(&hash.0);
            }
            Kind::Dir => {
                h.update(b"d");
            }
            Kind::Symlink { target } => {
                h.update(b"l");
                h.update(target.as_bytes());
            }
        }
        h.update(&e.mode.to_le_bytes());
    }
    Hash(*h.finalize().as_bytes())
}

/// The staging tree and the base: the generation live last held whole (the one last
/// restored; the one committed when none is recorded). Not simply the committed one: a sync
/// that arrived while this node was master is staged but was never live here.
fn staged(ctx: &Ctx) -> Result<Option<(Staging, Manifest)>, HookError> {
    let staging = Staging::open(ctx.staging)?;
    let restored = crate::restore::open_state(ctx.staging)
        .ok()
        .and_then(|st| crate::restore::read_restored(&st))
        .map(|m| Manifest::clone(&m));
    let Some(m) = restored.or_else(|| staging.committed().cloned()) else {
        return Ok(None);
    };
    Ok(Some((staging, m)))
}

/// The backup's live tree for `ha-sync diff` (see [`sync_core::pull::LiveView`]).
pub fn live_view(ctx: &Ctx) -> Result<sync_core::pull::LiveView, HookError> {
    let _lock = state::hooks_lock(ctx.root)?;
    let node = Node::new(ctx.root);
    let mut v = sync_core::pull::LiveView {
        version: PULL_VERSION,
        node: node.name("backup"),
        ..Default::default()
    };
    let Some((staging, base)) = staged(ctx)? else {
        return Ok(v);
    };
    v.base = base.root_hash();
    let live_dir = Dir::open(ctx.root, false).map_err(at(ctx.root))?;
    for (path, (e, data)) in live_entries(ctx, &base, &staging)? {
        if pull::is_uci(&path) && matches!(e.kind, Kind::File { .. }) {
            let bytes = match data {
                Some(d) => Some(d),
                None => live_dir
                    .parent_of(&path, false)
                    .and_then(|d| d.read_file(path.file_name(), MAX_FILE_SIZE))
                    .ok(),
            };
            if let Some(b) = bytes {
                v.uci.push((path.clone(), b));
            }
        }
        v.entries.push(e);
    }
    Ok(v)
}

/// What the acting backup changed since the base (router paths), for its status; empty when
/// it is not the authority.
pub fn changes_since_takeover(ctx: &Ctx) -> Vec<String> {
    if authority(&Node::new(ctx.root)).is_none() {
        return Vec::new();
    }
    let Ok(Some((staging, base))) = staged(ctx) else {
        return Vec::new();
    };
    match live_entries(ctx, &base, &staging) {
        Ok(live) => changed_paths(&base, &live)
            .iter()
            .map(RelPath::to_abs)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Whether failback and `ha-sync diff` leave `p` alone (this node's own, or the crontab).
pub fn is_node_local(p: &RelPath) -> bool {
    not_pulled(p)
}

/// The backup's offer: what its live tree changed since the base generation, when it has
/// been the authority since. Takes the hooks lock (no restore moves live meanwhile).
pub fn offer(ctx: &Ctx) -> Result<Offer, HookError> {
    let _lock = state::hooks_lock(ctx.root)?;
    let node = Node::new(ctx.root);
    let mut o = Offer {
        version: PULL_VERSION,
        node: node.name("backup"),
        master: node.vrrp_state() == Some(VrrpState::Master),
        ..Offer::default()
    };
    let Some(auth) = authority(&node) else {
        return Ok(o);
    };
    let Some((staging, base)) = staged(ctx)? else {
        return Ok(o);
    };
    o.authority_since = Some(auth.since);
    o.base = base.root_hash();
    let live = live_entries(ctx, &base, &staging)?;
    o.live_root = state_hash(live.values().map(|(e, _)| e));
    let live_dir = Dir::open(ctx.root, false).map_err(at(ctx.root))?;
    let mut paths: Vec<&RelPath> = live.keys().collect();
    paths.extend(
        base.entries
            .iter()
            .map(|e| &e.path)
            .filter(|p| !not_pulled(p) && !live.contains_key(*p)),
    );
    let mut offered = 0u64;
    for path in paths {
        let b = base.get(path);
        let l = live.get(path);
        if pull::same_state(b, l.map(|(e, _)| e)) {
            continue;
        }
        let mut c = Change {
            path: path.clone(),
            base: b.cloned(),
            live: l.map(|(e, _)| e.clone()),
            data: None,
            base_data: None,
        };
        if let Some((e, normalized)) = l {
            if matches!(e.kind, Kind::File { .. }) {
                // Configuration travels, not data: a file too large to offer stays on this
                // node (the push's restore keeps it in the attic, or leaves it when it is
                // larger than the attic), and the pull still carries everything else.
                if e.size() > pull::MAX_OFFERED_FILE || offered + e.size() > pull::MAX_OFFERED_BYTES
                {
                    tracing::warn!(
                        "pull: {} ({} bytes) not offered: over the pull's bounds",
                        path.to_abs(),
                        e.size()
                    );
                    continue;
                }
                offered += e.size();
                let data = match normalized {
                    Some(d) => d.clone(),
                    None => {
                        let dir = live_dir
                            .parent_of(path, false)
                            .map_err(at(ctx.root.join(path.as_str())))?;
                        dir.read_file(path.file_name(), MAX_FILE_SIZE)
                            .map_err(at(ctx.root.join(path.as_str())))?
                    }
                };
                // Changed since the scan: send what was read, described as read.
                c.live = Some(Entry {
                    kind: Kind::File {
                        size: data.len() as u64,
                        hash: Hash::of(&data),
                    },
                    ..e.clone()
                });
                c.data = Some(data);
            }
        }
        // The base's content is in staging unless a later sync replaced it there; without
        // it the primary merges against an empty base (more conflicts, nothing lost).
        let staged_hash = staging
            .committed()
            .and_then(|m| m.get(path))
            .and_then(Entry::file_hash);
        if pull::is_uci(path)
            && b.and_then(Entry::file_hash)
                .is_some_and(|h| Some(h) == staged_hash)
        {
            c.base_data = staging.read(path, MAX_FILE_SIZE);
        }
        o.changes.push(c);
    }
    o.changes.sort_by(|a, b| a.path.cmp(&b.path));
    tracing::info!(
        "pull: offering {} path(s) changed since generation {} (authority since {})",
        o.changes.len(),
        o.base,
        auth.since
    );
    Ok(o)
}

/// The primary took the offer whose live state was `t.live_root`.
pub fn taken(ctx: &Ctx, t: &Taken) -> Result<(), HookError> {
    let _lock = state::hooks_lock(ctx.root)?;
    let node = Node::new(ctx.root);
    let Some(mut a) = authority(&node) else {
        return Ok(());
    };
    a.pulled = Some(t.live_root.to_hex());
    a.pulled_at = Some(clock::now_secs());
    write_authority(&node, &a)?;
    sync_core::fault::point(sync_core::fault::PULL_TAKEN);
    tracing::info!(
        "pull: the primary took this node's live state {}",
        t.live_root
    );
    Ok(())
}

/// Why a restore must wait on this node, if it must: it is the authority and its live tree
/// holds changes the primary has not taken. The caller holds the hooks lock.
pub(crate) fn hold(ctx: &Ctx) -> Option<String> {
    let node = Node::new(ctx.root);
    let a = authority(&node)?;
    let (staging, base) = match staged(ctx) {
        Ok(Some(s)) => s,
        _ => return None,
    };
    let live = match live_entries(ctx, &base, &staging) {
        Ok(l) => l,
        Err(e) => return Some(format!("changes made while this node was master may be unpulled, and its live tree cannot be read: {e}")),
    };
    let now = state_hash(live.values().map(|(e, _)| e)).to_hex();
    if a.pulled.as_deref() == Some(now.as_str()) {
        return None;
    }
    let changed = changed_paths(&base, &live);
    // Nothing changed here at all: nothing to lose.
    if changed.is_empty() {
        return None;
    }
    Some(format!(
        "this node was master since {} and its live tree holds changes the primary has not \
         pulled yet ({}): the restore waits for the primary's pull",
        a.since,
        changed
            .iter()
            .take(5)
            .map(RelPath::to_abs)
            .collect::<Vec<_>>()
            .join(" ")
    ))
}

/// The paths where `live` differs from `base` (per-node paths aside), sorted.
fn changed_paths(base: &Manifest, live: &LiveState) -> Vec<RelPath> {
    let mut out: Vec<RelPath> = base
        .entries
        .iter()
        .filter(|e| !not_pulled(&e.path))
        .filter(|e| !pull::same_state(Some(e), live.get(&e.path).map(|(l, _)| l)))
        .map(|e| e.path.clone())
        .collect();
    out.extend(live.keys().filter(|p| base.get(p).is_none()).cloned());
    out.sort();
    out
}

/// After a restore that completed on a node that is not master: the mark has served.
pub(crate) fn restored(ctx: &Ctx) {
    let node = Node::new(ctx.root);
    if node.vrrp_state() != Some(VrrpState::Master) && authority(&node).is_some() {
        clear_authority(&node);
    }
}

// ---------------------------------------------------------------------------------------------
// The primary's side

/// A change both nodes made to the same thing, settled for the authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// Router path, relative.
    pub path: String,
    /// For a UCI file: the section and option (`None`: the section as a whole); `None` for
    /// any other file (the whole file).
    pub section: Option<String>,
    pub option: Option<String>,
    /// The primary's value (a UCI value as text, or "file <blake3>", or "absent").
    pub primary: String,
    /// The primary's UCI value itself (`None`: absent or not a UCI option), for `resolve`.
    #[serde(default)]
    pub primary_value: Option<sync_core::uci::Value>,
    /// The backup's value, which went live on both nodes.
    pub backup: String,
    /// The backup's node name, and when it became master.
    pub backup_node: String,
    pub authority_since: u64,
    /// When the pull settled it, seconds since the epoch.
    pub time: u64,
    /// The attic generation holding the primary's version of the file (`ha-sync attic`).
    pub attic_generation: String,
}

/// What a pull did on the primary.
#[derive(Debug, Clone, Default)]
pub struct PullOutcome {
    /// Paths where the backup's version went live.
    pub taken: Vec<String>,
    /// UCI files merged from both.
    pub merged: Vec<String>,
    pub conflicts: Vec<ConflictRecord>,
    /// Paths not taken because this node does not sync them (off its restore list, or its
    /// own), with the reason: logged, not an error (the backup's next generation from here
    /// does not list them either, so its restore leaves or attics them).
    pub skipped: Vec<(String, String)>,
    /// Paths that could not be applied, with the cause: the pull failed, and is tried again.
    pub errors: Vec<(String, String)>,
}

impl PullOutcome {
    pub fn changed(&self) -> usize {
        self.taken.len() + self.merged.len()
    }
}

fn conflicts_path(node: &Node) -> PathBuf {
    node.data_dir().join(CONFLICTS_FILE)
}

/// The unresolved conflicts of `node`.
pub fn conflicts(node: &Node) -> Vec<ConflictRecord> {
    std::fs::read(conflicts_path(node))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default()
}

fn write_conflicts(node: &Node, c: &[ConflictRecord]) -> Result<(), HookError> {
    let p = conflicts_path(node);
    if c.is_empty() {
        return match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(at(&p)(e)),
            _ => Ok(()),
        };
    }
    let data = serde_json::to_vec_pretty(c).unwrap_or_default();
    fsx::write_atomic(&p, &data, 0o644, Durability::Durable).map_err(at(&p))
}

/// The primary's live entry at `path` (never through a symlink).
fn our_entry(live: &Dir, path: &RelPath) -> Option<(Entry, Option<Vec<u8>>)> {
    let dir = live.parent_of(path, false).ok()?;
    let st = dir.lstat(path.file_name()).ok()??;
    let (kind, data) = match st.kind {
        FileType::File => {
            let d = dir.read_file(path.file_name(), MAX_FILE_SIZE).ok()?;
            (
                Kind::File {
                    size: d.len() as u64,
                    hash: Hash::of(&d),
                },
                Some(d),
            )
        }
        FileType::Dir => (Kind::Dir, None),
        FileType::Symlink => (
            Kind::Symlink {
                target: dir.read_link(path.file_name()).ok()?,
            },
            None,
        ),
        FileType::Other => return None,
    };
    Some((
        Entry {
            path: path.clone(),
            kind,
            mode: st.mode,
            uid: st.uid,
            gid: st.gid,
            mtime_ns: st.mtime_ns,
        },
        data,
    ))
}

fn describe(e: Option<&Entry>) -> String {
    match e.map(|e| &e.kind) {
        None => "absent".into(),
        Some(Kind::File { hash, size }) => format!("file of {size} bytes, blake3 {hash}"),
        Some(Kind::Dir) => "directory".into(),
        Some(Kind::Symlink { target }) => format!("symlink to {target}"),
    }
}

fn show(v: Option<&sync_core::uci::Value>) -> String {
    match v {
        None => "absent".into(),
        Some(sync_core::uci::Value::Single(s)) => format!("'{s}'"),
        Some(sync_core::uci::Value::List(l)) => format!("[{}]", l.join(", ")),
    }
}

/// Applies the backup's offer to the primary's live tree (see the module doc). Paths outside
/// the primary's own restore list, per-node paths and never-synced paths are refused, one by
/// one, in `errors`.
pub fn apply_offer(ctx: &Ctx, offer: &Offer) -> Result<PullOutcome, HookError> {
    let _lock = state::hooks_lock(ctx.root)?;
    let node = Node::new(ctx.root);
    let list = restore_list::compute(ctx.root, ctx.runner).map_err(|e| HookError::Io {
        path: ctx.root.to_path_buf(),
        source: std::io::Error::other(format!("restore list: {e}")),
    })?;
    let items: Vec<(String, bool)> = list
        .entries
        .iter()
        .map(|e| (e.path.clone(), e.kind == restore_list::EntryKind::Dir))
        .collect();
    let listed = |p: &RelPath| {
        let abs = p.to_abs();
        !list.excludes.is_excluded(&abs)
            && items.iter().any(|(i, dir)| {
                abs == *i
                    || (*dir && abs.starts_with(i.as_str()) && abs[i.len()..].starts_with('/'))
            })
    };
    let live = Dir::open(ctx.root, false).map_err(at(ctx.root))?;
    let attic = Attic::new(&node);
    let now = clock::now_secs();
    let generation = format!("{PULL_GENERATION}-{now}");
    let mut out = PullOutcome::default();
    let mut deletions = Vec::new();
    for c in &offer.changes {
        let p = c.path.as_str().to_string();
        if not_pulled(&c.path) || !listed(&c.path) {
            tracing::warn!(
                "pull: {} not taken: not on this node's restore list (or this node's own)",
                c.path.to_abs()
            );
            out.skipped.push((
                c.path.to_abs(),
                "not on this node's restore list (or per node): not taken".into(),
            ));
            continue;
        }
        let ours = our_entry(&live, &c.path);
        let ours_entry = ours.as_ref().map(|(e, _)| e);
        let decision = pull::decide(c, ours_entry);
        let write = match decision {
            Decision::Nothing => continue,
            Decision::TakeTheirs => {
                out.taken.push(p.clone());
                c.data.clone()
            }
            Decision::Merge => {
                let text = |d: Option<&Vec<u8>>| {
                    String::from_utf8_lossy(d.map_or(&[][..], |v| v)).into_owned()
                };
                let merged = sync_core::merge3_text(
                    &text(c.base_data.as_ref()),
                    &text(ours.as_ref().and_then(|(_, d)| d.as_ref())),
                    &text(c.data.as_ref()),
                    &ctx.root.join(&p),
                );
                match merged {
                    Ok((text, conflicts)) => {
                        for k in conflicts {
                            out.conflicts.push(ConflictRecord {
                                path: p.clone(),
                                section: Some(k.section),
                                option: k.option,
                                primary: show(k.ours.as_ref()),
                                primary_value: k.ours.clone(),
                                backup: show(k.theirs.as_ref()),
                                backup_node: offer.node.clone(),
                                authority_since: offer.authority_since.unwrap_or(0),
                                time: now,
                                attic_generation: generation.clone(),
                            });
                        }
                        out.merged.push(p.clone());
                        Some(text.into_bytes())
                    }
                    Err(e) => {
                        // A file uci cannot parse on either side: the authority's wins whole.
                        tracing::warn!("pull: {p}: cannot merge ({e}): the backup's version wins");
                        out.conflicts.push(whole_conflict(
                            &p,
                            ours_entry,
                            c,
                            offer,
                            now,
                            &generation,
                        ));
                        c.data.clone()
                    }
                }
            }
            Decision::Conflict => {
                out.conflicts
                    .push(whole_conflict(&p, ours_entry, c, offer, now, &generation));
                c.data.clone()
            }
        };
        if c.live.is_none() {
            deletions.push(c.path.clone());
            continue;
        }
        if let Err(e) = put(&live, &attic, c, write.as_deref(), &generation) {
            out.errors.push((c.path.to_abs(), e));
            out.taken.retain(|t| *t != p);
            out.merged.retain(|t| *t != p);
        }
        sync_core::fault::point(sync_core::fault::PULL_FILE);
    }
    // Children before their directories.
    deletions.sort();
    for path in deletions.iter().rev() {
        if let Err(e) = remove(&live, &attic, path, &generation) {
            out.errors.push((path.to_abs(), e));
        }
        sync_core::fault::point(sync_core::fault::PULL_FILE);
    }
    if !out.conflicts.is_empty() {
        let mut all = conflicts(&node);
        all.retain(|k| {
            !out.conflicts
                .iter()
                .any(|n| n.path == k.path && n.section == k.section && n.option == k.option)
        });
        all.extend(out.conflicts.iter().cloned());
        write_conflicts(&node, &all)?;
    }
    let changed: Vec<String> = out
        .taken
        .iter()
        .chain(&out.merged)
        .map(|p| format!("/{p}"))
        .collect();
    if !changed.is_empty() {
        let master = node.vrrp_state() == Some(VrrpState::Master);
        for e in hooks::notify_sync(ctx, &changed, offer.live_root, master) {
            out.errors.push(("NOTIFY_SYNC".into(), e));
        }
    }
    Ok(out)
}

fn whole_conflict(
    p: &str,
    ours: Option<&Entry>,
    c: &Change,
    offer: &Offer,
    now: u64,
    generation: &str,
) -> ConflictRecord {
    ConflictRecord {
        path: p.to_string(),
        section: None,
        option: None,
        primary: describe(ours),
        primary_value: None,
        backup: describe(c.live.as_ref()),
        backup_node: offer.node.clone(),
        authority_since: offer.authority_since.unwrap_or(0),
        time: now,
        attic_generation: generation.to_string(),
    }
}

fn meta(e: &Entry) -> Meta {
    let own = fsx::can_chown();
    Meta {
        mode: e.mode,
        uid: if own { e.uid } else { u32::MAX },
        gid: if own { e.gid } else { u32::MAX },
        mtime_ns: e.mtime_ns,
    }
}

/// Writes the backup's state of `c` (with `data` for a file) over the primary's, keeping what
/// it replaces.
fn put(
    live: &Dir,
    attic: &Attic,
    c: &Change,
    data: Option<&[u8]>,
    generation: &str,
) -> Result<(), String> {
    let Some(e) = &c.live else {
        return Ok(());
    };
    let dir = live.parent_of(&c.path, true).map_err(|e| e.to_string())?;
    let name = c.path.file_name();
    attic
        .keep(&c.path, &dir, name, generation, Reason::Pull)
        .map_err(|e| e.to_string())?;
    let here = dir.lstat(name).map_err(|e| e.to_string())?;
    if here.is_some_and(|s| s.kind == FileType::Dir) && e.kind != Kind::Dir {
        dir.remove_all(name).map_err(|e| e.to_string())?;
    }
    match &e.kind {
        Kind::File { .. } => dir
            .write_file_atomic(name, data.unwrap_or_default(), Some(meta(e)))
            .map_err(|e| e.to_string()),
        Kind::Symlink { target } => dir
            .symlink_atomic(target, name, Some(meta(e)))
            .map_err(|e| e.to_string()),
        Kind::Dir => {
            if here.is_some_and(|s| s.kind != FileType::Dir) {
                dir.unlink(name).map_err(|e| e.to_string())?;
            }
            if !here.is_some_and(|s| s.kind == FileType::Dir) {
                dir.mkdir(name, e.mode).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

fn remove(live: &Dir, attic: &Attic, path: &RelPath, generation: &str) -> Result<(), String> {
    let Ok(dir) = live.parent_of(path, false) else {
        return Ok(());
    };
    let name = path.file_name();
    match dir.lstat(name).map_err(|e| e.to_string())? {
        None => Ok(()),
        Some(s) if s.kind == FileType::Dir => match dir.rmdir(name) {
            // The primary holds more below it than the backup knew of: those stay.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
            r => r.map_err(|e| e.to_string()),
        },
        Some(_) => {
            attic
                .keep(path, &dir, name, generation, Reason::Pull)
                .map_err(|e| e.to_string())?;
            dir.unlink(name).map_err(|e| e.to_string())
        }
    }
}

/// `ha-sync resolve PATH --keep primary|backup`: settles the conflicts of `path`. `backup`
/// leaves live as it is (the backup's version already is); `primary` puts the primary's
/// version back from the attic (the daemon then sends it). Returns how many were settled.
pub fn resolve(node: &Node, path: &RelPath, keep_primary: bool) -> Result<usize, HookError> {
    let all = conflicts(node);
    let (mine, rest): (Vec<_>, Vec<_>) = all.into_iter().partition(|c| c.path == path.as_str());
    if mine.is_empty() {
        return Ok(0);
    }
    if keep_primary {
        keep_primary_version(node, path, &mine)?;
    }
    write_conflicts(node, &rest)?;
    Ok(mine.len())
}

/// Puts the primary's side of `mine` (the conflicts of `path`) back live: option by option in
/// a UCI file when every conflict is one named option (the rest of the merge stays), else the
/// primary's whole file from the attic.
fn keep_primary_version(
    node: &Node,
    path: &RelPath,
    mine: &[ConflictRecord],
) -> Result<(), HookError> {
    let here = node.root().join(path.as_str());
    let by_option = mine
        .iter()
        .all(|c| c.option.is_some() && c.section.as_deref().is_some_and(uci::valid_name));
    if by_option {
        let mut pkg = uci::Package::load(&here)?;
        for c in mine {
            let (Some(s), Some(o)) = (&c.section, &c.option) else {
                continue;
            };
            match &c.primary_value {
                Some(uci::Value::Single(v)) => pkg.set(s, o, v)?,
                Some(uci::Value::List(l)) => pkg.set_list(s, o, l.clone())?,
                None => {
                    pkg.delete_option(s, o);
                }
            }
        }
        return pkg.write_atomic(&here).map_err(HookError::from);
    }
    let generation = &mine[mine.len() - 1].attic_generation;
    let attic = Attic::new(node);
    let kept = attic
        .list(Some(path))
        .map_err(|e| HookError::Io {
            path: here.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
        .into_iter()
        .any(|k| k.generation == *generation);
    if !kept {
        // The primary had nothing there: keeping its version is deleting the file (the
        // backup's, kept first).
        let live = Dir::open(node.root(), false).map_err(at(node.root()))?;
        return remove(&live, &attic, path, "manual").map_err(|e| HookError::Io {
            path: here,
            source: std::io::Error::other(e),
        });
    }
    attic
        .restore(node, path, Some(generation))
        .map(|_| ())
        .map_err(|e| HookError::Io {
            path: here,
            source: std::io::Error::other(e.to_string()),
        })
}
