//! The remote actions: served by the backup's agent ([`register`]) to the cluster key only,
//! called by the primary's actions ([`SshPeer`]).
//!
//! Each action is an SSH `exec` of an exact command string ([`RemoteAction::command`]) on the
//! agent (no shell behind it): the request is one JSON document on stdin, ended by EOF; the
//! answer one JSON document on stdout, or exit status 1 and the error text on stderr.
//!
//! Why a second check on top of the login: `authorized_keys` of the agent may list other keys
//! (an admin's, a monitoring host's) that may sync or look, but only the cluster key, whose
//! public half init-backup-node stored in [`cluster_pub`], may reconfigure or stop the cluster.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, AuthResult};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::ChannelMsg;
use serde_json::Value;
use sync_core::runner::Runner;

use super::{actions, upgrade, ClusterError, Ctx, Peer, RemoteAction};
use crate::config;
use crate::transport::keys::{check_known_host, fingerprint, known_hosts_name, load_public_key};
use crate::transport::{
    HostKeyStatus, PeerInfo, PtySize, ReadWrite, Server, ShellCommand, TransportError,
};

/// Largest request or answer accepted.
const MAX_MESSAGE: u64 = 1 << 20;

/// The cluster key's public half on the backup (written by init-backup-node).
pub fn cluster_pub(root: &Path) -> PathBuf {
    root.join(config::ETC_DIR).join("cluster_key.pub")
}

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
    let req: Value = if buf.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(&buf).map_err(|e| format!("request is not JSON: {e}"))?
    };
    let ctx = Ctx { root, runner };
    let answer = actions::serve(&ctx, action, &req).map_err(|e| e.to_string())?;
    tracing::info!("{} from {} done", action.command(), peer.addr);
    let text = serde_json::to_vec(&answer).map_err(|e| e.to_string())?;
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
        upgrade::COMMAND,
        Arc::new(move |stream: &mut dyn ReadWrite, peer: &PeerInfo| {
            if let Err(e) = is_cluster_key(&upload_root, peer) {
                tracing::warn!("{} from {}: {e}", upgrade::COMMAND, peer.addr);
                return Err(e);
            }
            upgrade::serve_upload(&upload_root, runner.clone(), stream)
        }),
    );
    let shell_root = root.to_path_buf();
    server.with_shell(Arc::new(move |peer: &PeerInfo| {
        is_cluster_key(&shell_root, peer)?;
        Ok(root_shell(&shell_root))
    }))
}

/// root's login shell and home from `<root>/etc/passwd` (`/bin/sh` and `/` when missing).
pub fn root_shell(root: &Path) -> ShellCommand {
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

/// How the client checks the server's host key.
#[derive(Debug, Clone)]
pub enum HostKey {
    /// Only a key pinned in this known_hosts file.
    Pinned(PathBuf),
    /// Accept the first key and report it (bootstrap on port 22: the operator checks the
    /// printed fingerprint, as with a first `ssh`).
    Capture(Arc<std::sync::Mutex<Option<PublicKey>>>),
}

struct ExecHandler {
    check: HostKey,
    host: String,
    port: u16,
}

impl client::Handler for ExecHandler {
    type Error = TransportError;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, TransportError> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Err(TransportError::HostCertificate {
                host: known_hosts_name(&self.host, self.port),
            });
        };
        match &self.check {
            HostKey::Capture(slot) => {
                if let Ok(mut s) = slot.lock() {
                    *s = Some(key.clone());
                }
                Ok(true)
            }
            HostKey::Pinned(path) => {
                let peer = config::peer_addr(&self.host, self.port);
                match check_known_host(path, &self.host, self.port, key)? {
                    HostKeyStatus::Known => Ok(true),
                    HostKeyStatus::Unknown => Err(TransportError::HostKeyUnknown {
                        host: known_hosts_name(&self.host, self.port),
                        peer,
                        path: path.clone(),
                        fingerprint: fingerprint(key),
                    }),
                    HostKeyStatus::Changed { line } => Err(TransportError::HostKeyChanged {
                        host: known_hosts_name(&self.host, self.port),
                        peer,
                        path: path.clone(),
                        line,
                        fingerprint: fingerprint(key),
                    }),
                }
            }
        }
    }
}

/// How to log in.
pub enum Login {
    Key(PathBuf),
    /// Bootstrap only; the password is never logged nor put in an error.
    Password(String),
}

/// What a remote command returned.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Where and how [`exec`] connects.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub login: &'a Login,
    pub check: HostKey,
    /// Bound on the whole call: connect, login, run, answer.
    pub timeout: Duration,
}

type Session = client::Handle<ExecHandler>;

/// Connects to the target and logs in (no time bound: the callers bound the whole call).
async fn connect(target: Target<'_>) -> Result<Session, ClusterError> {
    let Target {
        host,
        port,
        user,
        login,
        check,
        timeout: _,
    } = target;
    let peer = config::peer_addr(host, port);
    let handler = ExecHandler {
        check,
        host: host.to_string(),
        port,
    };
    let config = Arc::new(client::Config {
        client_id: russh::SshId::Standard(
            concat!("SSH-2.0-ha-sync_", env!("CARGO_PKG_VERSION")).into(),
        ),
        nodelay: true,
        ..Default::default()
    });
    let socket = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|source| TransportError::Connect {
            peer: peer.clone(),
            source,
        })?;
    let mut session = client::connect_stream(config, socket, handler).await?;
    match login {
        Login::Key(path) => {
            let key = crate::transport::load_private_key(path)?;
            let fp = fingerprint(key.public_key());
            let hash = if key.algorithm().is_rsa() {
                Some(HashAlg::Sha256)
            } else {
                None
            };
            match session
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
                .map_err(TransportError::from)?
            {
                AuthResult::Success => Ok(session),
                AuthResult::Failure { .. } => {
                    Err(ClusterError::Transport(TransportError::AuthRejected {
                        user: user.to_string(),
                        peer,
                        key: path.clone(),
                        fingerprint: fp,
                    }))
                }
            }
        }
        Login::Password(pw) => match session
            .authenticate_password(user, pw.as_str())
            .await
            .map_err(TransportError::from)?
        {
            AuthResult::Success => Ok(session),
            AuthResult::Failure { .. } => Err(ClusterError::Peer(format!(
                "{peer} refused the password of {user}: check the backup's root password \
                 (and that it allows password logins on SSH)"
            ))),
        },
    }
}

fn timed_out(host: &str, port: u16, timeout: Duration) -> ClusterError {
    ClusterError::Transport(TransportError::ConnectTimeout {
        peer: config::peer_addr(host, port),
        timeout,
    })
}

/// Connects to the target, logs in, runs `command` with `input` on its stdin (then EOF) and
/// collects its output and exit status, all within `target.timeout`.
pub async fn exec(
    target: Target<'_>,
    command: &str,
    input: impl tokio::io::AsyncRead + Unpin,
) -> Result<ExecOutput, ClusterError> {
    let (host, port, timeout) = (target.host, target.port, target.timeout);
    let peer = config::peer_addr(host, port);
    let work = async {
        let session = connect(target).await?;
        let channel = session
            .channel_open_session()
            .await
            .map_err(TransportError::from)?;
        channel
            .exec(true, command)
            .await
            .map_err(TransportError::from)?;
        // Sent while the answer is read: a refused command (Failure) or an early error must
        // not wait for a whole image upload.
        let (mut read, write) = channel.split();
        let send = async {
            write.data(input).await?;
            write.eof().await
        };
        tokio::pin!(send);
        let mut sending = true;
        let mut out = ExecOutput::default();
        loop {
            let msg = tokio::select! {
                r = &mut send, if sending => {
                    sending = false;
                    // The peer may close before reading everything; its answer says why.
                    if let Err(e) = r {
                        tracing::debug!("sending to {peer}: {e}");
                    }
                    continue;
                }
                m = read.wait() => m,
            };
            match msg {
                Some(ChannelMsg::Failure) => {
                    return Err(ClusterError::Peer(format!(
                        "{peer} refused to run {command:?}: is ha-sync's agent (not another \
                         SSH server) listening there, and up to date?"
                    )))
                }
                Some(ChannelMsg::Data { data }) => out.stdout.extend_from_slice(&data),
                Some(ChannelMsg::ExtendedData { data, .. }) => out.stderr.extend_from_slice(&data),
                Some(ChannelMsg::ExitStatus { exit_status }) => out.status = Some(exit_status),
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            }
            if out.stdout.len() as u64 > MAX_MESSAGE || out.stderr.len() as u64 > MAX_MESSAGE {
                return Err(ClusterError::Peer(format!("{peer}: answer too large")));
            }
        }
        let _ = session
            .disconnect(russh::Disconnect::ByApplication, "done", "en")
            .await;
        Ok::<_, ClusterError>(out)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| timed_out(host, port, timeout))?
}

/// The local ends of an interactive [`shell`].
pub struct ShellIo<I, O, E> {
    pub stdin: I,
    pub stdout: O,
    pub stderr: E,
    /// The terminal's name and size, when there is one (then the remote shell gets a
    /// terminal too, and stderr arrives mixed into stdout as on any terminal).
    pub terminal: Option<(String, PtySize)>,
    /// New sizes of the local terminal.
    pub resized: tokio::sync::mpsc::Receiver<PtySize>,
}

/// Opens an interactive shell on the target (its agent decides which, and for which key)
/// and connects it to `io` until it exits; returns its exit status. `target.timeout` bounds
/// only the connection and login.
pub async fn shell<I, O, E>(target: Target<'_>, io: ShellIo<I, O, E>) -> Result<u32, ClusterError>
where
    I: tokio::io::AsyncRead + Unpin,
    O: tokio::io::AsyncWrite + Unpin,
    E: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, port, timeout) = (target.host, target.port, target.timeout);
    let peer = config::peer_addr(host, port);
    let ShellIo {
        mut stdin,
        mut stdout,
        mut stderr,
        terminal,
        mut resized,
    } = io;
    let session = tokio::time::timeout(timeout, connect(target))
        .await
        .map_err(|_| timed_out(host, port, timeout))??;
    let mut channel = session
        .channel_open_session()
        .await
        .map_err(TransportError::from)?;
    if let Some((term, size)) = &terminal {
        channel
            .request_pty(
                true,
                term,
                u32::from(size.cols),
                u32::from(size.rows),
                0,
                0,
                &[],
            )
            .await
            .map_err(TransportError::from)?;
    }
    channel
        .request_shell(true)
        .await
        .map_err(TransportError::from)?;
    let refused = || {
        ClusterError::Peer(format!(
            "{peer} refused a shell: is ha-sync's agent (not another SSH server) listening \
             there, and up to date?"
        ))
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut stdin_open = true;
    let mut status = None;
    let io_err = |e: std::io::Error| ClusterError::io("terminal")(e);
    loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => match n.map_err(io_err)? {
                0 => {
                    stdin_open = false;
                    channel.eof().await.map_err(TransportError::from)?;
                }
                n => channel
                    .data(&buf[..n])
                    .await
                    .map_err(TransportError::from)?,
            },
            Some(size) = resized.recv() => {
                let _ = channel
                    .window_change(u32::from(size.cols), u32::from(size.rows), 0, 0)
                    .await;
            }
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Failure) => return Err(refused()),
                Some(ChannelMsg::Data { data }) => {
                    stdout.write_all(&data).await.map_err(io_err)?;
                    stdout.flush().await.map_err(io_err)?;
                }
                Some(ChannelMsg::ExtendedData { data, .. }) => {
                    stderr.write_all(&data).await.map_err(io_err)?;
                    stderr.flush().await.map_err(io_err)?;
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                Some(ChannelMsg::ExitSignal { .. }) => status = status.or(Some(255)),
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            },
        }
    }
    let _ = session
        .disconnect(russh::Disconnect::ByApplication, "done", "en")
        .await;
    status.ok_or_else(|| {
        ClusterError::Peer(format!(
            "connection to {peer} ended before the shell exited"
        ))
    })
}

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
        let pc = config::peer(root)?;
        let Some(host) = pc.address else {
            return Ok(None);
        };
        let known = config::known_hosts(root);
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
            check: HostKey::Pinned(self.known_hosts.clone()),
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
        self.rt
            .block_on(shell(self.target(&login, self.timeout), io))
    }
}

/// Turns a remote command's output into its JSON answer or the error it reported.
fn answer(command: &str, out: ExecOutput) -> Result<Value, ClusterError> {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match out.status {
        Some(0) => serde_json::from_slice(&out.stdout)
            .map_err(|e| ClusterError::Peer(format!("answer is not JSON: {e}"))),
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
    fn call(&self, action: RemoteAction, request: &Value) -> Result<Value, ClusterError> {
        let input = serde_json::to_vec(request)
            .map_err(|e| ClusterError::Invalid(format!("encoding the request: {e}")))?;
        let login = Login::Key(self.key.clone());
        let target = self.target(&login, self.timeout);
        let out = self
            .rt
            .block_on(exec(target, action.command(), input.as_slice()))?;
        answer(action.command(), out)
    }

    fn send_image(
        &self,
        header: &upgrade::ImageHeader,
        image: &Path,
    ) -> Result<Value, ClusterError> {
        use tokio::io::AsyncReadExt;
        let mut line = serde_json::to_vec(header)
            .map_err(|e| ClusterError::Invalid(format!("encoding the header: {e}")))?;
        line.push(b'\n');
        let login = Login::Key(self.key.clone());
        let target = self.target(&login, UPLOAD_TIMEOUT);
        let out = self.rt.block_on(async {
            let file = tokio::fs::File::open(image)
                .await
                .map_err(ClusterError::io(image))?;
            // Exactly the size announced: a file growing meanwhile must not overrun it.
            let input = AsyncReadExt::chain(line.as_slice(), file.take(header.size));
            exec(target, upgrade::COMMAND, input).await
        })?;
        answer(upgrade::COMMAND, out)
    }
}
