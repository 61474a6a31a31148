//! The primary's preparation (restore list -> scan -> manifest) and the whole protocol
//! in-process between two roots (`ha-sync sync-local`): the same code paths the agents run,
//! over a socket pair instead of SSH.

use crate::apply::{Staging, DEFAULT_STAGING};
use crate::manifest::{ListItem, Manifest};
use crate::path::RelPath;
use crate::restore_list::{self, EntryKind, RestoreList, RestoreListError};
use crate::runner::Runner;
use crate::scan::{ScanStats, Scanner, StatCache};
use crate::session::{Backup, BackupReport, Primary, PrimaryState, SyncError, SyncReport};
use crate::uci::Package;
use crate::wire::RestoreReport;
use std::path::{Path, PathBuf};

/// Where the primary keeps rebuildable state, relative to its root.
pub const STATE_DIR: &str = "var/run/ha-sync";

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("restore list: {0}")]
    List(#[from] RestoreListError),
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error("restore list entry {path}: {msg}")]
    Path { path: String, msg: String },
}

/// The primary's view of its tree for one sync.
#[derive(Debug)]
pub struct Prepared {
    pub list: RestoreList,
    pub manifest: Manifest,
    pub stats: ScanStats,
}

/// The restore list in the manifest's terms.
pub fn list_items(list: &RestoreList) -> Result<Vec<ListItem>, PrepareError> {
    list.entries
        .iter()
        .map(|e| {
            let path = RelPath::from_abs(&e.path).map_err(|err| PrepareError::Path {
                path: e.path.clone(),
                msg: err.to_string(),
            })?;
            Ok(ListItem {
                path,
                dir: e.kind == EntryKind::Dir,
            })
        })
        .collect()
}

/// Computes the restore list under `root` and scans it, with the stat cache of `state_dir`.
pub fn prepare(
    root: &Path,
    state_dir: &Path,
    runner: &dyn Runner,
) -> Result<Prepared, PrepareError> {
    let t = std::time::Instant::now();
    let list = restore_list::compute(root, runner)?;
    let items = list_items(&list)?;
    let t_list = t.elapsed();
    let cache_path = state_dir.join("statcache");
    let mut cache = StatCache::load(&cache_path);
    let t_cache = t.elapsed();
    let excl = |p: &str| list.excludes.is_excluded(p);
    let (manifest, stats) = Scanner {
        root,
        is_excluded: &excl,
        cache: &mut cache,
    }
    .scan(&items, list.excludes.patterns())
    .map_err(SyncError::from)?;
    let t_scan = t.elapsed();
    if let Err(e) = cache.save(&cache_path) {
        tracing::warn!("stat cache {}: {e}", cache_path.display());
    }
    tracing::debug!(
        "prepare: list {:?}, cache load {:?}, scan {:?}, cache save {:?}",
        t_list,
        t_cache - t_list,
        t_scan - t_cache,
        t.elapsed() - t_scan
    );
    Ok(Prepared {
        list,
        manifest,
        stats,
    })
}

/// This node's name: `system.@system[0].hostname` under `root`, else `fallback`.
pub fn node_name(root: &Path, fallback: &str) -> String {
    Package::load_or_empty(&root.join("etc/config/system"))
        .ok()
        .and_then(|p| {
            p.sections_of_kind("system")
                .find_map(|s| s.get("hostname").map(str::to_string))
        })
        .unwrap_or_else(|| fallback.to_string())
}

/// The staging tree of a backup root: UCI `keepalived.ha_peer.sync_dir` when set (an
/// absolute router path, taken under `root`), else the default.
pub fn staging_dir(root: &Path) -> PathBuf {
    let dir = Package::load_or_empty(&root.join("etc/config/keepalived"))
        .ok()
        .and_then(|p| p.get("ha_peer", "sync_dir").map(str::to_string))
        .and_then(|d| RelPath::from_abs(&d).ok());
    match dir {
        Some(d) => root.join(d.as_str()),
        None => root.join(DEFAULT_STAGING),
    }
}

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
    let state_dir = from.join(STATE_DIR);
    let prepared = prepare(from, &state_dir, runner)?;
    let state = PrimaryState::new(&state_dir);
    let mut staging = Staging::open(&staging_dir(to)).map_err(SyncError::from)?;
    let (a, b) = std::os::unix::net::UnixStream::pair().map_err(|e| SyncError::State {
        path: "socketpair".into(),
        source: e,
    })?;
    let pnode = node_name(from, "primary");
    let bnode = node_name(to, "backup");
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
