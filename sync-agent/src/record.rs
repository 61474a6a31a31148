//! What the daemon keeps of its syncs, pure: the counters and last results `status` shows,
//! since when the nodes are in sync, and when `ha:sync:failed` changes. The engine writes what
//! this decides (UCI state, the alert command, status.json).

use crate::status::{Counters, DaemonStatus, ErrorRecord, SyncRecord};

#[derive(Debug, Default)]
pub(crate) struct History {
    syncs: Counters,
    last_sync: Option<SyncRecord>,
    last_success: Option<u64>,
    last_error: Option<ErrorRecord>,
    /// Since when the backup holds what this node holds (see `DaemonStatus::in_sync_since`).
    in_sync_since: Option<u64>,
}

impl History {
    /// A sync ended at `now` (epoch seconds) with `record`; `ok` and `status` its outcome.
    pub(crate) fn note(&mut self, ok: bool, status: &str, record: &SyncRecord, now: u64) {
        self.syncs.total += 1;
        if ok {
            self.syncs.ok += 1;
            if record.up_to_date {
                self.syncs.unchanged += 1;
            }
            self.last_success = Some(now);
            if record.generation.is_some() {
                self.in_sync_since.get_or_insert(now);
            }
        } else {
            self.in_sync_since = None;
            self.syncs.failed += 1;
            self.last_error = Some(ErrorRecord {
                time: now,
                status: status.into(),
                message: record.error.clone().unwrap_or_default(),
            });
        }
        self.last_sync = Some(record.clone());
    }

    /// A change came: the nodes differ until the next sync.
    pub(crate) fn diverged(&mut self) {
        self.in_sync_since = None;
    }

    pub(crate) fn in_sync_since(&self) -> Option<u64> {
        self.in_sync_since
    }

    /// Into the status `status.json` carries.
    pub(crate) fn fill(&self, s: &mut DaemonStatus) {
        s.syncs = self.syncs.clone();
        s.last_sync = self.last_sync.clone();
        s.last_success = self.last_success;
        s.last_error = self.last_error.clone();
    }
}

/// `ha:sync:failed`: raised after `threshold` failed syncs in a row (or by a change waiting
/// too long), cleared by the next success.
#[derive(Debug)]
pub(crate) struct FailureAlert {
    raised: bool,
    failures: u32,
    threshold: u32,
}

/// A transition of the alert: raise (true) or clear, and what to say.
pub(crate) type Transition = (bool, String);

impl FailureAlert {
    pub(crate) fn new(raised: bool, threshold: u32) -> FailureAlert {
        FailureAlert {
            raised,
            failures: 0,
            threshold: threshold.max(1),
        }
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.raised
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// A sync succeeded (`None`) or failed (`Some((status, error))`): the transition due.
    pub(crate) fn after(&mut self, failed: Option<(&str, &str)>) -> Option<Transition> {
        match failed {
            None => {
                self.failures = 0;
                self.raised.then(|| {
                    self.raised = false;
                    (false, "sync succeeded".to_string())
                })
            }
            Some((status, error)) => {
                self.failures += 1;
                (self.failures >= self.threshold && !self.raised).then(|| {
                    self.raised = true;
                    (
                        true,
                        format!(
                            "{} syncs in a row failed; last: {status}: {error}",
                            self.failures
                        ),
                    )
                })
            }
        }
    }

    /// A change has waited `secs` seconds, past the bound: raise, unless raised.
    pub(crate) fn waited(&mut self, secs: u64) -> Option<Transition> {
        (!self.raised).then(|| {
            self.raised = true;
            (true, format!("a change has waited {secs} s for the backup"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alert_rises_after_the_threshold_once_and_clears_on_success() {
        let mut a = FailureAlert::new(false, 3);
        assert_eq!(a.after(Some(("SSH Connection Failed", "refused"))), None);
        assert_eq!(a.after(Some(("SSH Connection Failed", "refused"))), None);
        let (up, msg) = a.after(Some(("SSH Connection Failed", "refused"))).unwrap();
        assert!(up && msg.starts_with("3 syncs in a row failed"), "{msg}");
        assert_eq!(
            a.after(Some(("SSH Connection Failed", "refused"))),
            None,
            "once"
        );
        assert_eq!(a.failures(), 4);
        assert_eq!(a.after(None), Some((false, "sync succeeded".into())));
        assert_eq!(a.after(None), None);
        assert_eq!(a.waited(130).map(|t| t.0), Some(true));
        assert_eq!(a.waited(140), None);
    }

    #[test]
    fn history_counts_and_knows_since_when_the_nodes_agree() {
        let mut h = History::default();
        let ok = SyncRecord {
            generation: Some("ab".into()),
            ..SyncRecord::default()
        };
        h.note(true, "Successful", &ok, 100);
        h.note(true, "Successful", &ok, 160);
        assert_eq!(h.in_sync_since(), Some(100), "since the first of a run");
        h.diverged();
        assert_eq!(h.in_sync_since(), None);
        let bad = SyncRecord {
            error: Some("refused".into()),
            ..SyncRecord::default()
        };
        h.note(false, "SSH Connection Failed", &bad, 200);
        let mut s = DaemonStatus::default();
        h.fill(&mut s);
        assert_eq!((s.syncs.total, s.syncs.ok, s.syncs.failed), (3, 2, 1));
        assert_eq!(s.last_success, Some(160));
        assert_eq!(s.last_error.unwrap().message, "refused");
    }
}
