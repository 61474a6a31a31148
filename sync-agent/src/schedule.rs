//! The daemon's schedule, without a clock of its own: which changes wait, and what is due
//! when (the debounced burst, a retry or reconnect, the reconcile, the memory trim, the
//! pending-change alert). The daemon gives it the instants; tests give it made-up ones.

use crate::triggers::Debounce;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Distinct changed paths remembered between syncs (beyond it the count saturates).
pub(crate) const MAX_PENDING: usize = 100_000;
/// Free memory goes back to the kernel after each sync, and again this long after the last
/// one: tokio ends its idle blocking threads (scans, sessions) after 10 s, and what they held
/// (their allocator caches, their zstd contexts) is freed only then.
pub(crate) const TRIM_AFTER: Duration = Duration::from_secs(11);

/// Why a sync ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Start,
    Change,
    Rescan,
    Reconcile,
    Now,
    Retry,
    Reconnect,
    /// The node became the active primary.
    Activated,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Change => "change",
            Trigger::Rescan => "rescan",
            Trigger::Reconcile => "reconcile",
            Trigger::Now => "now",
            Trigger::Retry => "retry",
            Trigger::Reconnect => "reconnect",
            Trigger::Activated => "activated",
        }
    }
}

#[derive(Debug)]
pub(crate) struct Schedule {
    debounce: Debounce,
    /// A sync set for a time (retry, reconnect, start) and its trigger.
    wake: Option<(Instant, Trigger)>,
    next_reconcile: Option<Instant>,
    trim_at: Option<Instant>,
    /// Changed paths not yet carried by a successful sync, and since when (instant, epoch s).
    pending: HashSet<PathBuf>,
    pending_since: Option<(Instant, u64)>,
    /// Between reconcile syncs (zero: none).
    reconcile: Duration,
    /// The wait before the next retry or reconnect: doubles with each failure up to `max`.
    backoff: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
}

/// What is due at a moment, most urgent first (see [`Schedule::next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Hand free memory back to the kernel.
    Trim,
    /// A sync, and why.
    Sync(Trigger),
    /// A change has waited this long: raise the alert.
    Alert(Duration),
}

impl Schedule {
    pub(crate) fn new(
        debounce: Debounce,
        reconcile: Duration,
        (backoff_min, backoff_max): (Duration, Duration),
    ) -> Schedule {
        Schedule {
            backoff: backoff_min,
            backoff_min,
            backoff_max,
            debounce,
            wake: None,
            next_reconcile: None,
            trim_at: None,
            pending: HashSet::new(),
            pending_since: None,
            reconcile,
        }
    }

    /// `p` changed at `now` (`epoch`: the same moment in seconds, for the status).
    pub(crate) fn changed(&mut self, p: PathBuf, now: Instant, epoch: u64) {
        if self.pending.len() < MAX_PENDING {
            self.pending.insert(p);
        }
        self.pending_since.get_or_insert((now, epoch));
        self.debounce.note(now);
    }

    /// Something to sync soon without a path of its own (a rescan, a list change, a file
    /// that changed while it was read).
    pub(crate) fn nudge(&mut self, now: Instant) {
        self.debounce.note(now);
    }

    /// The node became the active primary (`first`: at start): sync at once, carrying what
    /// changed while inactive.
    pub(crate) fn activated(&mut self, now: Instant, first: bool) {
        let t = if first {
            Trigger::Start
        } else {
            Trigger::Activated
        };
        self.wake = Some((now, t));
        self.debounce.take();
        self.backoff = self.backoff_min;
    }

    /// No longer sending: nothing is due but the trim; the changes stay pending.
    pub(crate) fn deactivated(&mut self) {
        self.wake = None;
        self.next_reconcile = None;
        self.debounce.take();
    }

    /// The connection dropped: reconnect after the backoff, unless a sync is set already.
    pub(crate) fn connection_lost(&mut self, now: Instant) {
        if self.wake.is_none() {
            self.wake = Some((now + self.backoff, Trigger::Reconnect));
        }
    }

    /// A sync begins: the burst it carries ends; returns when its first change came (the
    /// latency clock), else when the oldest pending change came.
    pub(crate) fn begin_sync(&mut self) -> Option<Instant> {
        self.wake = None;
        self.debounce.take().or(self.pending_since.map(|p| p.0))
    }

    /// The sync's session ended at `now` (whatever its outcome): what comes during the next
    /// quiet period is coalesced.
    pub(crate) fn sync_ended(&mut self, now: Instant) {
        self.debounce.synced(now);
    }

    /// The sync succeeded: nothing pending, no retry, the backoff back to its minimum.
    pub(crate) fn succeeded(&mut self) {
        self.backoff = self.backoff_min;
        self.wake = None;
        self.pending.clear();
        self.pending_since = None;
    }

    /// The sync failed: retry after the backoff, which doubles for the next one. Returns
    /// the wait.
    pub(crate) fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.backoff;
        self.wake = Some((now + wait, Trigger::Retry));
        self.backoff = (self.backoff * 2).min(self.backoff_max);
        wait
    }

    /// The most urgent thing due at `now`: the trim, then (while `active`) a sync, then the
    /// alert of a change waiting past `alert_wait` (`None`: raised already). The caller acts
    /// and asks again: after a sync that succeeded, nothing waits and no alert is due.
    pub(crate) fn next(
        &mut self,
        now: Instant,
        active: bool,
        rescan: bool,
        alert_wait: Option<Duration>,
    ) -> Option<Due> {
        if self.trim_due(now) {
            return Some(Due::Trim);
        }
        if !active {
            return None;
        }
        if let Some(t) = self.sync_due(now, rescan) {
            return Some(Due::Sync(t));
        }
        alert_wait
            .and_then(|w| self.alert_due(now, w))
            .map(Due::Alert)
    }

    /// A sync was recorded at `now`: the next reconcile and the memory trim count from here.
    pub(crate) fn recorded(&mut self, now: Instant) {
        if !self.reconcile.is_zero() {
            self.next_reconcile = Some(now + self.reconcile);
        }
        self.trim_at = Some(now + TRIM_AFTER);
    }

    /// The next moment something is due: while `active`, the burst, a set sync, the
    /// reconcile and the alert (`alert_wait`: how long a change may wait, `None` when the
    /// alert is raised already); else only the trim.
    pub(crate) fn deadline(&self, active: bool, alert_wait: Option<Duration>) -> Option<Instant> {
        if !active {
            return self.trim_at;
        }
        let alert = match (self.pending_since, alert_wait) {
            (Some((t, _)), Some(w)) => Some(t + w),
            _ => None,
        };
        [
            self.debounce.deadline(),
            self.wake.map(|w| w.0),
            self.next_reconcile,
            alert,
            self.trim_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether the memory trim is due at `now` (then it is done: not due again).
    pub(crate) fn trim_due(&mut self, now: Instant) -> bool {
        let due = self.trim_at.is_some_and(|t| t <= now);
        if due {
            self.trim_at = None;
        }
        due
    }

    /// The sync due at `now`, if any, by priority: the debounced burst (`rescan`: after lost
    /// events, a full one), a set sync, the reconcile.
    pub(crate) fn sync_due(&self, now: Instant, rescan: bool) -> Option<Trigger> {
        if self.debounce.deadline().is_some_and(|d| d <= now) {
            return Some(if rescan {
                Trigger::Rescan
            } else {
                Trigger::Change
            });
        }
        if let Some((_, t)) = self.wake.filter(|w| w.0 <= now) {
            return Some(t);
        }
        self.next_reconcile
            .is_some_and(|d| d <= now)
            .then_some(Trigger::Reconcile)
    }

    /// How long the oldest change has waited, when that is `wait` or more.
    pub(crate) fn alert_due(&self, now: Instant, wait: Duration) -> Option<Duration> {
        let (t, _) = self.pending_since?;
        let waited = now.saturating_duration_since(t);
        (waited >= wait).then_some(waited)
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Since when (epoch seconds) a change waits, if one does.
    pub(crate) fn pending_since_epoch(&self) -> Option<u64> {
        self.pending_since.map(|p| p.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(2);

    fn schedule() -> (Schedule, Instant) {
        (
            Schedule::new(
                Debounce::new(QUIET, MAX),
                Duration::from_secs(60),
                (Duration::from_secs(4), Duration::from_secs(30)),
            ),
            Instant::now(),
        )
    }

    #[test]
    fn a_first_change_is_due_at_once_and_a_burst_during_a_sync_is_coalesced() {
        let (mut s, t0) = schedule();
        assert_eq!(s.deadline(true, None), None, "nothing to do");
        s.changed("/etc/a".into(), t0, 1);
        let due = s.deadline(true, None).unwrap();
        assert!(due <= t0 + QUIET, "leading edge: not a whole quiet period");
        assert_eq!(s.sync_due(due, false), Some(Trigger::Change));
        assert_eq!(s.begin_sync(), Some(t0));
        let end = due + Duration::from_millis(30);
        s.sync_ended(end);
        s.succeeded();
        s.recorded(end);
        assert!(!s.has_pending());
        // Changes right after a sync wait for quiet: one sync for the burst.
        for i in 0..50 {
            s.changed(
                format!("/etc/b{i}").into(),
                end + Duration::from_millis(i),
                2,
            );
        }
        let next = s.deadline(true, None).unwrap();
        assert!(
            next >= end + Duration::from_millis(49) + QUIET.min(MAX),
            "{next:?}"
        );
        assert_eq!(s.sync_due(next - Duration::from_millis(1), false), None);
        assert_eq!(s.sync_due(next, true), Some(Trigger::Rescan));
        assert_eq!(s.pending_len(), 50);
    }

    #[test]
    fn failures_retry_after_the_backoff_and_a_lost_connection_reconnects() {
        let (mut s, t0) = schedule();
        s.activated(t0, true);
        assert_eq!(
            s.next(t0, true, false, None),
            Some(Due::Sync(Trigger::Start))
        );
        s.begin_sync();
        assert_eq!(s.failed(t0), Duration::from_secs(4));
        s.recorded(t0);
        assert_eq!(s.sync_due(t0 + Duration::from_secs(3), false), None);
        assert_eq!(
            s.sync_due(t0 + Duration::from_secs(4), false),
            Some(Trigger::Retry)
        );
        // The backoff doubles, to its maximum.
        assert_eq!(s.failed(t0), Duration::from_secs(8));
        assert_eq!(s.failed(t0), Duration::from_secs(16));
        assert_eq!(s.failed(t0), Duration::from_secs(30));
        assert_eq!(s.failed(t0), Duration::from_secs(30));
        // A retry already set is not replaced by a reconnect.
        s.connection_lost(t0);
        assert_eq!(s.sync_due(t0 + Duration::from_secs(29), false), None);
        // Success: back to the minimum.
        s.succeeded();
        s.connection_lost(t0);
        assert_eq!(s.sync_due(t0 + Duration::from_secs(3), false), None);
        assert_eq!(
            s.next(t0 + Duration::from_secs(4), true, false, None),
            Some(Due::Sync(Trigger::Reconnect))
        );
    }

    #[test]
    fn the_reconcile_trim_and_alert_come_due_and_an_inactive_node_only_trims() {
        let (mut s, t0) = schedule();
        s.recorded(t0);
        assert_eq!(s.deadline(true, None), Some(t0 + TRIM_AFTER));
        assert!(!s.trim_due(t0));
        assert!(s.trim_due(t0 + TRIM_AFTER));
        assert!(!s.trim_due(t0 + TRIM_AFTER), "once");
        assert_eq!(s.deadline(true, None), Some(t0 + Duration::from_secs(60)));
        assert_eq!(
            s.sync_due(t0 + Duration::from_secs(60), false),
            Some(Trigger::Reconcile)
        );
        s.changed("/etc/x".into(), t0, 7);
        s.deactivated();
        s.recorded(t0);
        assert_eq!(s.deadline(false, Some(MAX)), Some(t0 + TRIM_AFTER));
        assert_eq!(s.pending_since_epoch(), Some(7), "changes stay pending");
        let wait = Duration::from_secs(120);
        assert_eq!(s.alert_due(t0 + Duration::from_secs(119), wait), None);
        // Inactive: the trim only, once.
        let late = t0 + Duration::from_secs(121);
        assert_eq!(s.next(late, false, false, Some(wait)), Some(Due::Trim));
        assert_eq!(s.next(late, false, false, Some(wait)), None);
        // Active again: the sync first; the alert once a sync failed to carry the change.
        assert_eq!(
            s.next(late, true, false, Some(wait)),
            Some(Due::Sync(Trigger::Reconcile))
        );
        s.begin_sync();
        s.sync_ended(late);
        s.failed(late);
        s.recorded(late);
        assert_eq!(
            s.next(late, true, false, Some(wait)),
            Some(Due::Alert(Duration::from_secs(121)))
        );
        assert_eq!(s.next(late, true, false, None), None, "raised already");
        assert_eq!(
            s.alert_due(t0 + Duration::from_secs(121), wait),
            Some(Duration::from_secs(121))
        );
        // The alert's moment counts in the deadline while it is not raised.
        assert_eq!(s.deadline(true, Some(wait)), Some(t0 + wait));
    }
}
