//! The two agents: the backup's sync handler behind the SSH server, and the primary's
//! `now` (one sync over a fresh connection, serialized by a lock). The daemon
//! ([`crate::daemon`]) runs the same pieces over a connection it keeps open.

use crate::transport::{
    ClientConfig, Connection, PeerInfo, ReadWrite, StreamHandler, TransportError,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use sync_core::manifest::Manifest;
use sync_core::node::Node;
use sync_core::prepare::{prepare_saved, PrepareError, Prepared};
use sync_core::runner::Runner;
use sync_core::session::{Backup, Primary, PrimaryState, SessionLimits, SyncError, SyncReport};
use sync_core::staging::Staging;
use sync_core::wire::{Commit, RestoreReport, WireError};

/// What runs on the backup after each commit.
pub type RestoreHook = Arc<dyn Fn(&Manifest, &Commit) -> RestoreReport + Send + Sync>;

/// The backup's side of a sync session: one `Backup` run on the staging tree per session
/// (the transport guarantees one at a time).
pub struct BackupHandler {
    pub staging: PathBuf,
    pub node: String,
    /// The restore after each commit; `None`: staging only.
    pub restore: Option<RestoreHook>,
}

impl BackupHandler {
    /// Completes the restore of a generation staging committed but live never received (a
    /// crash between the commit and the restore, or a restore refused while this node was
    /// master), before the session: the primary's "up to date" then means restored.
    fn complete_restore(&self, staging: &Staging, hook: &RestoreHook) {
        let Some(m) = staging.unrestored() else {
            return;
        };
        let root = m.root_hash();
        let commit = Commit {
            root,
            ..Commit::default()
        };
        let rep = hook(m, &commit);
        match (&rep.refused, rep.errors.len()) {
            (Some(why), _) => tracing::debug!("committed generation {root} not restored: {why}"),
            (None, 0) => tracing::info!(
                "restored committed generation {root} (left unrestored by an earlier run): {} changed",
                rep.changed.len()
            ),
            (None, n) => tracing::warn!(
                "restore of committed generation {root} (left unrestored by an earlier run): {n} errors"
            ),
        }
    }
}

impl StreamHandler for BackupHandler {
    fn handle(&self, stream: &mut dyn ReadWrite, peer: &PeerInfo) -> Result<(), String> {
        let mut staging = Staging::open(&self.staging).map_err(|e| e.to_string())?;
        if let Some(hook) = &self.restore {
            self.complete_restore(&staging, hook);
        }
        let hook: RestoreHook = match &self.restore {
            Some(h) => h.clone(),
            None => Arc::new(sync_core::local::staging_only),
        };
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
    #[error("not sending: {0} (--force overrides)")]
    Refused(String),
    /// The acting backup's changes could not be pulled: nothing is sent over them.
    #[error("{0}; not sending until the backup's changes are pulled")]
    Pull(Box<crate::pull::PullFailure>),
}

impl NowError {
    /// The status a failed sync records (`last_sync_status`).
    pub fn outcome(&self) -> crate::status::Outcome {
        use crate::status::Outcome;
        match self {
            NowError::Transport(t) => Outcome::of_transport(t),
            NowError::Prepare(_) | NowError::Lock { .. } | NowError::Refused(_) => {
                Outcome::LocalFailed
            }
            NowError::Sync(_) | NowError::NotCommitted(_) => Outcome::TransferFailed,
            NowError::Pull(p) => match p.as_ref() {
                crate::pull::PullFailure::Transport(t) => Outcome::of_transport(t),
                _ => Outcome::TransferFailed,
            },
        }
    }
}

impl From<crate::pull::PullFailure> for NowError {
    fn from(e: crate::pull::PullFailure) -> NowError {
        NowError::Pull(Box::new(e))
    }
}

/// The sync lock, held while it lives (flock: released by the kernel if we die).
pub type Lock = sync_core::fsx::Lock;

pub fn lock(path: &Path) -> Result<Lock, NowError> {
    Lock::acquire(path).map_err(|source| NowError::Lock {
        path: path.to_path_buf(),
        source,
    })
}

pub struct NowOptions {
    pub root: PathBuf,
    pub client: ClientConfig,
    pub runner: Arc<dyn Runner>,
    pub progress: Box<dyn FnMut(u64, u64) + Send>,
    /// Send even where the gate says this node must not (a backup, a primary that is not
    /// master): the admin's explicit `--force`, logged loudly.
    pub force: bool,
}

/// Regenerates `/etc/ha` before a sync (primary or master only; see
/// [`restore_hooks::export`]). A failure is logged: the sync goes on with the records as they
/// are, and the backup keeps its last import.
pub fn export_records(node: &Node) {
    if let Err(e) = restore_hooks::export::export(node.root()) {
        tracing::warn!("exporting the network records to /etc/ha: {e}");
    }
}

/// The lock every sync from this root holds (`now` and the daemon), so two never interleave.
pub fn sync_lock_path(root: &Path) -> PathBuf {
    Node::new(root).sync_lock_path()
}

/// [`lock`] on a blocking thread.
pub async fn lock_async(path: PathBuf) -> Result<Lock, NowError> {
    tokio::task::spawn_blocking(move || lock(&path))
        .await
        .expect("lock task")
}

/// The primary's side of one session over `stream`, for [`transport::run`] or
/// [`transport::Connection::session`].
pub fn primary_session(
    root: PathBuf,
    manifest: Manifest,
    mut progress: Box<dyn FnMut(u64, u64) + Send>,
) -> impl FnOnce(&mut dyn ReadWrite) -> Result<SyncReport, SyncError> + Send + 'static {
    move |stream| {
        let node = Node::new(&root);
        let state = PrimaryState::new(&node.state_dir());
        let node = node.name("primary");
        Primary {
            root: &root,
            manifest: &manifest,
            state: &state,
            node: &node,
            progress: &mut *progress,
        }
        .run(stream)
    }
}

/// [`primary_session`] within `limits` (issue 14): the backup named in its errors, the
/// session over by the deadline whatever the backup does.
pub fn primary_session_within(
    root: PathBuf,
    manifest: Manifest,
    mut progress: Box<dyn FnMut(u64, u64) + Send>,
    limits: SessionLimits,
) -> impl FnOnce(&mut dyn ReadWrite) -> Result<SyncReport, SyncError> + Send + 'static {
    move |stream| {
        let node = Node::new(&root);
        let state = PrimaryState::new(&node.state_dir());
        let node = node.name("primary");
        Primary {
            root: &root,
            manifest: &manifest,
            state: &state,
            node: &node,
            progress: &mut *progress,
        }
        .run_within(stream, &limits)
    }
}

/// How long after the session's deadline the guard gives up on it: the session reports the
/// deadline itself between reads, more precisely; the guard is for a read that waits on a
/// backup that stopped answering, which only dropping the connection ends.
fn guard_grace(deadline: Duration) -> Duration {
    (deadline / 10).min(Duration::from_secs(5))
}

/// One primary session on `conn`, bounded: `deadline` (by default
/// `manifest::session_deadline` of the manifest) and every bound of `sync_core::limits`. An
/// error with [`SyncError::is_deadline`] leaves the connection unusable: drop it.
pub async fn bounded_session(
    conn: &Connection,
    root: PathBuf,
    manifest: Manifest,
    progress: Box<dyn FnMut(u64, u64) + Send>,
    deadline: Option<Duration>,
) -> Result<Result<SyncReport, SyncError>, TransportError> {
    let mut limits = SessionLimits::for_manifest(conn.peer(), &manifest);
    if let Some(d) = deadline {
        limits.deadline = d;
    }
    let d = limits.deadline;
    let session = primary_session_within(root, manifest, progress, limits);
    match tokio::time::timeout(d + guard_grace(d), conn.session(session)).await {
        Ok(r) => r,
        Err(_) => Ok(Err(SyncError::Peer {
            peer: format!("backup {}", conn.peer()),
            source: Box::new(SyncError::Wire(WireError::Deadline(d))),
        })),
    }
}

/// Ok when the backup holds what we sent: it was up to date, or it committed our root.
pub fn check_committed(report: &SyncReport) -> Result<(), NowError> {
    if report.up_to_date {
        return Ok(());
    }
    match &report.commit {
        Some(c) if c.root == report.root => Ok(()),
        Some(c) => Err(NowError::NotCommitted(format!(
            "it committed {} instead of {} (a file changed during the sync; the next one converges)",
            c.root, report.root
        ))),
        None => Err(NowError::NotCommitted("no commit received".into())),
    }
}

/// One sync: lock, restore list + scan, connect, run the protocol. Ok only when the backup
/// committed our manifest (or already held it).
pub async fn now(opts: NowOptions) -> Result<(Prepared, SyncReport), NowError> {
    now_within(opts, None).await
}

/// [`now`] with the session's deadline given (`None`: from the manifest). Its outcome is
/// recorded where the daemon records its own (`last_sync_status` and `last_sync_time` in
/// `/var/state/keepalived`), so `ns-ha-config status` shows a sync made by hand too.
pub async fn now_within(
    opts: NowOptions,
    deadline: Option<Duration>,
) -> Result<(Prepared, SyncReport), NowError> {
    let root = opts.root.clone();
    let r = run_now(opts, deadline).await;
    let outcome = match &r {
        Ok((_, rep)) => Some(crate::status::Outcome::of_restore(rep.restore.as_ref())),
        // Nothing was attempted: the last attempt's record stands.
        Err(NowError::Refused(_) | NowError::Lock { .. }) => None,
        Err(e) => Some(e.outcome()),
    };
    if let Some(o) = outcome {
        if let Err(e) = crate::status::write_uci(&root, o.as_str(), crate::status::epoch_now()) {
            tracing::warn!("cannot record the sync status: {e}");
        }
    }
    r
}

async fn run_now(
    opts: NowOptions,
    deadline: Option<Duration>,
) -> Result<(Prepared, SyncReport), NowError> {
    // The daemon's rule holds for a sync by hand too; a node where HA is not configured at
    // all (a bare two-root sync, the demo) may send.
    let g = crate::gate::gate(&opts.root);
    if let (Some(why), Some(_)) = (&g.reason, g.role) {
        if !opts.force {
            return Err(NowError::Refused(why.clone()));
        }
        tracing::warn!("--force: sending although {why}");
    }
    let _lock = lock_async(sync_lock_path(&opts.root)).await?;
    let node = Node::new(&opts.root);
    let conn = Connection::open(&opts.client).await?;
    // Failback: what the acting backup changed comes here before anything goes there.
    if let Err(e) = crate::pull::pull(&conn, &node, opts.runner.clone()).await {
        conn.disconnect().await;
        return Err(e.into());
    }
    let runner = opts.runner.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        export_records(&node);
        prepare_saved(&node, runner.as_ref())
    })
    .await
    .expect("scan task")?;
    let result = bounded_session(
        &conn,
        opts.root.clone(),
        prepared.manifest.clone(),
        opts.progress,
        deadline,
    )
    .await;
    // Also what ends a session the guard gave up on (its read waits on this connection).
    conn.disconnect().await;
    let report = result??;
    check_committed(&report)?;
    Ok((prepared, report))
}
