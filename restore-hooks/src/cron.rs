//! Cron jobs a backup must not run, as an overlay on the synced crontab.
//!
//! The incumbent commented jobs out with `sed` in place on NOTIFY_BACKUP and removed every
//! leading `#` on NOTIFY_MASTER: the synced file was edited, and a job the admin had
//! commented out himself came back to life after a failover. Here:
//!
//! - the **source** is the crontab as the admin wrote it: on a backup, the primary's copy in
//!   the staging tree (`<staging>/etc/crontabs/root`, never edited); on a node without a
//!   staged copy (the primary), the live file with our markers taken out;
//! - the **effective** crontab `/etc/crontabs/root` is computed from the source: verbatim on
//!   the master; elsewhere each active job whose line mentions one of [`DISABLED_JOBS`] is
//!   prefixed with [`MARKER`]. Only lines carrying our marker are ever re-enabled, so the
//!   admin's own comments survive any number of failovers;
//! - crond is told through `cron.update`, as busybox `crontab` does after replacing a file.
//!
//! The restore writes the effective crontab too (the backup never runs the primary's jobs,
//! not even for the moment between restore and hook), and compares live with the effective
//! text, so an unchanged source means no write.

use std::io::Write;
use std::path::Path;

/// Live crontab of root, relative to the root.
pub const CRONTAB: &str = "etc/crontabs/root";

/// Jobs disabled on a node that is not master: a job line that contains one of these words
/// (`dpi-*`: anything starting with `dpi-`) is commented out, as the incumbent's `sed` did.
pub const DISABLED_JOBS: &[&str] = &[
    "acme",
    "ns-snort-rules",
    "dpi-*",
    "send-heartbeat",
    "send-backup",
    "send-inventory",
    "ns-push-reports",
    "update-packages",
    "send-phonehome",
    "adblock",
];

/// Prefix of a line disabled by ha-sync.
pub const MARKER: &str = "#ha-sync-disabled# ";

fn is_job(line: &str) -> bool {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        return false;
    }
    // `NAME=value` lines set the environment of the jobs below them.
    let name_end = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(t.len());
    let rest = t[name_end..].trim_start();
    !(name_end > 0 && !t.starts_with(|c: char| c.is_ascii_digit()) && rest.starts_with('='))
}

fn is_disabled_job(line: &str) -> bool {
    is_job(line)
        && DISABLED_JOBS
            .iter()
            .any(|j| line.contains(j.trim_end_matches('*')))
}

/// The source without any of our markers.
pub fn unmark(text: &str) -> String {
    map_lines(text, |l| l.strip_prefix(MARKER).unwrap_or(l).to_string())
}

/// The effective crontab of `source` for a node that is (`master`) or is not the master.
pub fn effective(source: &str, master: bool) -> String {
    let clean = unmark(source);
    if master {
        return clean;
    }
    map_lines(&clean, |l| {
        if is_disabled_job(l) {
            format!("{MARKER}{l}")
        } else {
            l.to_string()
        }
    })
}

fn map_lines(text: &str, f: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for piece in text.split_inclusive('\n') {
        let (line, nl) = match piece.strip_suffix('\n') {
            Some(l) => (l, "\n"),
            None => (piece, ""),
        };
        out.push_str(&f(line));
        out.push_str(nl);
    }
    out
}

/// Tells busybox crond to re-read root's crontab (it polls `cron.update` every minute).
pub fn notify_crond(root: &Path) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("etc/crontabs/cron.update"))?;
    f.write_all(b"root\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "\
MAILTO=\"\"
0 2 * * * /usr/sbin/send-heartbeat
*/5 * * * * /usr/bin/dpi-update -q
# 0 3 * * * /usr/sbin/send-backup   (disabled by the admin)
30 4 * * * /usr/sbin/logrotate
0 0 * * * /etc/init.d/acme renew";

    #[test]
    fn backup_overlay_comments_listed_jobs_only() {
        let e = effective(SRC, false);
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines[0], "MAILTO=\"\"");
        assert_eq!(
            lines[1],
            "#ha-sync-disabled# 0 2 * * * /usr/sbin/send-heartbeat"
        );
        assert_eq!(
            lines[2],
            "#ha-sync-disabled# */5 * * * * /usr/bin/dpi-update -q"
        );
        assert_eq!(
            lines[3],
            "# 0 3 * * * /usr/sbin/send-backup   (disabled by the admin)"
        );
        assert_eq!(lines[4], "30 4 * * * /usr/sbin/logrotate");
        assert_eq!(
            lines[5],
            "#ha-sync-disabled# 0 0 * * * /etc/init.d/acme renew"
        );
        assert!(!e.ends_with('\n'));
        assert_eq!(effective(&e, false), e, "idempotent");
    }

    #[test]
    fn master_gets_the_source_back_with_admin_comments_kept() {
        assert_eq!(effective(&effective(SRC, false), true), SRC);
        assert_eq!(unmark(&effective(SRC, false)), SRC);
    }
}
