//! The cluster's two alerts, as the incumbent recorded them, plus a command to pass them on.
//!
//! - `ha:sync:failed`: raised on the primary when syncs keep failing (N in a row) or a change
//!   has waited too long for the backup; cleared by the next successful sync. The daemon
//!   ([`crate::daemon`]) decides; this module records.
//! - `ha:primary:failed`: raised on the backup when it takes over (NOTIFY_MASTER there),
//!   cleared on the primary when it is master again. The keepalived hooks call
//!   [`primary_failed`].
//!
//! Recording means, on a transition only: the UCI state timestamp
//! `keepalived.ha_alert.<name>_failed_at` or `<name>_recovered_at` (epoch seconds, in
//! `<root>/var/state/keepalived`, where the incumbent's readers look), then the command of
//! `keepalived.ha_peer.alert_command`, when set, run through the [`Runner`] as
//! `/bin/sh -c '<command> "$@"' ha-sync-alert <alert> <FAILURE|OK> <message>` with the same
//! three values in `HA_ALERT`, `HA_ALERT_STATE` and `HA_ALERT_MESSAGE`. A failing command is
//! logged, never retried: the timestamps stay the record.
//!
//! Alerts never touch keepalived: sync health does not change VRRP priority (a backup that
//! cannot be reached must not make the primary give up the VIPs).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use sync_core::node::Node;
use sync_core::runner::{Cmd, Runner};
use sync_core::uci::{self, UciError};

/// UCI package and sections the alert state lives in.
const PACKAGE: &str = "keepalived";
const ALERT_SECTION: &str = "ha_alert";
const PEER_SECTION: &str = "ha_peer";

/// Consecutive failed syncs that raise `ha:sync:failed` by default.
pub const DEFAULT_FAILURES: u32 = 3;
/// How long a change may wait for the backup before `ha:sync:failed` is raised, by default.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    /// `ha:sync:failed`
    SyncFailed,
    /// `ha:primary:failed`
    PrimaryFailed,
    /// `ha:sync:drift`: the backup's live tree differed from the generation it restored.
    Drift,
    /// `ha:sync:conflict`: failback found the same thing changed on both nodes; the
    /// authority's version went live, the other is in the attic (`ha-sync resolve`).
    Conflict,
}

impl Alert {
    pub const ALL: [Alert; 4] = [
        Alert::SyncFailed,
        Alert::PrimaryFailed,
        Alert::Drift,
        Alert::Conflict,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Alert::SyncFailed => "ha:sync:failed",
            Alert::PrimaryFailed => "ha:primary:failed",
            Alert::Drift => "ha:sync:drift",
            Alert::Conflict => "ha:sync:conflict",
        }
    }

    /// The UCI state options of the two transitions: (raised, cleared).
    pub fn options(self) -> (&'static str, &'static str) {
        match self {
            Alert::SyncFailed => ("sync_failed_at", "sync_recovered_at"),
            Alert::PrimaryFailed => ("primary_failed_at", "primary_recovered_at"),
            Alert::Drift => ("drift_at", "drift_healed_at"),
            Alert::Conflict => ("conflict_at", "conflict_resolved_at"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("alert state: {0}")]
    State(#[from] UciError),
}

/// When `ha:sync:failed` is raised, and what is told of it; from `keepalived.ha_peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertConfig {
    /// `alert_command`: run on every transition; none when unset or empty.
    pub command: Option<String>,
    /// `alert_failures`: consecutive failed syncs that raise the alert (at least 1).
    pub failures: u32,
    /// `alert_max_wait` (seconds): a change pending longer raises it.
    pub max_wait: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            command: None,
            failures: DEFAULT_FAILURES,
            max_wait: DEFAULT_MAX_WAIT,
        }
    }
}

impl AlertConfig {
    /// Reads `<root>/etc/config/keepalived`; missing or malformed values give the defaults.
    pub fn load(root: &Path) -> AlertConfig {
        let d = AlertConfig::default();
        let p = match Node::new(root).keepalived() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("{e}; alert settings are the defaults");
                return d;
            }
        };
        let command = p
            .get(PEER_SECTION, "alert_command")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        let failures = p
            .get(PEER_SECTION, "alert_failures")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .map_or(d.failures, |n| n.max(1));
        let max_wait = p
            .get(PEER_SECTION, "alert_max_wait")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(d.max_wait, Duration::from_secs);
        AlertConfig {
            command,
            failures,
            max_wait,
        }
    }
}

fn epoch_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn state_time(root: &Path, option: &str) -> Option<u64> {
    uci::state_get(root, PACKAGE, ALERT_SECTION, option)
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse().ok())
}

/// Whether the UCI state says `alert` is raised: raised after it was last cleared. Two
/// transitions in the same second read as cleared (the safe side: a later failure raises it
/// again rather than staying silent).
pub fn is_raised(root: &Path, alert: Alert) -> bool {
    let (raised, cleared) = alert.options();
    match (state_time(root, raised), state_time(root, cleared)) {
        (Some(r), Some(c)) => r > c,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Records a transition of `alert` (raised when `failing`): the UCI state timestamp, then
/// the configured command. Unconditional: callers decide that it is a transition.
pub fn record(
    root: &Path,
    runner: &dyn Runner,
    command: Option<&str>,
    alert: Alert,
    failing: bool,
    message: &str,
) -> Result<(), AlertError> {
    let (raised, cleared) = alert.options();
    let option = if failing { raised } else { cleared };
    // uci accepts options of a section only once the state file declares it.
    uci::state_set_section(root, PACKAGE, ALERT_SECTION, "state")?;
    uci::state_set(
        root,
        PACKAGE,
        ALERT_SECTION,
        option,
        &epoch_now().to_string(),
    )?;
    if failing {
        tracing::warn!("alert {} raised: {message}", alert.id());
    } else {
        tracing::info!("alert {} cleared: {message}", alert.id());
    }
    if let Some(cmd) = command {
        run_command(runner, cmd, alert, failing, message);
    }
    Ok(())
}

/// Runs the alert command for one transition; failures are logged.
pub fn run_command(runner: &dyn Runner, command: &str, alert: Alert, failing: bool, message: &str) {
    let level = if failing { "FAILURE" } else { "OK" };
    // The message is a positional parameter, never part of the script: it may hold
    // anything a peer or a path put in an error text.
    let cmd = Cmd::new("/bin/sh")
        .arg("-c")
        .arg(format!("{command} \"$@\""))
        .arg("ha-sync-alert")
        .arg(alert.id())
        .arg(level)
        .arg(message)
        .env("HA_ALERT", alert.id())
        .env("HA_ALERT_STATE", level)
        .env("HA_ALERT_MESSAGE", message);
    match runner.run(&cmd) {
        Ok(out) if out.success() => {}
        Ok(out) => tracing::warn!(
            "alert command for {} exited {:?}: {}",
            alert.id(),
            out.code,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => tracing::warn!("alert command for {} could not run: {e}", alert.id()),
    }
}

/// Runs the configured alert command (if any) for a transition recorded elsewhere: the
/// keepalived hooks write `primary_failed_at` / `primary_recovered_at` themselves, under their
/// lock, and then call this.
pub fn announce(root: &Path, runner: &dyn Runner, alert: Alert, failing: bool, message: &str) {
    if let Some(cmd) = AlertConfig::load(root).command {
        run_command(runner, &cmd, alert, failing, message);
    }
}

/// `ha:primary:failed` for the keepalived hooks: `failed` on the backup when it becomes
/// master, `!failed` on the primary when it is master again. Records only a transition
/// (per the UCI state); returns whether it was one.
pub fn primary_failed(root: &Path, runner: &dyn Runner, failed: bool) -> Result<bool, AlertError> {
    if is_raised(root, Alert::PrimaryFailed) == failed {
        return Ok(false);
    }
    let message = if failed {
        "the backup took over the virtual IPs: the primary is down or unreachable"
    } else {
        "the primary is master again"
    };
    let cfg = AlertConfig::load(root);
    record(
        root,
        runner,
        cfg.command.as_deref(),
        Alert::PrimaryFailed,
        failed,
        message,
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::runner::RecordingRunner;

    fn root_with(peer_options: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc/config")).unwrap();
        std::fs::write(
            d.path().join("etc/config/keepalived"),
            format!("config peer 'ha_peer'\n{peer_options}"),
        )
        .unwrap();
        d
    }

    #[test]
    fn config_defaults_and_values() {
        let d = root_with("");
        assert_eq!(AlertConfig::load(d.path()), AlertConfig::default());
        let d = root_with(
            "\toption alert_command '/usr/bin/notify'\n\toption alert_failures '0'\n\toption alert_max_wait '30'\n",
        );
        let c = AlertConfig::load(d.path());
        assert_eq!(c.command.as_deref(), Some("/usr/bin/notify"));
        assert_eq!(c.failures, 1, "0 would raise before any failure");
        assert_eq!(c.max_wait, Duration::from_secs(30));
    }

    #[test]
    fn primary_failed_records_transitions_only_and_runs_the_command() {
        let d = root_with("\toption alert_command 'logger -t ha-alert'\n");
        let r = RecordingRunner::new();
        assert!(primary_failed(d.path(), &r, true).unwrap());
        assert!(
            !primary_failed(d.path(), &r, true).unwrap(),
            "already raised"
        );
        assert!(is_raised(d.path(), Alert::PrimaryFailed));
        let failed_at = state_time(d.path(), "primary_failed_at");
        assert!(failed_at.is_some());
        assert_eq!(r.calls().len(), 1);
        let call = &r.calls()[0];
        assert_eq!(call.program, "/bin/sh");
        assert_eq!(
            call.args,
            [
                "-c",
                "logger -t ha-alert \"$@\"",
                "ha-sync-alert",
                "ha:primary:failed",
                "FAILURE",
                "the backup took over the virtual IPs: the primary is down or unreachable"
            ]
        );
        // Cleared: the recovery timestamp is written, the command told OK.
        assert!(primary_failed(d.path(), &r, false).unwrap());
        assert!(state_time(d.path(), "primary_recovered_at").is_some());
        assert_eq!(r.calls()[1].args[4], "OK");
        assert!(!primary_failed(d.path(), &r, false).unwrap());
        assert_eq!(r.calls().len(), 2);
    }

    #[test]
    fn no_command_when_unset() {
        let d = root_with("");
        let r = RecordingRunner::new();
        record(d.path(), &r, None, Alert::SyncFailed, true, "x").unwrap();
        assert!(r.calls().is_empty());
        assert!(is_raised(d.path(), Alert::SyncFailed));
        let text = std::fs::read_to_string(d.path().join("var/state/keepalived")).unwrap();
        assert!(text.contains("keepalived.ha_alert=state"), "{text}");
        assert!(
            text.contains("keepalived.ha_alert.sync_failed_at="),
            "{text}"
        );
    }
}
