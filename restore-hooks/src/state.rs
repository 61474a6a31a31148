//! The hooks' own records: the one lock of hooks and restores, and the tickets that order
//! keepalived events. This node's role and VRRP state are [`sync_core::node`]'s.

use crate::{at, HookError};
use std::fs::File;
use std::io::Read;
use std::path::Path;
use sync_core::fsx::{self, Durability};
use sync_core::node::Node;

/// Writes a small state file of ours atomically (RAM: no fsync needed for durability, but a
/// reader must never see half of it).
pub(crate) fn write_small(path: &Path, data: &[u8]) -> Result<(), HookError> {
    fsx::write_atomic(path, data, 0o644, Durability::Visible).map_err(at(path))
}

fn lock(path: &Path) -> Result<fsx::Lock, HookError> {
    fsx::Lock::acquire(path).map_err(at(path))
}

/// The one lock of hooks and restores: `<root>/var/run/ha-sync/hooks.lock`.
pub(crate) fn hooks_lock(root: &Path) -> Result<fsx::Lock, HookError> {
    lock(&Node::new(root).state_dir().join("hooks.lock"))
}

/// Numbers keepalived events in the order they arrive, before they queue for the hooks lock.
///
/// `flock` wakes waiters in no particular order, so a NOTIFY_BACKUP and a NOTIFY_MASTER sent
/// a moment apart could run in the wrong order and leave the node stopped while keepalived
/// holds it master. Each event takes a ticket first; once it holds the hooks lock, an event
/// whose ticket is no longer the latest is skipped: the later event decides the state.
pub(crate) fn take_ticket(root: &Path, event: &str) -> Result<u64, HookError> {
    let dir = Node::new(root).state_dir();
    let _l = lock(&dir.join("event.lock"))?;
    let n = latest_ticket(root).unwrap_or(0) + 1;
    write_small(&dir.join("event"), format!("{n} {event}\n").as_bytes())?;
    Ok(n)
}

pub(crate) fn latest_ticket(root: &Path) -> Option<u64> {
    let mut s = String::new();
    File::open(Node::new(root).state_dir().join("event"))
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    s.split_whitespace().next()?.parse().ok()
}
