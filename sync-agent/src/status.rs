//! Status: what the daemon records after every sync, and what `ha-sync status` shows.
//!
//! After every sync the daemon writes, as the incumbent did, `keepalived.ha_peer.last_sync_status`
//! and `last_sync_time` (epoch) in the UCI state (`<root>/var/state/keepalived`), and its own
//! figures in [`STATUS_FILE`] (JSON, RAM on a router). The status strings keep the incumbent's
//! `Successful` and `SSH Connection Failed` and replace its catch-all `Rsync Transfer Failed`
//! with precise ones ([`Outcome`]); every failure string contains "Failed", which is what
//! `ns-ha-config status` colours red.
//!
//! `ha-sync status` ([`collect`], [`render`]) prints the incumbent's layout (Status, Role,
//! Current State, Last Sync Status, Last Sync Time, Virtual IPs, Keepalived Statistics) and its
//! JSON keys (`role`, `state`, `status`, `last_sync_status`, `last_sync_time`, `virtual_ips`,
//! `keepalived_stats`), plus a `sync` section with the daemon's figures.
//!
//! Where each value comes from: the role from the UCI sections `keepalived.primary` /
//! `keepalived.backup`; the VRRP state from the hooks' record (`var/run/ha-sync/vrrp_state`),
//! else keepalived's own dumps (`/tmp/keepalived.json`, `/tmp/keepalived.data`); the virtual
//! IPs from the UCI `ipaddress` sections; the statistics from `/tmp/keepalived.json` (what
//! keepalived writes on its JSON signal, as the incumbent reads it) or `/tmp/keepalived.stats`
//! (its SIGUSR2 text dump).

use crate::transport::TransportError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use sync_core::keepalived;
use sync_core::uci::{self, UciError};
use sync_core::wire::RestoreReport;

/// The daemon's status file, relative to the root.
pub const STATUS_FILE: &str = "status.json";

/// How a sync ended, as `keepalived.ha_peer.last_sync_status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backup holds this generation and restored it (or restores are off there).
    Successful,
    /// No TCP connection or SSH session (refused, timed out, lost, handshake failed).
    ConnectionFailed,
    /// The backup's host key is not the pinned one (changed, unknown, a certificate).
    HostKeyFailed,
    /// The backup refused our key, or it could not be loaded.
    AuthFailed,
    /// The session ran but failed: the backup refused it (busy) or its handler failed, or
    /// the protocol broke off.
    TransferFailed,
    /// The backup committed the generation, but its restore to live failed or was refused.
    RestoreFailed,
    /// The restore list or the scan failed here, before any connection.
    LocalFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Successful => "Successful",
            Outcome::ConnectionFailed => "SSH Connection Failed",
            Outcome::HostKeyFailed => "SSH Host Key Check Failed",
            Outcome::AuthFailed => "SSH Authentication Failed",
            Outcome::TransferFailed => "Transfer Failed",
            Outcome::RestoreFailed => "Restore Failed",
            Outcome::LocalFailed => "Local Scan Failed",
        }
    }

    pub fn is_ok(self) -> bool {
        self == Outcome::Successful
    }

    /// Whether the SSH connection is worth keeping after this outcome.
    pub fn keeps_connection(self) -> bool {
        matches!(
            self,
            Outcome::Successful
                | Outcome::TransferFailed
                | Outcome::RestoreFailed
                | Outcome::LocalFailed
        )
    }

    pub fn of_transport(e: &TransportError) -> Outcome {
        use TransportError as T;
        match e {
            T::HostKeyUnknown { .. } | T::HostKeyChanged { .. } | T::HostCertificate { .. } => {
                Outcome::HostKeyFailed
            }
            T::AuthRejected { .. } | T::KeyLoad { .. } => Outcome::AuthFailed,
            T::Remote { .. } | T::SubsystemRefused { .. } | T::Internal(_) => {
                Outcome::TransferFailed
            }
            _ => Outcome::ConnectionFailed,
        }
    }

    /// The outcome of a sync the backup committed, by its restore report. A refusal because
    /// the agent only stages (`serve --staging-only`) is the configured behaviour, not a
    /// failure; any other refusal (the backup is VRRP master or configured as primary) is.
    pub fn of_restore(r: Option<&RestoreReport>) -> Outcome {
        match r {
            None => Outcome::Successful,
            Some(r) if !r.errors.is_empty() => Outcome::RestoreFailed,
            Some(r) => match &r.refused {
                Some(why) if !why.starts_with("staging only") => Outcome::RestoreFailed,
                _ => Outcome::Successful,
            },
        }
    }
}

/// The backup's restore, as reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    pub applied: bool,
    pub refused: Option<String>,
    pub changed: u64,
    pub errors: Vec<(String, String)>,
}

impl From<&RestoreReport> for RestoreRecord {
    fn from(r: &RestoreReport) -> Self {
        RestoreRecord {
            applied: r.applied,
            refused: r.refused.clone(),
            changed: r.changed.len() as u64,
            errors: r.errors.clone(),
        }
    }
}

/// One sync, as `status.json` and `ha-sync now` report it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The `last_sync_status` string.
    pub status: String,
    pub ok: bool,
    /// When it ended (epoch seconds).
    pub time: u64,
    /// What started it: `change`, `reconcile`, `now`, `reconnect`, `retry`, `rescan`, `start`.
    pub trigger: String,
    pub duration_ms: f64,
    /// Of which: restore list and scan here, and the session with the backup.
    pub scan_ms: f64,
    pub session_ms: f64,
    /// From the first change of the burst it carried to the backup's restore report.
    pub latency_ms: Option<f64>,
    /// Root hash of the generation the backup holds after it (on success).
    pub generation: Option<String>,
    /// Entries, regular files and their bytes in the manifest.
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Whether the tree was scanned; false when nothing had changed since the last scan
    /// (the daemon's watches say so) and its manifest was used.
    pub scanned: bool,
    /// Files the scan read (the others were known by their stat).
    pub files_read: u64,
    pub bytes_read: u64,
    /// False when nothing changed since the backup's last commit on this connection, so
    /// no message was sent.
    pub network: bool,
    pub up_to_date: bool,
    pub changed: u64,
    pub files_sent: u64,
    pub payload_bytes: u64,
    pub wire_sent: u64,
    pub wire_received: u64,
    pub round_trips: u64,
    pub restore: Option<RestoreRecord>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub time: u64,
    pub status: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Syncs attempted (whether or not they reached the network).
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    /// Successful syncs that found nothing changed and sent nothing.
    pub unchanged: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRecord {
    /// Directories watched (a recursive watch counts once).
    pub dirs: u64,
    /// Some watch could not be set (inotify limit): only the reconcile timer covers it.
    pub degraded: bool,
    /// Full rescans after an event overflow or a watch error.
    pub rescans: u64,
}

/// `status.json`: the daemon's state after its last sync.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub started: u64,
    pub peer: String,
    pub socket: String,
    pub role: Option<String>,
    pub vrrp_state: Option<String>,
    /// Whether this node may send now (primary and VRRP master).
    pub active: bool,
    pub inactive_reason: Option<String>,
    pub connected: bool,
    pub connected_since: Option<u64>,
    pub last_sync: Option<SyncRecord>,
    pub last_success: Option<u64>,
    pub last_error: Option<ErrorRecord>,
    pub consecutive_failures: u32,
    /// Paths changed since the last successful sync, and since when.
    pub pending_changes: u64,
    pub pending_since: Option<u64>,
    pub syncs: Counters,
    pub watches: WatchRecord,
    pub alert_sync_failed: bool,
    /// Since when both nodes hold this node's tree (the last sync succeeded, live restored on
    /// the backup, nothing pending since); `None`: not in sync.
    #[serde(default)]
    pub in_sync_since: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Uci(#[from] UciError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Bad { path: PathBuf, msg: String },
}

pub fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes `last_sync_status` and `last_sync_time` in the UCI state, as the incumbent did.
pub fn write_uci(root: &Path, status: &str, time: u64) -> Result<(), StatusError> {
    uci::state_set(root, "keepalived", "ha_peer", "last_sync_status", status)?;
    uci::state_set(
        root,
        "keepalived",
        "ha_peer",
        "last_sync_time",
        &time.to_string(),
    )?;
    Ok(())
}

/// Writes [`STATUS_FILE`] atomically (temp file + rename: a reader never sees half of it).
pub fn write_json(root: &Path, s: &DaemonStatus) -> Result<(), StatusError> {
    let path = sync_core::node::Node::new(root)
        .state_dir()
        .join(STATUS_FILE);
    let io = |source| StatusError::Io {
        path: path.clone(),
        source,
    };
    let text = serde_json::to_vec_pretty(s).map_err(|e| StatusError::Bad {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    sync_core::fsx::write_atomic(&path, &text, 0o644, sync_core::fsx::Durability::Visible)
        .map_err(io)
}

/// Reads [`STATUS_FILE`]; `None` when there is none (no daemon ever ran since boot).
pub fn read_json(root: &Path) -> Result<Option<DaemonStatus>, StatusError> {
    let path = sync_core::node::Node::new(root)
        .state_dir()
        .join(STATUS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StatusError::Bad {
                path,
                msg: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StatusError::Io { path, source }),
    }
}

// ---------------------------------------------------------------------------------------------
// VRRP state; keepalived's own files are read by `sync_core::keepalived`

/// This node's VRRP state: the hooks' record of keepalived's last event, else keepalived's
/// own dumps when present (they are only as fresh as keepalived's last dump).
pub fn vrrp_state(root: &Path) -> Option<String> {
    if let Some(s) = sync_core::node::Node::new(root).vrrp_state() {
        return Some(s.as_str().to_string());
    }
    keepalived::dumped_state(root)
}

/// The alert timestamps of the UCI state (`keepalived.ha_alert.*_at`).
fn alert_times(root: &Path) -> Vec<(String, u64)> {
    crate::alerts::Alert::ALL
        .into_iter()
        .flat_map(|a| {
            let (raised, cleared) = a.options();
            [raised, cleared]
        })
        .filter_map(|opt| {
            let v = uci::state_get(root, "keepalived", "ha_alert", opt)
                .ok()
                .flatten()?;
            Some((opt.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// What `ha-sync status` shows.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// `primary`, `backup` or `unknown`.
    pub role: String,
    /// VRRP state (`master`, `backup`, `fault`, `stop`, `init`) or `unknown`.
    pub state: String,
    /// `enabled` when a role is configured, else `disabled`.
    pub status: String,
    pub last_sync_status: String,
    pub last_sync_time: Option<u64>,
    pub virtual_ips: Vec<(String, Vec<(String, uci::Value)>)>,
    pub keepalived_stats: Vec<(String, Value)>,
    pub alerts: Vec<(String, u64)>,
    /// Whether the daemon answered on its socket.
    pub daemon_running: bool,
    /// Its live status, else the `status.json` of its last run.
    pub sync: Option<DaemonStatus>,
    /// The last drift the backup's check found and healed ([`crate::drift`]).
    pub drift: Option<crate::drift::Drift>,
    /// Failback conflicts not yet resolved (`ha-sync resolve`), on the primary.
    pub conflicts: Vec<restore_hooks::authority::ConflictRecord>,
    /// On a backup that was master since the last generation: since when, and whether the
    /// primary took its changes.
    pub authority: Option<restore_hooks::authority::Authority>,
    /// What the last pull brought, on the primary.
    pub pull: Option<crate::pull::PullRecord>,
    /// On the acting backup: what changed here since it took over (router paths).
    pub changed_here: Vec<String>,
}

/// Gathers [`NodeStatus`]. `daemon`: the running daemon's live status, if it answered.
pub fn collect(root: &Path, daemon: Option<DaemonStatus>) -> NodeStatus {
    let (role, status) = match sync_core::node::Node::new(root).role() {
        Some(restore_hooks::Role::Primary) => ("primary", "enabled"),
        Some(restore_hooks::Role::Backup) => ("backup", "enabled"),
        None => ("unknown", "disabled"),
    };
    let state_get = |opt| {
        uci::state_get(root, "keepalived", "ha_peer", opt)
            .ok()
            .flatten()
    };
    let daemon_running = daemon.is_some();
    NodeStatus {
        role: role.into(),
        state: vrrp_state(root).unwrap_or_else(|| "unknown".into()),
        status: status.into(),
        last_sync_status: state_get("last_sync_status").unwrap_or_default(),
        last_sync_time: state_get("last_sync_time").and_then(|v| v.trim().parse().ok()),
        virtual_ips: keepalived::virtual_ips(root),
        keepalived_stats: keepalived::stats(root),
        alerts: alert_times(root),
        daemon_running,
        sync: daemon.or_else(|| read_json(root).ok().flatten()),
        drift: crate::drift::last(&sync_core::node::Node::new(root)),
        conflicts: restore_hooks::authority::conflicts(&sync_core::node::Node::new(root)),
        authority: restore_hooks::authority::authority(&sync_core::node::Node::new(root)),
        pull: crate::pull::last(&sync_core::node::Node::new(root)),
        changed_here: {
            let node = sync_core::node::Node::new(root);
            let staging = node.staging_dir();
            restore_hooks::authority::changes_since_takeover(&restore_hooks::Ctx {
                root,
                staging: &staging,
                runner: &sync_core::runner::SystemRunner,
            })
        },
    }
}

/// `date -d @T`'s format (`Mon Jun  9 07:21:15 UTC 2025`), in the local time zone.
pub fn format_time(epoch: u64) -> String {
    // `as _`: time_t is 64-bit on glibc and on musl >= 1.2, and named differently (deprecated)
    // in the libc crate's musl build.
    let t = epoch as _;
    // SAFETY: localtime_r and strftime write only into the buffers given; tm is plain data.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return epoch.to_string();
        }
        let mut buf = [0u8; 64];
        let n = libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%a %b %e %H:%M:%S %Z %Y".as_ptr(),
            &tm,
        );
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

fn ms(x: Option<f64>) -> String {
    match x {
        Some(x) if x >= 1000.0 => format!("{:.2} s", x / 1000.0),
        Some(x) => format!("{x:.0} ms"),
        None => "-".into(),
    }
}

impl NodeStatus {
    /// The incumbent's JSON keys, plus `daemon`, `alerts` and `sync`.
    pub fn to_json(&self) -> Value {
        let vips: Map<String, Value> = self
            .virtual_ips
            .iter()
            .map(|(name, opts)| {
                let o: Map<String, Value> = opts
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(Value::Null)))
                    .collect();
                (name.clone(), Value::Object(o))
            })
            .collect();
        let stats: Map<String, Value> = self.keepalived_stats.iter().cloned().collect();
        let alerts: Map<String, Value> = self
            .alerts
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        json!({
            "role": self.role,
            "state": self.state,
            "status": self.status,
            "last_sync_status": self.last_sync_status,
            // The incumbent gives "" when there is none.
            "last_sync_time": self.last_sync_time.map_or(json!(""), |t| json!(t)),
            "virtual_ips": vips,
            "keepalived_stats": stats,
            "daemon": if self.daemon_running { "running" } else { "not running" },
            "alerts": alerts,
            "sync": self.sync,
            "drift": self.drift,
            "conflicts": self.conflicts,
            "authority": self.authority,
            "pull": self.pull,
            "changed_here": self.changed_here,
        })
    }

    /// The incumbent's layout, then ha-sync's own section (on a primary, or wherever a
    /// daemon left figures).
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let _ = writeln!(o, "Status: {}", self.status);
        if self.status == "enabled" {
            let _ = writeln!(o, "Role: {}", self.role);
            let _ = writeln!(o, "Current State: {}", self.state);
            if self.state == "master" && self.role == "primary" {
                let _ = writeln!(o, "Last Sync Status: {}", self.last_sync_status);
                let _ = writeln!(
                    o,
                    "Last Sync Time: {}",
                    self.last_sync_time.map(format_time).unwrap_or_default()
                );
            }
            let _ = writeln!(o, "\nVirtual IPs:");
            for (name, opts) in &self.virtual_ips {
                let get = |k: &str| {
                    opts.iter()
                        .find(|(o, _)| o == k)
                        .map_or(String::new(), |(_, v)| match v {
                            uci::Value::Single(s) => s.clone(),
                            uci::Value::List(l) => l.join(" "),
                        })
                };
                let _ = writeln!(o, "  {name}: {} ({})", get("address"), get("device"));
            }
            let _ = writeln!(o, "\nKeepalived Statistics:");
            if self.keepalived_stats.is_empty() {
                let _ = writeln!(o, "No keepalived statistics available.");
            }
            for (k, v) in &self.keepalived_stats {
                let _ = writeln!(o, "  {k}: {v}");
            }
        }
        if let Some(d) = self.drift.as_ref().filter(|d| !d.paths.is_empty()) {
            let _ = writeln!(
                o,
                "\nDrift: {} path(s) differed from generation {} at {}; healed, the replaced \
                 versions are in the attic (ha-sync attic):",
                d.paths.len(),
                &d.generation[..d.generation.len().min(12)],
                format_time(d.time)
            );
            for p in &d.paths {
                let _ = writeln!(o, "  {p}");
            }
        }
        if let Some(a) = &self.authority {
            let _ = writeln!(
                o,
                "\nAuthority: this node has been master since {}: changes made here are kept \
                 for the primary to pull ({})",
                format_time(a.since),
                match a.pulled_at {
                    Some(t) => format!("last pulled {}", format_time(t)),
                    None => "not pulled yet".into(),
                }
            );
            let _ = writeln!(
                o,
                "Changed on this node since it took over: {} path(s)",
                self.changed_here.len()
            );
            for p in &self.changed_here {
                let _ = writeln!(o, "  {p}");
            }
        }
        if !self.conflicts.is_empty() {
            let _ = writeln!(
                o,
                "\nConflicts: {} (the backup's value is live on both nodes; the primary's is in \
                 the attic; settle with: ha-sync resolve PATH --keep primary|backup)",
                self.conflicts.len()
            );
            for c in &self.conflicts {
                let at = match (&c.section, &c.option) {
                    (Some(s), Some(opt)) => format!(" {s}.{opt}"),
                    (Some(s), None) => format!(" section {s}"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    o,
                    "  /{}{at}: primary {} | backup ({}, master since {}) {} [{}]",
                    c.path,
                    c.primary,
                    c.backup_node,
                    format_time(c.authority_since),
                    c.backup,
                    format_time(c.time)
                );
            }
        }
        if let Some(p) = self
            .pull
            .as_ref()
            .filter(|p| !p.taken.is_empty() || !p.merged.is_empty())
        {
            let _ = writeln!(
                o,
                "\nLast pull from {} at {}: {} taken, {} merged, {} conflict(s)",
                p.peer,
                format_time(p.time),
                p.taken.len(),
                p.merged.len(),
                p.conflicts
            );
        }
        match &self.sync {
            Some(s) => self.render_sync(&mut o, s),
            None if self.role == "primary" => {
                let _ = writeln!(o, "\nSync:\n  Daemon: not running");
            }
            None => {}
        }
        o
    }

    fn render_sync(&self, o: &mut String, s: &DaemonStatus) {
        use std::fmt::Write;
        let _ = writeln!(o, "\nSync:");
        if self.daemon_running {
            let _ = writeln!(o, "  Daemon: running (pid {})", s.pid);
        } else {
            let _ = writeln!(o, "  Daemon: not running (figures of its last run)");
        }
        let _ = writeln!(o, "  Peer: {}", s.peer);
        if !s.active {
            let _ = writeln!(
                o,
                "  Sending: no ({})",
                s.inactive_reason.as_deref().unwrap_or("inactive")
            );
        }
        let _ = writeln!(
            o,
            "  Connection: {}",
            if s.connected { "open" } else { "closed" }
        );
        match s.in_sync_since {
            Some(t) => {
                let g = s
                    .last_sync
                    .as_ref()
                    .and_then(|l| l.generation.as_deref())
                    .map(|g| format!(", generation {} on both nodes", &g[..g.len().min(12)]))
                    .unwrap_or_default();
                let _ = writeln!(o, "  In sync: yes since {}{g}", format_time(t));
            }
            None => {
                let why = if s.pending_changes > 0 {
                    format!("{} change(s) not sent yet", s.pending_changes)
                } else if !s.active {
                    "this node is not sending".to_string()
                } else {
                    "the last sync did not complete".to_string()
                };
                let _ = writeln!(o, "  In sync: no ({why}; ha-sync diff shows what differs)");
            }
        }
        if let Some(l) = &s.last_sync {
            let _ = writeln!(
                o,
                "  Last sync: {} ({}), {}",
                l.status,
                l.trigger,
                format_time(l.time)
            );
            if let Some(g) = &l.generation {
                let _ = writeln!(o, "  Generation: {g}");
            }
            let _ = writeln!(
                o,
                "  Files: {} ({} bytes), {} entries",
                l.files, l.bytes, l.entries
            );
            let _ = writeln!(
                o,
                "  Duration: {}; change-to-live latency: {}",
                ms(Some(l.duration_ms)),
                ms(l.latency_ms)
            );
            let _ = writeln!(
                o,
                "  Sent: {} files, {} bytes of protocol, {} round trips",
                l.files_sent,
                l.wire_sent + l.wire_received,
                l.round_trips
            );
            let restore = match &l.restore {
                None => "-".to_string(),
                Some(r) => match &r.refused {
                    Some(why) => format!("not applied: {why}"),
                    None if r.errors.is_empty() => format!("applied, {} changed", r.changed),
                    None => format!("applied, {} changed, {} errors", r.changed, r.errors.len()),
                },
            };
            let _ = writeln!(o, "  Backup restore: {restore}");
        }
        let _ = writeln!(o, "  Pending changes: {}", s.pending_changes);
        if let Some(e) = &s.last_error {
            let _ = writeln!(
                o,
                "  Last error: {}: {} ({})",
                e.status,
                e.message,
                format_time(e.time)
            );
        }
        let _ = writeln!(
            o,
            "  Consecutive failures: {}; alert ha:sync:failed: {}",
            s.consecutive_failures,
            if s.alert_sync_failed {
                "raised"
            } else {
                "clear"
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::node::STATE_DIR;

    // Dumped by keepalived 2.2.7 (Debian 12) on its JSON signal, and its SIGUSR1 text dump.
    const STATS_JSON: &str = r#"[{"data":{"iname":"VI_100","vrid":100,"state":2,"wantstate":2},"stats":{"advert_rcvd":0,"advert_sent":7,"become_master":1,"release_master":0,"packet_len_err":0,"advert_interval_err":0,"ip_ttl_err":0,"invalid_type_rcvd":0,"addr_list_err":0,"invalid_authtype":0,"authtype_mismatch":0,"auth_failure":0,"pri_zero_rcvd":0,"pri_zero_sent":0}}]"#;
    const DATA_TXT: &str = "------< VRRP Topology >------\n VRRP Instance = VI_100\n   VRRP Version = 2\n   State = MASTER\n   Wantstate = MASTER\n------< Interfaces >------\n Name = lo\n   State = UP, RUNNING\n";

    #[test]
    fn state_from_hooks_then_json_then_data() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        assert_eq!(vrrp_state(r), None);
        std::fs::create_dir_all(r.join("tmp")).unwrap();
        std::fs::write(r.join(keepalived::DATA_DUMP), DATA_TXT).unwrap();
        assert_eq!(vrrp_state(r).as_deref(), Some("master"));
        std::fs::write(
            r.join(keepalived::JSON_DUMP),
            STATS_JSON.replace("\"state\":2", "\"state\":1"),
        )
        .unwrap();
        assert_eq!(vrrp_state(r).as_deref(), Some("backup"));
        std::fs::create_dir_all(r.join(STATE_DIR)).unwrap();
        std::fs::write(r.join(STATE_DIR).join("vrrp_state"), "fault\n").unwrap();
        assert_eq!(vrrp_state(r).as_deref(), Some("fault"));
    }

    #[test]
    fn layout_of_a_primary() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("etc/config")).unwrap();
        std::fs::write(
            r.join("etc/config/keepalived"),
            "config vrrp_instance 'primary'\n\toption name 'master'\n\nconfig ipaddress 'lan_ipaddress'\n\toption name 'lan_ha'\n\toption address '192.168.100.240/24'\n\toption device 'br-lan'\n",
        )
        .unwrap();
        std::fs::create_dir_all(r.join("tmp")).unwrap();
        std::fs::write(r.join(keepalived::JSON_DUMP), STATS_JSON).unwrap();
        write_uci(r, "Successful", 1_749_453_675).unwrap();
        let st = collect(r, None);
        let v = st.to_json();
        assert_eq!(v["role"], "primary");
        assert_eq!(v["state"], "master");
        assert_eq!(v["status"], "enabled");
        assert_eq!(v["last_sync_status"], "Successful");
        assert_eq!(v["last_sync_time"], json!(1_749_453_675u64));
        assert_eq!(v["virtual_ips"]["lan_ipaddress"]["device"], "br-lan");
        assert_eq!(v["keepalived_stats"]["advert_sent"], json!(7));
        let out = st.render();
        let expected_head = format!(
            "Status: enabled\nRole: primary\nCurrent State: master\nLast Sync Status: Successful\nLast Sync Time: {}\n\nVirtual IPs:\n  lan_ipaddress: 192.168.100.240/24 (br-lan)\n\nKeepalived Statistics:\n  advert_rcvd: 0\n  advert_sent: 7\n",
            format_time(1_749_453_675)
        );
        assert!(out.starts_with(&expected_head), "{out}");
        assert!(out.contains("  pri_zero_sent: 0\n"), "{out}");
        assert!(out.contains("Sync:\n  Daemon: not running"), "{out}");
    }

    #[test]
    fn disabled_when_no_role() {
        let d = tempfile::tempdir().unwrap();
        let st = collect(d.path(), None);
        assert_eq!(st.to_json()["status"], "disabled");
        assert_eq!(st.render(), "Status: disabled\n");
    }

    #[test]
    fn restore_refusals() {
        let staging_only = RestoreReport {
            refused: Some("staging only: no restore configured".into()),
            ..RestoreReport::default()
        };
        assert_eq!(
            Outcome::of_restore(Some(&staging_only)),
            Outcome::Successful
        );
        let master = RestoreReport {
            refused: Some("this node is the VRRP master".into()),
            ..RestoreReport::default()
        };
        assert_eq!(Outcome::of_restore(Some(&master)), Outcome::RestoreFailed);
        let errors = RestoreReport {
            applied: true,
            errors: vec![("/etc/x".into(), "EACCES".into())],
            ..RestoreReport::default()
        };
        assert_eq!(Outcome::of_restore(Some(&errors)), Outcome::RestoreFailed);
        for o in [
            Outcome::ConnectionFailed,
            Outcome::HostKeyFailed,
            Outcome::AuthFailed,
            Outcome::TransferFailed,
            Outcome::RestoreFailed,
            Outcome::LocalFailed,
        ] {
            assert!(o.as_str().contains("Failed"), "{o:?}");
        }
    }
}
