//! The primary's preparation for a sync: restore list -> scan -> manifest.
//!
//! One path for every caller: `ha-sync now` and `sync-local` load the stat cache from the
//! state directory and save it after ([`prepare_saved`]); the daemon keeps its cache in
//! memory between syncs and reuses the list it computed last when no event may have changed
//! it ([`prepare`] with `Some(list)`), since on a router the list costs a `sysupgrade -l`.

use crate::manifest::{ListItem, Manifest};
use crate::node::Node;
use crate::path::RelPath;
use crate::restore_list::{self, EntryKind, RestoreList, RestoreListError};
use crate::runner::Runner;
use crate::scan::{ScanStats, Scanner, StatCache};
use crate::session::SyncError;
use std::path::PathBuf;
use std::time::Instant;

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

/// Where the stat cache of `node` is kept between processes.
pub fn stat_cache_path(node: &Node) -> PathBuf {
    node.state_dir().join("statcache")
}

/// Scans `node`'s restore list with `cache`: `list` when the caller has a current one, else
/// computed now.
pub fn prepare(
    node: &Node,
    runner: &dyn Runner,
    cache: &mut StatCache,
    list: Option<RestoreList>,
) -> Result<Prepared, PrepareError> {
    let t = Instant::now();
    let list = match list {
        Some(l) => l,
        None => restore_list::compute(node.root(), runner)?,
    };
    let items = list_items(&list)?;
    let t_list = t.elapsed();
    let excl = |p: &str| list.excludes.is_excluded(p);
    let (manifest, stats) = Scanner {
        root: node.root(),
        is_excluded: &excl,
        cache,
    }
    .scan(&items, list.excludes.patterns())
    .map_err(SyncError::from)?;
    tracing::debug!(
        "prepare: list {:?}, scan {:?}",
        t_list,
        t.elapsed() - t_list
    );
    Ok(Prepared {
        list,
        manifest,
        stats,
    })
}

/// [`prepare`] with the stat cache of the state directory, loaded before and saved after
/// (a failure to save costs the next run some reads, so it is only logged).
pub fn prepare_saved(node: &Node, runner: &dyn Runner) -> Result<Prepared, PrepareError> {
    let path = stat_cache_path(node);
    let mut cache = StatCache::load(&path);
    let prepared = prepare(node, runner, &mut cache, None)?;
    if let Err(e) = cache.save(&path) {
        tracing::warn!("stat cache {}: {e}", path.display());
    }
    Ok(prepared)
}
