//! The remote actions: served by the backup's agent ([`register`]) to the cluster key only,
//! called by the primary's actions ([`SshPeer`], over sync-agent's SSH client).
//!
//! Each action is an SSH `exec` of an exact command string ([`RemoteAction::command`]) on the
//! agent (no shell behind it); what goes over it is in [`crate::request`].
//!
//! Why a second check on top of the login: `authorized_keys` of the agent may list other keys
//! (an admin's, a monitoring host's) that may sync or look, but only the cluster key, whose
//! public half init-backup-node stored in [`cluster_pub`], may reconfigure or stop the cluster.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sync_agent::transport::client::{self, Algorithms, ExecOutput, HostCheck, Login, Target};
use sync_agent::transport::keys::{fingerprint, known_hosts_name, load_public_key};
use sync_agent::transport::{PeerInfo, ReadWrite, Server, ShellCommand, ShellIo};
use sync_core::runner::Runner;

use crate::request::{
    ClusterAnswer, ClusterRequest, ImageHeader, Peer, RemoteAction, UploadAnswer, UPLOAD_COMMAND,
};
use crate::{actions, cluster_pub, upgrade, ClusterError, Ctx};

/// Largest request or answer accepted.
const MAX_MESSAGE: u64 = 1 << 20;

/// Whether `peer` logged in with the cluster key.
fn is_cluster_key(root: &Path, peer: &PeerInfo) -> Result<(), String> {
    let path = cluster_pub(root);
    let key = load_public_key(&path).map_err(|e| {
        format!(
            "cluster actions are refused: no cluster key on this node ({e}); run \
             `ns-ha-config init-backup-node` on the primary"
        )
    })?;
    if fingerprint(&key) == peer.key_fingerprint {
        Ok(())
    } else {
        Err(format!(
            "cluster actions are refused for key {}: only the cluster key ({}) may run them",
            peer.key_fingerprint,
            fingerprint(&key)
        ))
    }
}

fn handle(
    root: &Path,
    runner: &dyn Runner,
    action: RemoteAction,
    stream: &mut dyn ReadWrite,
    peer: &PeerInfo,
) -> Result<(), String> {
    if let Err(e) = is_cluster_key(root, peer) {
        tracing::warn!("{} from {}: {e}", action.command(), peer.addr);
        return Err(e);
    }
    let mut buf = Vec::new();
    stream
        .take(MAX_MESSAGE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("reading the request: {e}"))?;
    if buf.len() as u64 > MAX_MESSAGE {
        return Err(format!("request larger than {MAX_MESSAGE} bytes"));
    }
    let request = ClusterRequest::from_wire(action, &buf).map_err(|e| e.to_string())?;
    let ctx = Ctx { root, runner };
    let answer = actions::serve(&ctx, request).map_err(|e| e.to_string())?;
    tracing::info!("{} from {} done", action.command(), peer.addr);
    let text = answer.to_wire().map_err(|e| e.to_string())?;
    stream
        .write_all(&text)
        .and_then(|()| stream.flush())
        .map_err(|e| format!("sending the answer: {e}"))
}

/// Adds the cluster actions, the image upload and the shell to the agent's server.
pub fn register(mut server: Server, root: &Path, runner: Arc<dyn Runner>) -> Server {
    for action in RemoteAction::ALL {
        let root = root.to_path_buf();
        let runner = runner.clone();
        server = server.with_action(
            action.command(),
            Arc::new(move |stream: &mut dyn ReadWrite, peer: &PeerInfo| {
                handle(&root, runner.as_ref(), action, stream, peer)
            }),
        );
    }
    let upload_root = root.to_path_buf();
    server = server.with_action(
        UPLOAD_COMMAND,
        Arc::new(move |stream: &mut dyn ReadWrite, peer: &PeerInfo| {
            if let Err(e) = is_cluster_key(&upload_root, peer) {
                tracing::warn!("{} from {}: {e}", UPLOAD_COMMAND, peer.addr);
                return Err(e);
            }
            upgrade::serve_upload(&upload_root, runner.clone(), stream)
        }),
    );
    // Migration from ns-ha: the primary, logged in with the incumbent's key, hands over the
    // cluster key (any authorized key may: in normal operation that is the cluster key).
    let adopt_root = root.to_path_buf();
    server = server.with_action(
        crate::migrate::ADOPT_COMMAND,
        Arc::new(move |stream: &mut dyn ReadWrite, peer: &PeerInfo| {
            let mut buf = Vec::new();
            stream
                .take(MAX_MESSAGE + 1)
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading the key: {e}"))?;
            let key = String::from_utf8_lossy(&buf);
            crate::migrate::adopt(&adopt_root, &key).map_err(|e| e.to_string())?;
            tracing::info!(
                "migration: cluster key adopted from {} ({})",
                peer.addr,
                peer.key_fingerprint
            );
            Ok(())
        }),
    );
    let shell_root = root.to_path_buf();
    server.with_shell(Arc::new(move |peer: &PeerInfo| {
        is_cluster_key(&shell_root, peer)?;
        Ok(root_shell(&shell_root))
    }))
}

/// root's login shell and home from `<root>/etc/passwd` (`/bin/sh` and `/` when missing).
fn root_shell(root: &Path) -> ShellCommand {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let fields: Vec<&str> = passwd
        .lines()
        .find(|l| l.starts_with("root:"))
        .map(|l| l.split(':').collect())
        .unwrap_or_default();
    let pick = |i: usize, default: &str| {
        fields
            .get(i)
            .filter(|v| v.starts_with('/'))
            .map_or(PathBuf::from(default), PathBuf::from)
    };
    // The shell and home are the running system's, whatever root the agent serves.
    let program = Some(pick(6, "/bin/sh"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/bin/sh"));
    let home = Some(pick(5, "/"))
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/"));
    let env = vec![
        ("HOME".to_string(), home.display().to_string()),
        ("USER".to_string(), "root".to_string()),
        ("LOGNAME".to_string(), "root".to_string()),
        ("SHELL".to_string(), program.display().to_string()),
        (
            "PATH".to_string(),
            "/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
    ];
    ShellCommand {
        program,
        args: vec!["-l".to_string()],
        env,
        cwd: home,
    }
}

// ---------------------------------------------------------------------------------------------
// Client

/// The backup as the primary reaches it: the agent's port, the cluster key, the pinned host
/// key. Blocks on its own runtime (call it outside any tokio runtime).
pub struct SshPeer {
    pub host: String,
    pub port: u16,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub timeout: Duration,
    rt: tokio::runtime::Runtime,
}

impl SshPeer {
    pub fn new(
        host: &str,
        port: u16,
        key: PathBuf,
        known_hosts: PathBuf,
    ) -> Result<SshPeer, ClusterError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClusterError::io("tokio runtime"))?;
        Ok(SshPeer {
            host: host.to_string(),
            port,
            key,
            known_hosts,
            timeout: Duration::from_secs(60),
            rt,
        })
    }

    /// From this node's UCI (`ha_peer`) and ha-sync's key files; `None` while the backup is
    /// not initialized (no address, or its host key not pinned yet).
    pub fn from_config(root: &Path) -> Result<Option<SshPeer>, ClusterError> {
        let pc = sync_core::node::Node::new(root).peer()?;
        let Some(host) = pc.address else {
            return Ok(None);
        };
        let known = sync_core::node::Node::new(root).keys().known_hosts;
        let pinned = std::fs::read_to_string(&known)
            .is_ok_and(|t| t.contains(&known_hosts_name(&host, pc.port)));
        if !pinned {
            return Ok(None);
        }
        SshPeer::new(&host, pc.port, pc.key, known).map(Some)
    }
}

impl SshPeer {
    fn target<'a>(&'a self, login: &'a Login, timeout: Duration) -> Target<'a> {
        Target {
            host: &self.host,
            port: self.port,
            user: "root",
            login,
            check: HostCheck::Pinned(self.known_hosts.clone()),
            algorithms: Algorithms::Agent,
            timeout,
        }
    }

    /// The runtime the calls block on (to spawn helpers, e.g. a signal watcher, beside them).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// Runs an interactive shell on the backup (ssh-remote); blocks until it exits.
    pub fn shell<I, O, E>(&self, io: ShellIo<I, O, E>) -> Result<u32, ClusterError>
    where
        I: tokio::io::AsyncRead + Unpin,
        O: tokio::io::AsyncWrite + Unpin,
        E: tokio::io::AsyncWrite + Unpin,
    {
        let login = Login::Key(self.key.clone());
        Ok(self
            .rt
            .block_on(client::shell(self.target(&login, self.timeout), io))?)
    }
}

/// A remote command's answer (its stdout), or the error it reported.
fn answer(command: &str, out: ExecOutput) -> Result<Vec<u8>, ClusterError> {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match out.status {
        Some(0) => Ok(out.stdout),
        Some(s) => Err(ClusterError::Peer(if stderr.is_empty() {
            format!("{command} failed with exit status {s}")
        } else {
            stderr
        })),
        None => Err(ClusterError::Peer(format!(
            "connection ended before {command} reported a result {stderr}"
        ))),
    }
}

/// Bound on an image upload (150 MB at 1 MB/s fits).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

impl Peer for SshPeer {
    fn call(&self, request: &ClusterRequest) -> Result<ClusterAnswer, ClusterError> {
        let action = request.action();
        let input = request.to_wire()?;
        let login = Login::Key(self.key.clone());
        let target = self.target(&login, self.timeout);
        let out = self.rt.block_on(client::exec(
            target,
            action.command(),
            input.as_slice(),
            MAX_MESSAGE as usize,
        ))?;
        let body = answer(action.command(), out)?;
        ClusterAnswer::from_wire(action, &body).map_err(|e| ClusterError::Peer(e.to_string()))
    }

    fn send_image(&self, header: &ImageHeader, image: &Path) -> Result<UploadAnswer, ClusterError> {
        use tokio::io::AsyncReadExt;
        let line = header.to_line()?;
        let login = Login::Key(self.key.clone());
        let target = self.target(&login, UPLOAD_TIMEOUT);
        let out = self.rt.block_on(async {
            let file = tokio::fs::File::open(image)
                .await
                .map_err(ClusterError::io(image))?;
            // Exactly the size announced: a file growing meanwhile must not overrun it.
            let input = AsyncReadExt::chain(line.as_slice(), file.take(header.size));
            Ok::<_, ClusterError>(
                client::exec(target, UPLOAD_COMMAND, input, MAX_MESSAGE as usize).await?,
            )
        })?;
        let body = answer(UPLOAD_COMMAND, out)?;
        UploadAnswer::from_wire(&body).map_err(|e| ClusterError::Peer(e.to_string()))
    }
}
