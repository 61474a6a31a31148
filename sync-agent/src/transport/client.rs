//! The one SSH client of ha-sync: connect, check the host key ([`HostCheck`]), log in
//! ([`Login`]), then run the `ha-sync` subsystem and hand its stream to synchronous code
//! ([`Connection::session`]), run a command ([`Connection::exec`]) or an interactive shell
//! ([`Connection::shell`]).
//!
//! The sync uses it two ways: [`run`] connects, runs one session and disconnects (`ha-sync
//! now`); [`Connection`] stays connected and opens one channel per session (the daemon), which
//! saves the TCP and SSH handshakes, key exchange and login on every sync after the first.
//! The cluster companion (crate `ha-cluster`) calls [`exec`] and [`shell`] for its remote
//! actions on the agent (pinned host key, cluster key) and for its first contact with the
//! backup on port 22 (host key captured for the operator to check, root's password).

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, AuthResult, Msg};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelId, ChannelMsg, Disconnect, Preferred};
use tokio_util::sync::CancellationToken;

use super::bridge;
use super::keys::{
    check_known_host, fingerprint, known_hosts_name, load_private_key, HostKeyStatus,
};
use super::shell::PtySize;
use super::{
    ReadWrite, Result, TransportError, CHANNEL_WINDOW, DEFAULT_PORT, MAX_PACKET, SUBSYSTEM,
};
use sync_core::node::peer_addr;

/// How long to wait, once the local side is done, for the remote's exit status.
const RESULT_WAIT: Duration = Duration::from_secs(60);

/// How the primary reaches the backup.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` (`[v6addr]:port` for IPv6); the port defaults to 65022.
    pub peer: String,
    /// Private key to log in with (ed25519 or RSA, OpenSSH format).
    pub key: PathBuf,
    /// Pinned host keys (OpenSSH known_hosts format).
    pub known_hosts: PathBuf,
    /// Bound on TCP connect + key exchange + login + opening the session. Default 10 s.
    pub connect_timeout: Duration,
    /// Default "root".
    pub user: String,
}

impl ClientConfig {
    pub fn new(peer: impl Into<String>, key: PathBuf, known_hosts: PathBuf) -> Self {
        ClientConfig {
            peer: peer.into(),
            key,
            known_hosts,
            connect_timeout: Duration::from_secs(10),
            user: "root".to_string(),
        }
    }
}

/// Splits `host:port`, `[v6]:port`, `host` or a bare IPv6 address.
pub fn parse_peer(peer: &str) -> Result<(String, u16)> {
    let bad = |reason: &str| TransportError::InvalidPeer {
        peer: peer.to_string(),
        reason: reason.to_string(),
    };
    let peer = peer.trim();
    if peer.is_empty() {
        return Err(bad("empty"));
    }
    let parse_port = |p: &str| p.parse::<u16>().map_err(|_| bad("bad port"));
    if let Some(rest) = peer.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing ]"))?;
        let port = match after {
            "" => DEFAULT_PORT,
            p => parse_port(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("expected :port after ]"))?,
            )?,
        };
        return Ok((host.to_string(), port));
    }
    match peer.matches(':').count() {
        0 => Ok((peer.to_string(), DEFAULT_PORT)),
        1 => {
            let (host, port) = peer.split_once(':').ok_or_else(|| bad("bad address"))?;
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            Ok((host.to_string(), parse_port(port)?))
        }
        _ => Ok((peer.to_string(), DEFAULT_PORT)), // bare IPv6 address
    }
}

/// How the client checks the server's host key.
#[derive(Debug, Clone)]
pub enum HostCheck {
    /// Accept only a key pinned in this known_hosts file.
    Pinned(PathBuf),
    /// Accept the key the server presents and record it: first contact, where the operator
    /// compares the printed fingerprint (as with a first `ssh`), and [`fetch_host_key`].
    Capture(Arc<Mutex<Option<PublicKey>>>),
}

/// How to log in.
pub enum Login {
    /// A private key (ed25519 or RSA, OpenSSH format).
    Key(PathBuf),
    /// First contact with the backup only; the password is never logged nor put in an error.
    Password(String),
}

/// Which algorithms the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithms {
    /// ha-sync's agent: the short lists of [`preferred`], large windows, keepalives.
    Agent,
    /// Any SSH server (first contact on port 22, OpenSSH or dropbear): russh's defaults.
    Standard,
}

/// Where and how to connect.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub login: &'a Login,
    pub check: HostCheck,
    pub algorithms: Algorithms,
    /// Bound on connecting and logging in; for [`exec`], on the whole call.
    pub timeout: Duration,
}

/// Cancellation tokens of the open channels, by id.
type ChannelTokens = Arc<Mutex<HashMap<ChannelId, CancellationToken>>>;

struct Handler {
    check: HostCheck,
    host: String,
    port: u16,
    /// The peer as messages name it.
    peer: String,
    /// Cancelled when the connection ends (russh drops the handler with it).
    gone: CancellationToken,
    /// Each channel's token, cancelled when the server closes that channel, so a write
    /// waiting for window space on it gives up; the other channels go on.
    channels: ChannelTokens,
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.gone.cancel();
    }
}

impl client::Handler for Handler {
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
            HostCheck::Capture(slot) => {
                if let Ok(mut s) = slot.lock() {
                    *s = Some(key.clone());
                }
                Ok(true)
            }
            HostCheck::Pinned(known_hosts) => {
                let host = known_hosts_name(&self.host, self.port);
                match check_known_host(known_hosts, &self.host, self.port, key)? {
                    HostKeyStatus::Known => Ok(true),
                    HostKeyStatus::Unknown => Err(TransportError::HostKeyUnknown {
                        host,
                        peer: self.peer.clone(),
                        path: known_hosts.clone(),
                        fingerprint: fingerprint(key),
                    }),
                    HostKeyStatus::Changed { line } => Err(TransportError::HostKeyChanged {
                        host,
                        peer: self.peer.clone(),
                        path: known_hosts.clone(),
                        line,
                        fingerprint: fingerprint(key),
                    }),
                }
            }
        }
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut client::Session,
    ) -> Result<(), TransportError> {
        let token = match self.channels.lock() {
            Ok(mut c) => c.remove(&channel),
            Err(p) => p.into_inner().remove(&channel),
        };
        if let Some(t) = token {
            t.cancel();
        }
        Ok(())
    }
}

fn ssh_config(algorithms: Algorithms) -> client::Config {
    if algorithms == Algorithms::Standard {
        return client::Config {
            client_id: russh::SshId::Standard(
                concat!("SSH-2.0-ha-sync_", env!("CARGO_PKG_VERSION")).into(),
            ),
            nodelay: true,
            ..Default::default()
        };
    }
    client::Config {
        client_id: russh::SshId::Standard(
            concat!("SSH-2.0-ha-sync_", env!("CARGO_PKG_VERSION")).into(),
        ),
        window_size: CHANNEL_WINDOW,
        maximum_packet_size: MAX_PACKET,
        // A live but busy backup answers keepalives from its event loop; a dead one is
        // noticed after about a minute.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        inactivity_timeout: None,
        nodelay: true,
        preferred: preferred(),
        ..Default::default()
    }
}

/// Short algorithm lists: every name we offer costs bytes in each KEXINIT, and a no-change
/// sync is mostly handshake. curve25519 rather than the ML-KEM hybrid russh prefers: the
/// hybrid's key shares add ~2.3 KB to every connection, a third of a whole no-change sync
/// (issue 3 budgets 7 KB for it), on a point-to-point HA link. AES-GCM first where the CPU
/// has AES instructions (about twice chacha20's speed there).
fn preferred() -> Preferred {
    let aes = {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("pclmulqdq")
        }
        #[cfg(target_arch = "aarch64")]
        {
            std::arch::is_aarch64_feature_detected!("aes")
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    };
    let mut p = Preferred {
        kex: std::borrow::Cow::Owned(vec![
            russh::kex::CURVE25519,
            russh::kex::EXTENSION_SUPPORT_AS_CLIENT,
            russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
        ]),
        key: std::borrow::Cow::Owned(vec![russh::keys::Algorithm::Ed25519]),
        compression: std::borrow::Cow::Owned(vec![russh::compression::NONE]),
        mac: std::borrow::Cow::Owned(vec![russh::mac::HMAC_SHA256_ETM]),
        cipher: std::borrow::Cow::Owned(vec![
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_256_GCM,
        ]),
        ..Preferred::default()
    };
    if aes {
        let mut ciphers = vec![russh::cipher::AES_256_GCM];
        ciphers.extend(
            p.cipher
                .iter()
                .copied()
                .filter(|c| *c != russh::cipher::AES_256_GCM),
        );
        p.cipher = ciphers.into();
    }
    p
}

/// TCP connection and SSH handshake (the handler checks the host key); no login.
async fn handshake(
    host: &str,
    port: u16,
    algorithms: Algorithms,
    handler: Handler,
) -> Result<client::Handle<Handler>> {
    let config = Arc::new(ssh_config(algorithms));
    let peer = handler.peer.clone();
    let socket = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|source| TransportError::Connect { peer, source })?;
    let _ = socket.set_nodelay(true);
    client::connect_stream(config, socket, handler).await
}

/// Logs in; `key` is the loaded key of a [`Login::Key`].
async fn authenticate(
    session: &mut client::Handle<Handler>,
    user: &str,
    peer: &str,
    login: &Login,
    key: Option<PrivateKey>,
) -> Result<()> {
    let (result, rejected) = match (login, key) {
        (Login::Key(path), Some(key)) => {
            let fp = fingerprint(key.public_key());
            let key = Arc::new(key);
            let hash = if key.algorithm().is_rsa() {
                // russh signs RSA with the hash we name; the server lists what it accepts.
                session
                    .best_supported_rsa_hash()
                    .await?
                    .unwrap_or(Some(HashAlg::Sha256))
            } else {
                None
            };
            let result = session
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash))
                .await?;
            let rejected = TransportError::AuthRejected {
                user: user.to_string(),
                peer: peer.to_string(),
                key: path.clone(),
                fingerprint: fp,
            };
            (result, rejected)
        }
        (Login::Password(pw), _) => {
            let result = session.authenticate_password(user, pw.as_str()).await?;
            let rejected = TransportError::PasswordRejected {
                user: user.to_string(),
                peer: peer.to_string(),
            };
            (result, rejected)
        }
        (Login::Key(path), None) => {
            return Err(TransportError::Internal(format!(
                "key {} not loaded",
                path.display()
            )))
        }
    };
    match result {
        AuthResult::Success => Ok(()),
        AuthResult::Failure { .. } => Err(rejected),
    }
}

/// Opens a session channel and starts the subsystem; returns messages that arrived early.
async fn open_subsystem(
    session: &client::Handle<Handler>,
    peer: &str,
) -> Result<(Channel<Msg>, Vec<ChannelMsg>)> {
    let mut channel = session.channel_open_session().await?;
    channel.request_subsystem(true, SUBSYSTEM).await?;
    let mut early = Vec::new();
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => return Ok((channel, early)),
            Some(ChannelMsg::Failure) => {
                return Err(TransportError::SubsystemRefused {
                    peer: peer.to_string(),
                    subsystem: SUBSYSTEM.to_string(),
                })
            }
            Some(ChannelMsg::Close) | None => {
                return Err(TransportError::ConnectionLost {
                    peer: peer.to_string(),
                    detail: " (channel closed while starting the session)".into(),
                })
            }
            Some(m @ (ChannelMsg::Data { .. } | ChannelMsg::ExtendedData { .. })) => early.push(m),
            Some(_) => {}
        }
    }
}

/// Connects to `cfg.peer`, runs `f` on the `ha-sync` subsystem's stream (on a blocking
/// thread), sends EOF when `f` returns and collects the remote's exit status. A nonzero
/// status (busy, handler error) gives [`TransportError::Remote`] with the remote's stderr
/// text, whatever `f` returned.
pub async fn run<F, T>(cfg: &ClientConfig, f: F) -> Result<T, TransportError>
where
    F: FnOnce(&mut dyn ReadWrite) -> T + Send + 'static,
    T: Send + 'static,
{
    let conn = Connection::open(cfg).await?;
    let result = conn.session(f).await;
    conn.disconnect().await;
    result
}

/// A logged-in connection to the backup, kept open between sessions: each
/// [`session`](Connection::session) is a new channel on it. russh sends a keepalive every
/// 15 s and drops the connection after 3 unanswered ones; [`closed`](Connection::closed)
/// resolves then, or as soon as the peer closes the TCP connection.
pub struct Connection {
    handle: client::Handle<Handler>,
    peer: String,
    /// Bound on opening a channel and starting the subsystem on it.
    open_timeout: Duration,
    gone: CancellationToken,
    channels: ChannelTokens,
}

impl Connection {
    /// Connects, checks the pinned host key and logs in, all within `cfg.connect_timeout`.
    pub async fn open(cfg: &ClientConfig) -> Result<Connection> {
        let (host, port) = parse_peer(&cfg.peer)?;
        let login = Login::Key(cfg.key.clone());
        let target = Target {
            host: &host,
            port,
            user: &cfg.user,
            login: &login,
            check: HostCheck::Pinned(cfg.known_hosts.clone()),
            algorithms: Algorithms::Agent,
            timeout: cfg.connect_timeout,
        };
        Connection::establish(target, cfg.peer.clone()).await
    }

    /// Connects to `target`, checks its host key and logs in, all within `target.timeout`.
    pub async fn connect(target: Target<'_>) -> Result<Connection> {
        let peer = peer_addr(target.host, target.port);
        Connection::establish(target, peer).await
    }

    /// `peer`: how messages name the server.
    async fn establish(target: Target<'_>, peer: String) -> Result<Connection> {
        let Target {
            host,
            port,
            user,
            login,
            check,
            algorithms,
            timeout,
        } = target;
        let key = match login {
            Login::Key(path) => {
                let path = path.clone();
                Some(
                    tokio::task::spawn_blocking(move || load_private_key(&path))
                        .await
                        .map_err(|e| TransportError::Internal(e.to_string()))??,
                )
            }
            Login::Password(_) => None,
        };
        let gone = CancellationToken::new();
        let channels = ChannelTokens::default();
        let handler = Handler {
            check,
            host: host.to_string(),
            port,
            peer: peer.clone(),
            gone: gone.clone(),
            channels: channels.clone(),
        };
        let setup = async {
            let mut session = handshake(host, port, algorithms, handler).await?;
            authenticate(&mut session, user, &peer, login, key).await?;
            Ok::<_, TransportError>(session)
        };
        let handle = tokio::time::timeout(timeout, setup).await.map_err(|_| {
            TransportError::ConnectTimeout {
                peer: peer.clone(),
                timeout,
            }
        })??;
        Ok(Connection {
            handle,
            peer,
            open_timeout: timeout,
            gone,
            channels,
        })
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Whether the connection is gone (closed by either side, or dead by keepalive).
    pub fn is_closed(&self) -> bool {
        self.gone.is_cancelled() || self.handle.is_closed()
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&self) {
        self.gone.cancelled().await
    }

    /// Runs `f` on a new `ha-sync` channel, as [`run`] does on a new connection.
    pub async fn session<F, T>(&self, f: F) -> Result<T, TransportError>
    where
        F: FnOnce(&mut dyn ReadWrite) -> T + Send + 'static,
        T: Send + 'static,
    {
        let (channel, early) =
            tokio::time::timeout(self.open_timeout, open_subsystem(&self.handle, &self.peer))
                .await
                .map_err(|_| TransportError::ConnectTimeout {
                    peer: self.peer.clone(),
                    timeout: self.open_timeout,
                })??;
        let id = channel.id();
        let closed = self.gone.child_token();
        self.with_channels(|c| c.insert(id, closed.clone()));
        let result = run_channel(channel, early, closed, &self.peer, f).await;
        self.with_channels(|c| c.remove(&id));
        result
    }

    fn with_channels<R>(
        &self,
        f: impl FnOnce(&mut HashMap<ChannelId, CancellationToken>) -> R,
    ) -> R {
        match self.channels.lock() {
            Ok(mut c) => f(&mut c),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Says goodbye to the server (best effort) and drops the connection.
    pub async fn disconnect(self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "session done", "en")
            .await;
    }
}

/// Runs `f` on an open `ha-sync` channel and turns the remote's report into the result.
async fn run_channel<F, T>(
    channel: Channel<Msg>,
    early: Vec<ChannelMsg>,
    closed: CancellationToken,
    peer: &str,
    f: F,
) -> Result<T, TransportError>
where
    F: FnOnce(&mut dyn ReadWrite) -> T + Send + 'static,
    T: Send + 'static,
{
    let (mut stream, write, shared, pump) = bridge::start(channel, early, closed.clone());
    let value = tokio::task::spawn_blocking(move || {
        let value = f(&mut stream);
        let _ = stream.flush();
        value
    })
    .await;
    bridge::send_or_closed(&closed, write.eof()).await;
    let finished = tokio::time::timeout(RESULT_WAIT, pump).await.is_ok();
    let report = shared.report();
    if !finished {
        // russh answers the server's close by itself; a channel the server never closed is
        // closed from here so it does not linger on a connection that stays open.
        bridge::send_or_closed(&closed, write.close()).await;
    }

    let value = value.map_err(|e| TransportError::Internal(format!("sync code failed: {e}")))?;
    let stderr = report.stderr_text();
    match (report.exit_status, &report.exit_signal) {
        (Some(0), _) => {
            if !stderr.is_empty() {
                tracing::warn!("{peer}: {stderr}");
            }
            Ok(value)
        }
        (Some(status), _) => Err(TransportError::Remote {
            status,
            message: if stderr.is_empty() {
                format!("remote session failed with exit status {status}")
            } else {
                stderr
            },
        }),
        (None, Some(signal)) => Err(TransportError::Remote {
            status: 255,
            message: format!("remote session killed by signal {signal} {stderr}")
                .trim()
                .to_string(),
        }),
        (None, None) => Err(TransportError::ConnectionLost {
            peer: peer.to_string(),
            detail: match (finished, stderr.is_empty()) {
                (false, _) => format!(" (no answer within {RESULT_WAIT:?})"),
                (true, true) => String::new(),
                (true, false) => format!(": {stderr}"),
            },
        }),
    }
}

/// Connects to `peer` only to read its host key (for pinning after out-of-band
/// verification); never logs in.
pub async fn fetch_host_key(peer: &str) -> Result<PublicKey> {
    let (host, port) = parse_peer(peer)?;
    let slot = Arc::new(Mutex::new(None));
    let handler = Handler {
        check: HostCheck::Capture(slot.clone()),
        host: host.clone(),
        port,
        peer: peer.to_string(),
        gone: CancellationToken::new(),
        channels: ChannelTokens::default(),
    };
    let timeout = ClientConfig::new(peer, PathBuf::new(), PathBuf::new()).connect_timeout;
    let result = tokio::time::timeout(timeout, handshake(&host, port, Algorithms::Agent, handler))
        .await
        .map_err(|_| TransportError::ConnectTimeout {
            peer: peer.to_string(),
            timeout,
        })?;
    if let Ok(session) = &result {
        let _ = session
            .disconnect(Disconnect::ByApplication, "host key read", "en")
            .await;
    }
    let captured = slot.lock().ok().and_then(|mut s| s.take());
    match (captured, result) {
        (Some(key), _) => Ok(key),
        (None, Err(e)) => Err(e),
        (None, Ok(_)) => Err(TransportError::Internal(format!("{peer} sent no host key"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Commands and shells

/// What a remote command returned.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
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

impl Connection {
    /// Runs `command` with `input` on its stdin (then EOF) on a new channel and collects its
    /// output (at most `max_output` bytes of each stream) and exit status.
    pub async fn exec(
        &self,
        command: &str,
        input: impl tokio::io::AsyncRead + Unpin,
        max_output: usize,
    ) -> Result<ExecOutput> {
        let peer = &self.peer;
        let channel = self.handle.channel_open_session().await?;
        channel.exec(true, command).await?;
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
                    // Gives the channel's slot back on the server at once.
                    let _ = write.close().await;
                    return Err(TransportError::ExecRefused {
                        peer: peer.clone(),
                        command: command.to_string(),
                    });
                }
                Some(ChannelMsg::Data { data }) => out.stdout.extend_from_slice(&data),
                Some(ChannelMsg::ExtendedData { data, .. }) => out.stderr.extend_from_slice(&data),
                Some(ChannelMsg::ExitStatus { exit_status }) => out.status = Some(exit_status),
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            }
            if out.stdout.len() > max_output || out.stderr.len() > max_output {
                return Err(TransportError::OutputTooLarge { peer: peer.clone() });
            }
        }
        Ok(out)
    }

    /// Opens an interactive shell (the server decides which, and for which key) and connects
    /// it to `io` until it exits; returns its exit status.
    pub async fn shell<I, O, E>(&self, io: ShellIo<I, O, E>) -> Result<u32>
    where
        I: tokio::io::AsyncRead + Unpin,
        O: tokio::io::AsyncWrite + Unpin,
        E: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let peer = &self.peer;
        let ShellIo {
            mut stdin,
            mut stdout,
            mut stderr,
            terminal,
            mut resized,
        } = io;
        let mut channel = self.handle.channel_open_session().await?;
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
                .await?;
        }
        channel.request_shell(true).await?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut stdin_open = true;
        let mut status = None;
        loop {
            tokio::select! {
                n = stdin.read(&mut buf), if stdin_open => match n.map_err(TransportError::Terminal)? {
                    0 => {
                        stdin_open = false;
                        channel.eof().await?;
                    }
                    n => channel.data(&buf[..n]).await?,
                },
                Some(size) = resized.recv() => {
                    let _ = channel
                        .window_change(u32::from(size.cols), u32::from(size.rows), 0, 0)
                        .await;
                }
                msg = channel.wait() => match msg {
                    Some(ChannelMsg::Failure) => {
                        return Err(TransportError::ShellRefused { peer: peer.clone() })
                    }
                    Some(ChannelMsg::Data { data }) => {
                        stdout.write_all(&data).await.map_err(TransportError::Terminal)?;
                        stdout.flush().await.map_err(TransportError::Terminal)?;
                    }
                    Some(ChannelMsg::ExtendedData { data, .. }) => {
                        stderr.write_all(&data).await.map_err(TransportError::Terminal)?;
                        stderr.flush().await.map_err(TransportError::Terminal)?;
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                    Some(ChannelMsg::ExitSignal { .. }) => status = status.or(Some(255)),
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                },
            }
        }
        status.ok_or_else(|| TransportError::ShellEnded { peer: peer.clone() })
    }
}

/// Connects to the target, logs in, runs `command` with `input` on its stdin (then EOF) and
/// collects its output and exit status, all within `target.timeout`.
pub async fn exec(
    target: Target<'_>,
    command: &str,
    input: impl tokio::io::AsyncRead + Unpin,
    max_output: usize,
) -> Result<ExecOutput> {
    let timeout = target.timeout;
    let peer = peer_addr(target.host, target.port);
    let work = async {
        let conn = Connection::connect(target).await?;
        let out = conn.exec(command, input, max_output).await?;
        conn.disconnect().await;
        Ok(out)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| TransportError::ConnectTimeout { peer, timeout })?
}

/// Connects to the target, logs in (within `target.timeout`) and runs an interactive shell
/// there until it exits (no time bound); returns its exit status.
pub async fn shell<I, O, E>(target: Target<'_>, io: ShellIo<I, O, E>) -> Result<u32>
where
    I: tokio::io::AsyncRead + Unpin,
    O: tokio::io::AsyncWrite + Unpin,
    E: tokio::io::AsyncWrite + Unpin,
{
    let conn = Connection::connect(target).await?;
    let status = conn.shell(io).await;
    conn.disconnect().await;
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers() {
        assert_eq!(
            parse_peer("198.18.0.2:65022").unwrap(),
            ("198.18.0.2".into(), 65022)
        );
        assert_eq!(
            parse_peer("backup").unwrap(),
            ("backup".into(), DEFAULT_PORT)
        );
        assert_eq!(parse_peer("[fe80::1]:22").unwrap(), ("fe80::1".into(), 22));
        assert_eq!(
            parse_peer("[fe80::1]").unwrap(),
            ("fe80::1".into(), DEFAULT_PORT)
        );
        assert_eq!(
            parse_peer("fe80::1").unwrap(),
            ("fe80::1".into(), DEFAULT_PORT)
        );
        assert!(parse_peer("host:x").is_err());
        assert!(parse_peer("").is_err());
        assert!(parse_peer(":22").is_err());
    }
}
