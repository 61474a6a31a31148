//! Fault points: where the fault campaign (`tests/tests/faults.rs`) kills the agent.
//!
//! `HA_SYNC_FAULT=NAME:N` makes the N-th pass through the point `NAME` send SIGKILL to this
//! process: a real `kill -9` at a chosen moment (no unwinding, no destructor, no flush), so the
//! campaign can check that whatever moment it hits, a restart and one more sync leave the live
//! tree whole and equal to the primary's. Without the variable a point is one relaxed atomic
//! load. The variable is read once; nothing else reads it, and a router never sets it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The points the campaign names, in the order a sync passes them on the backup.
pub const POINTS: &[&str] = &[
    STAGING_WRITE,
    BEFORE_COMMIT,
    AFTER_COMMIT,
    BEFORE_RESTORE_LOCK,
    RESTORE_FILE,
    BEFORE_NOTIFY_SYNC,
];
/// After a file is written into staging (N-th file).
pub const STAGING_WRITE: &str = "staging-write";
/// Everything staged, the commit not begun.
pub const BEFORE_COMMIT: &str = "before-commit";
/// Committed; the restore not begun.
pub const AFTER_COMMIT: &str = "after-commit";
/// The restore about to wait for the hooks lock.
pub const BEFORE_RESTORE_LOCK: &str = "before-restore-lock";
/// After the restore wrote a live file (N-th file).
pub const RESTORE_FILE: &str = "restore-file";
/// Live complete; the NOTIFY_SYNC actions not run.
pub const BEFORE_NOTIFY_SYNC: &str = "before-notify-sync";

/// The primary's points, in the order a sync passes them.
pub const PRIMARY_POINTS: &[&str] = &[
    PRIMARY_FILE_SENT,
    PRIMARY_AWAITING_COMMIT,
    PRIMARY_COMMITTED,
];
/// Failback's points, both nodes, in the order a pull passes them.
pub const PULL_POINTS: &[&str] = &[PULL_OFFERED, PULL_FILE, PULL_APPLIED, PULL_TAKEN];
/// The backup computed its offer; not sent yet.
pub const PULL_OFFERED: &str = "pull-offered";
/// The primary wrote a live file of the backup's offer (N-th file).
pub const PULL_FILE: &str = "pull-file";
/// The primary applied the whole offer; the backup not told yet.
pub const PULL_APPLIED: &str = "pull-applied";
/// The backup recorded that the primary took its changes.
pub const PULL_TAKEN: &str = "pull-taken";
/// The primary sent a file (N-th file).
pub const PRIMARY_FILE_SENT: &str = "primary-file-sent";
/// Everything sent; the backup's commit not heard yet.
pub const PRIMARY_AWAITING_COMMIT: &str = "primary-awaiting-commit";
/// The commit heard; the primary's own record of it not written.
pub const PRIMARY_COMMITTED: &str = "primary-committed";

fn armed() -> Option<&'static (String, u32)> {
    static ARMED: OnceLock<Option<(String, u32)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("HA_SYNC_FAULT").ok()?;
            let (name, n) = v.split_once(':').unwrap_or((v.as_str(), "1"));
            Some((name.to_string(), n.parse().ok()?))
        })
        .as_ref()
}

/// A fault point: SIGKILL here on the N-th pass when `HA_SYNC_FAULT=name:N`.
#[inline]
pub fn point(name: &str) {
    static PASSES: AtomicU32 = AtomicU32::new(0);
    let Some((want, nth)) = armed() else { return };
    if want != name {
        return;
    }
    if PASSES.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught: the process ends here.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
