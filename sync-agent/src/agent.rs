//! The two agents: the backup's sync handler behind the SSH server, and the primary's
//! `now` (one sync over a fresh connection, serialized by a lock).

use crate::transport::{self, ClientConfig, PeerInfo, ReadWrite, StreamHandler, TransportError};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use sync_core::apply::Staging;
use sync_core::local::{self, PrepareError, Prepared, STATE_DIR};
use sync_core::manifest::Manifest;
use sync_core::runner::Runner;
use sync_core::session::{Backup, Primary, PrimaryState, SyncError, SyncReport};
use sync_core::wire::{Commit, RestoreReport};

/// What runs on the backup after each commit.
pub type RestoreHook = Arc<dyn Fn(&Manifest, &Commit) -> RestoreReport + Send + Sync>;

/// The backup's side of a sync session: one `Backup` run on the staging tree per session
/// (the transport guarantees one at a time).
pub struct BackupHandler {
    pub staging: PathBuf,
    pub node: String,
    pub restore: RestoreHook,
}

impl StreamHandler for BackupHandler {
    fn handle(&self, stream: &mut dyn ReadWrite, peer: &PeerInfo) -> Result<(), String> {
        let mut staging = Staging::open(&self.staging).map_err(|e| e.to_string())?;
        let hook = self.restore.clone();
        let mut restore = move |m: &Manifest, c: &Commit| hook(m, c);
        let rep = Backup {
            staging: &mut staging,
            node: &self.node,
            restore: &mut restore,
        }
        .run(stream)
        .map_err(|e| {
            tracing::warn!("sync from {} failed: {e}", peer.addr);
            e.to_string()
        })?;
        match &rep.commit {
            Some(c) => tracing::info!(
                "sync from {} ({}) committed {}: {} changed, {} written, {} deleted",
                rep.peer,
                peer.addr,
                c.root,
                c.changed.len(),
                c.files_written,
                c.deleted
            ),
            None => tracing::debug!("sync from {} ({}): up to date", rep.peer, peer.addr),
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NowError {
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("sync: {0}")]
    Sync(#[from] SyncError),
    #[error("lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the backup did not commit: {0}")]
    NotCommitted(String),
}

/// An exclusive lock held while it lives (flock: released by the kernel if we die).
pub struct Lock(#[allow(dead_code)] File);

pub fn lock(path: &Path) -> Result<Lock, NowError> {
    let err = |source| NowError::Lock {
        path: path.to_path_buf(),
        source,
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(err)?;
    // SAFETY: valid fd; flock has no memory effects.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(Lock(f))
}

pub struct NowOptions {
    pub root: PathBuf,
    pub client: ClientConfig,
    pub runner: Arc<dyn Runner>,
    pub progress: Box<dyn FnMut(u64, u64) + Send>,
}

/// One sync: lock, restore list + scan, connect, run the protocol. Ok only when the backup
/// committed our manifest (or already held it).
pub async fn now(opts: NowOptions) -> Result<(Prepared, SyncReport), NowError> {
    let state_dir = opts.root.join(STATE_DIR);
    let _lock = {
        let p = state_dir.join("now.lock");
        tokio::task::spawn_blocking(move || lock(&p))
            .await
            .expect("lock task")?
    };
    let root = opts.root.clone();
    let runner = opts.runner.clone();
    let sd = state_dir.clone();
    let prepared = tokio::task::spawn_blocking(move || local::prepare(&root, &sd, runner.as_ref()))
        .await
        .expect("scan task")?;
    let manifest = prepared.manifest.clone();
    let root = opts.root.clone();
    let mut progress = opts.progress;
    let node = local::node_name(&opts.root, "primary");
    let report = transport::run(&opts.client, move |stream| {
        let state = PrimaryState::new(&state_dir);
        Primary {
            root: &root,
            manifest: &manifest,
            state: &state,
            node: &node,
            progress: &mut *progress,
        }
        .run(stream)
    })
    .await??;
    if !report.up_to_date {
        match &report.commit {
            Some(c) if c.root == report.root => {}
            Some(c) => {
                return Err(NowError::NotCommitted(format!(
                    "it committed {} instead of {} (a file changed during the sync; the next one converges)",
                    c.root, report.root
                )))
            }
            None => return Err(NowError::NotCommitted("no commit received".into())),
        }
    }
    Ok((prepared, report))
}
