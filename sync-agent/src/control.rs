//! The daemon's control socket (`<root>/var/run/ha-sync.sock`, mode 0600): `ha-sync now` and
//! `ha-sync status` talk to the running daemon through it.
//!
//! One request per connection, one line each way: `now` syncs at once (whatever the
//! debounce and backoff timers say) and answers with its result ([`NowReply`]); `status`
//! answers with the daemon's live [`DaemonStatus`]. Both answers are one JSON document.

use crate::status::{DaemonStatus, SyncRecord};
use crate::triggers::RawEvent;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

pub(crate) enum Request {
    Now(oneshot::Sender<NowReply>),
    Inject(RawEvent),
    Stop,
}

/// Talks to a running daemon (the control socket uses it; so can tests).
#[derive(Clone)]
pub struct DaemonHandle {
    tx: mpsc::Sender<Request>,
    status: Arc<Mutex<DaemonStatus>>,
    peer: String,
}

impl DaemonHandle {
    pub(crate) fn new(
        tx: mpsc::Sender<Request>,
        status: Arc<Mutex<DaemonStatus>>,
        peer: String,
    ) -> DaemonHandle {
        DaemonHandle { tx, status, peer }
    }

    /// Syncs now and returns the result.
    pub async fn now(&self) -> NowReply {
        let (tx, rx) = oneshot::channel();
        let stopped = || NowReply {
            ok: false,
            peer: self.peer.clone(),
            sync: None,
            error: Some("the daemon is stopping".into()),
        };
        if self.tx.send(Request::Now(tx)).await.is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }

    /// The live status.
    pub fn status(&self) -> DaemonStatus {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Feeds an event as if notify had sent it (tests: a queue overflow).
    pub async fn inject(&self, ev: RawEvent) -> bool {
        self.tx.send(Request::Inject(ev)).await.is_ok()
    }

    /// Asks the daemon to stop; [`crate::daemon::Daemon::wait`] returns once it has.
    pub async fn stop(&self) {
        let _ = self.tx.send(Request::Stop).await;
    }
}

/// Longest request line accepted.
const MAX_REQUEST: u64 = 256;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to `now`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NowReply {
    pub ok: bool,
    pub peer: String,
    /// The sync's record; none when the daemon did not sync (not the active primary).
    pub sync: Option<SyncRecord>,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no daemon is listening on {}", path.display())]
    NoDaemon { path: PathBuf },
    #[error("another ha-sync daemon is listening on {}", path.display())]
    AlreadyRunning { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad answer from the daemon on {}: {msg}", path.display())]
    Bad { path: PathBuf, msg: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Binds the socket: a leftover socket file of a dead daemon is replaced, a live daemon's is
/// an error. Only root may connect (mode 0600).
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::AlreadyRunning {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    let l = UnixListener::bind(path).map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    Ok(l)
}

/// Answers requests until the daemon stops.
pub async fn serve(listener: UnixListener, handle: DaemonHandle) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: the socket itself is fine, try again shortly.
                tracing::warn!("control socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let h = handle.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, h).await {
                tracing::debug!("control client: {e}");
            }
        });
    }
}

async fn answer(stream: tokio::net::UnixStream, handle: DaemonHandle) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut r = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(r, MAX_REQUEST));
    match tokio::time::timeout(REQUEST_TIMEOUT, r.read_line(&mut line)).await {
        Ok(res) => {
            res?;
        }
        Err(_) => return Ok(()),
    }
    let body = match line.trim() {
        "now" => serde_json::to_string(&handle.now().await),
        "status" => serde_json::to_string(&handle.status()),
        other => serde_json::to_string(&serde_json::json!({
            "error": format!("unknown request {other:?}: expected now or status")
        })),
    }
    .map_err(std::io::Error::other)?;
    w.write_all(body.as_bytes()).await?;
    w.write_all(b"\n").await?;
    w.shutdown().await
}

/// Sends `request` and returns the answer line. [`ControlError::NoDaemon`] when nothing
/// listens (no socket, or a stale one).
pub fn request(path: &Path, request: &str) -> Result<String, ControlError> {
    let mut s = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NoDaemon {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    s.write_all(format!("{request}\n").as_bytes())
        .map_err(io_err(path))?;
    let mut line = String::new();
    // No read timeout: `now` answers when its sync ends, however long a full sync takes.
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(io_err(path))?;
    if line.is_empty() {
        return Err(ControlError::Bad {
            path: path.to_path_buf(),
            msg: "connection closed without an answer".into(),
        });
    }
    Ok(line)
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, line: &str) -> Result<T, ControlError> {
    serde_json::from_str(line).map_err(|e| ControlError::Bad {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// `now` through the daemon.
pub fn now(path: &Path) -> Result<NowReply, ControlError> {
    parse(path, &request(path, "now")?)
}

/// The daemon's live status.
pub fn status(path: &Path) -> Result<DaemonStatus, ControlError> {
    parse(path, &request(path, "status")?)
}
