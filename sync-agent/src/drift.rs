//! The drift check (issue 11, item 5): the backup's live tree against the generation it
//! restored, every minute.
//!
//! A hand edit on the backup (or a package upgrade writing a listed file) makes it differ
//! from the primary without anyone knowing, until the failover that runs it. While the node is
//! a backup and not master, `serve` re-runs the restore of the committed generation it already
//! restored: with the live stat cache that costs one `lstat` per listed file when nothing moved.
//! What differs is healed from staging (the primary's version), the version it replaces kept in
//! the attic, and reported: a warning naming the paths, `drift.json` in the state directory
//! (shown by `ha-sync status`), and the alert `ha:sync:drift`, cleared by the next clean check.

use crate::alerts::{self, Alert, AlertConfig};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use sync_core::fsx::{self, Durability};
use sync_core::node::{Node, Role, VrrpState};
use sync_core::runner::Runner;
use sync_core::staging::Staging;
use sync_core::wire::Commit;

/// How often `serve` checks, unless UCI `keepalived.ha_peer.drift_interval` (seconds; 0 turns
/// the check off) says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// In the state directory: the last drift found.
pub const DRIFT_FILE: &str = "drift.json";

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// Seconds since the epoch.
    pub time: u64,
    /// The generation live was healed back to (hex).
    pub generation: String,
    /// Router paths that differed (now healed; the replaced versions are in the attic).
    pub paths: Vec<String>,
    /// Paths that could not be healed, with the cause.
    pub errors: Vec<(String, String)>,
}

/// The check interval of `node`.
pub fn interval(node: &Node) -> Option<Duration> {
    let secs = node
        .keepalived()
        .ok()
        .and_then(|p| p.get("ha_peer", "drift_interval").map(str::to_string))
        .and_then(|v| v.trim().parse::<u64>().ok());
    match secs {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => Some(DEFAULT_INTERVAL),
    }
}

/// One check. `None` when there is nothing to compare (not a backup, master, no generation
/// restored yet, or a sync in progress); else what differed (possibly nothing).
///
/// Files the live stat cache vouches for (as the last restore left them) are only `lstat`ed;
/// [`check_thorough`] reads them all.
pub fn check(node: &Node, runner: &dyn Runner) -> Option<Drift> {
    check_with(node, runner, false)
}

/// [`check`] hashing every live file and listing every mirrored directory: what a stat
/// cannot show (a file changed with its size and times put back by a tool that also
/// controls the clock) is found here. [`run`] makes every [`THOROUGH_EVERY`]th check this.
pub fn check_thorough(node: &Node, runner: &dyn Runner) -> Option<Drift> {
    check_with(node, runner, true)
}

/// One check in [`THOROUGH_EVERY`] reads the whole tree (hourly at the default interval).
pub const THOROUGH_EVERY: u64 = 60;

fn check_with(node: &Node, runner: &dyn Runner, thorough: bool) -> Option<Drift> {
    if node.role() == Some(Role::Primary) || node.vrrp_state() == Some(VrrpState::Master) {
        return None;
    }
    let staging_dir = node.staging_dir();
    let staging = Staging::open(&staging_dir).ok()?;
    // Mid-sync, staged files are being replaced: the next check compares.
    if staging.is_dirty() {
        return None;
    }
    let m = staging.committed()?.clone();
    let root = m.root_hash();
    if staging.restored_root() != Some(root) {
        // Committed but not restored: completing it is the session's and the start's job.
        return None;
    }
    let ctx = restore_hooks::Ctx {
        root: node.root(),
        staging: &staging_dir,
        runner,
    };
    let commit = Commit {
        root,
        ..Commit::default()
    };
    let rep = if thorough {
        restore_hooks::restore_thorough(&ctx, &m, &commit)
    } else {
        restore_hooks::restore_after_commit(&ctx, &m, &commit)
    };
    if rep.refused.is_some() {
        return None;
    }
    // A session began meanwhile: staged files may have moved under the restore; its own
    // restore follows, and the next check compares again.
    if Staging::open(&staging_dir).map_or(true, |s| s.is_dirty()) {
        return None;
    }
    let drift = Drift {
        time: sync_core::clock::now_secs(),
        generation: root.to_hex(),
        paths: rep.changed,
        errors: rep.errors,
    };
    report(node, runner, &drift);
    Some(drift)
}

fn report(node: &Node, runner: &dyn Runner, d: &Drift) {
    let root = node.root();
    let raised = alerts::is_raised(root, Alert::Drift);
    let cfg = AlertConfig::load(root);
    if d.paths.is_empty() {
        if raised {
            let _ = alerts::record(
                root,
                runner,
                cfg.command.as_deref(),
                Alert::Drift,
                false,
                "the live tree matches the restored generation",
            );
        }
        return;
    }
    let msg = format!(
        "{} path(s) differed from generation {} and were restored from it (the replaced \
         versions are in the attic: ha-sync attic): {}",
        d.paths.len(),
        &d.generation[..12],
        d.paths.join(" ")
    );
    tracing::warn!("drift: {msg}");
    if let Err(e) = alerts::record(
        root,
        runner,
        cfg.command.as_deref(),
        Alert::Drift,
        true,
        &msg,
    ) {
        tracing::warn!("recording the drift alert: {e}");
    }
    let p = node.state_dir().join(DRIFT_FILE);
    match serde_json::to_vec_pretty(d) {
        Ok(b) => {
            if let Err(e) = fsx::write_atomic(&p, &b, 0o644, Durability::Visible) {
                tracing::warn!("{}: {e}", p.display());
            }
        }
        Err(e) => tracing::warn!("{}: {e}", p.display()),
    }
}

/// The last drift recorded on `node`, if any.
pub fn last(node: &Node) -> Option<Drift> {
    let text = std::fs::read(node.state_dir().join(DRIFT_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Runs [`check`] every [`interval`] until the future is dropped (`serve` runs it beside the
/// server). Each check runs on a blocking thread; the restore takes the hooks lock, so a
/// keepalived event or a session's restore waits for it, never runs beside it.
pub async fn run(node: Node, runner: std::sync::Arc<dyn Runner>) {
    let Some(every) = interval(&node) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: start-up already restored
    for count in 1u64.. {
        tick.tick().await;
        let (n, r) = (node.clone(), runner.clone());
        let thorough = count % THOROUGH_EVERY == 0;
        let _ = tokio::task::spawn_blocking(move || check_with(&n, r.as_ref(), thorough)).await;
    }
}
