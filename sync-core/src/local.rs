//! The whole protocol in-process between two roots (`ha-sync sync-local`): the same code
//! paths the agents run, over a socket pair instead of SSH.

use crate::manifest::Manifest;
use crate::node::Node;
use crate::prepare::{self, PrepareError, Prepared};
use crate::runner::Runner;
use crate::session::{Backup, BackupReport, Primary, PrimaryState, SyncError, SyncReport};
use crate::staging::Staging;
use crate::wire::RestoreReport;
use std::path::Path;

/// Result of one in-process sync.
pub struct LocalSync {
    pub prepared: Prepared,
    pub primary: SyncReport,
    pub backup: BackupReport,
}

/// Syncs `from` (primary root) into the staging tree of `to` (backup root), in-process.
/// `restore` runs on the backup after the commit (staging only: pass `staging_only`).
pub fn sync_local(
    from: &Path,
    to: &Path,
    runner: &dyn Runner,
    restore: &mut (dyn FnMut(&Manifest, &crate::wire::Commit) -> RestoreReport + Send),
) -> Result<LocalSync, PrepareError> {
    let (from_node, to_node) = (Node::new(from), Node::new(to));
    let prepared = prepare::prepare_saved(&from_node, runner)?;
    let state = PrimaryState::new(&from_node.state_dir());
    let mut staging = Staging::open(&to_node.staging_dir()).map_err(SyncError::from)?;
    let (a, b) = std::os::unix::net::UnixStream::pair().map_err(|e| SyncError::State {
        path: "socketpair".into(),
        source: e,
    })?;
    let pnode = from_node.name("primary");
    let bnode = to_node.name("backup");
    let (primary, backup) = std::thread::scope(|s| {
        let backup = s.spawn(|| {
            let r = Backup {
                staging: &mut staging,
                node: &bnode,
                restore,
            }
            .run(&b);
            drop(b);
            r
        });
        let mut progress = |_: u64, _: u64| {};
        let p = Primary {
            root: from,
            manifest: &prepared.manifest,
            state: &state,
            node: &pnode,
            progress: &mut progress,
        }
        .run(&a);
        // Unblock the backup if the primary stopped early.
        let _ = a.shutdown(std::net::Shutdown::Both);
        (p, backup.join().expect("backup thread panicked"))
    });
    let primary = primary?;
    let backup = backup?;
    Ok(LocalSync {
        prepared,
        primary,
        backup,
    })
}

/// The restore step of a staging-only sync.
pub fn staging_only(m: &Manifest, c: &crate::wire::Commit) -> RestoreReport {
    let _ = m;
    RestoreReport {
        root: c.root,
        applied: false,
        refused: Some("staging only: no restore configured".into()),
        ..RestoreReport::default()
    }
}
