//! What this node is (role, from UCI) and where it stands (VRRP state, from the hooks).
//!
//! keepalived does not keep a state file ha-sync could read, so the hooks record the last
//! state they acted on in `<root>/var/run/ha-sync/vrrp_state` (RAM on a router: after a
//! reboot the state is unknown until keepalived's first event, which comes within seconds).
//! The agent reads it to refuse restores on the active node, and `ha-sync status` shows it.

use crate::{at, HookError, STATE_DIR};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use sync_core::uci::Package;

/// This node's VRRP state as the last keepalived event left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VrrpState {
    Master,
    Backup,
    Fault,
    /// keepalived was stopped (NOTIFY_STOP).
    Stop,
}

impl VrrpState {
    pub fn as_str(self) -> &'static str {
        match self {
            VrrpState::Master => "master",
            VrrpState::Backup => "backup",
            VrrpState::Fault => "fault",
            VrrpState::Stop => "stop",
        }
    }
}

impl fmt::Display for VrrpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VrrpState {
    type Err = String;

    fn from_str(s: &str) -> Result<VrrpState, String> {
        match s.trim() {
            "master" => Ok(VrrpState::Master),
            "backup" => Ok(VrrpState::Backup),
            "fault" => Ok(VrrpState::Fault),
            "stop" => Ok(VrrpState::Stop),
            other => Err(format!("unknown VRRP state {other:?}")),
        }
    }
}

/// The configured role (`keepalived.primary` / `keepalived.backup` sections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Backup,
}

/// The role configured under `root`; `None` when HA is off or the file cannot be read.
pub fn role(root: &Path) -> Option<Role> {
    let path = root.join("etc/config/keepalived");
    match Package::load_or_empty(&path) {
        Ok(p) if p.section("primary").is_some() => Some(Role::Primary),
        Ok(p) if p.section("backup").is_some() => Some(Role::Backup),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("{e}; role unknown");
            None
        }
    }
}

pub(crate) fn state_file(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join("vrrp_state")
}

/// This node's VRRP state as recorded by the hooks (`<root>/var/run/ha-sync/vrrp_state`);
/// `None` before the first event since boot.
pub fn vrrp_state(root: &Path) -> Option<VrrpState> {
    let text = fs::read_to_string(state_file(root)).ok()?;
    text.parse().ok()
}

pub(crate) fn set_vrrp_state(root: &Path, s: VrrpState) -> Result<(), HookError> {
    write_small(&state_file(root), format!("{s}\n").as_bytes())
}

/// Writes a small file of ours under `var/run/ha-sync` atomically (RAM: no fsync needed for
/// durability, but a reader must never see half of it).
pub(crate) fn write_small(path: &Path, data: &[u8]) -> Result<(), HookError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(at(dir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.ha-sync-tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(data)?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map_err(at(path))
}

/// An exclusive `flock` held until dropped. The file is opened close-on-exec, so no command
/// started meanwhile (an init script's daemon) can inherit and keep the lock.
pub(crate) struct FileLock {
    _file: File,
}

impl FileLock {
    pub(crate) fn acquire(path: &Path) -> Result<FileLock, HookError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(at(dir))?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(at(path))?;
        loop {
            // SAFETY: flock on a descriptor owned by `file`, which outlives the call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(at(path)(e));
            }
        }
    }
}

/// The one lock of hooks and restores: `<root>/var/run/ha-sync/hooks.lock`.
pub(crate) fn hooks_lock(root: &Path) -> Result<FileLock, HookError> {
    FileLock::acquire(&root.join(STATE_DIR).join("hooks.lock"))
}

/// Numbers keepalived events in the order they arrive, before they queue for the hooks lock.
///
/// `flock` wakes waiters in no particular order, so a NOTIFY_BACKUP and a NOTIFY_MASTER sent
/// a moment apart could run in the wrong order and leave the node stopped while keepalived
/// holds it master. Each event takes a ticket first; once it holds the hooks lock, an event
/// whose ticket is no longer the latest is skipped: the later event decides the state.
pub(crate) fn take_ticket(root: &Path, event: &str) -> Result<u64, HookError> {
    let dir = root.join(STATE_DIR);
    let _l = FileLock::acquire(&dir.join("event.lock"))?;
    let n = latest_ticket(root).unwrap_or(0) + 1;
    write_small(&dir.join("event"), format!("{n} {event}\n").as_bytes())?;
    Ok(n)
}

pub(crate) fn latest_ticket(root: &Path) -> Option<u64> {
    let mut s = String::new();
    File::open(root.join(STATE_DIR).join("event"))
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    s.split_whitespace().next()?.parse().ok()
}
