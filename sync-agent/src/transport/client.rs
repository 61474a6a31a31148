//! The primary's side: connect, check the pinned host key, log in with a key, run the
//! `ha-sync` subsystem and hand its stream to synchronous code.
//!
//! Two ways to use it: [`run`] connects, runs one session and disconnects (`ha-sync now`);
//! [`Connection`] stays connected and opens one channel per session (the daemon), which
//! saves the TCP and SSH handshakes, key exchange and login on every sync after the first.

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
use super::{
    ReadWrite, Result, TransportError, CHANNEL_WINDOW, DEFAULT_PORT, MAX_PACKET, SUBSYSTEM,
};

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

enum HostCheck {
    /// Accept only a key pinned in this known_hosts file.
    Pinned {
        known_hosts: PathBuf,
        host: String,
        port: u16,
        peer: String,
    },
    /// Record the key and refuse it (for `fetch_host_key`).
    Capture(Arc<Mutex<Option<PublicKey>>>),
}

/// Cancellation tokens of the open channels, by id.
type ChannelTokens = Arc<Mutex<HashMap<ChannelId, CancellationToken>>>;

struct Handler {
    check: HostCheck,
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
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                let host = match &self.check {
                    HostCheck::Pinned { host, port, .. } => known_hosts_name(host, *port),
                    HostCheck::Capture(_) => "peer".into(),
                };
                return Err(TransportError::HostCertificate { host });
            }
        };
        match &self.check {
            HostCheck::Capture(slot) => {
                if let Ok(mut s) = slot.lock() {
                    *s = Some(key.clone());
                }
                Ok(false)
            }
            HostCheck::Pinned {
                known_hosts,
                host,
                port,
                peer,
            } => match check_known_host(known_hosts, host, *port, key)? {
                HostKeyStatus::Known => Ok(true),
                HostKeyStatus::Unknown => Err(TransportError::HostKeyUnknown {
                    host: known_hosts_name(host, *port),
                    peer: peer.clone(),
                    path: known_hosts.clone(),
                    fingerprint: fingerprint(key),
                }),
                HostKeyStatus::Changed { line } => Err(TransportError::HostKeyChanged {
                    host: known_hosts_name(host, *port),
                    peer: peer.clone(),
                    path: known_hosts.clone(),
                    line,
                    fingerprint: fingerprint(key),
                }),
            },
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

fn ssh_config() -> client::Config {
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

async fn connect(
    cfg: &ClientConfig,
    host: &str,
    port: u16,
    handler: Handler,
) -> Result<client::Handle<Handler>> {
    let config = Arc::new(ssh_config());
    let socket = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|source| TransportError::Connect {
            peer: cfg.peer.clone(),
            source,
        })?;
    let _ = socket.set_nodelay(true);
    client::connect_stream(config, socket, handler).await
}

async fn authenticate(
    session: &mut client::Handle<Handler>,
    cfg: &ClientConfig,
    key: PrivateKey,
) -> Result<()> {
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
        .authenticate_publickey(&cfg.user, PrivateKeyWithHashAlg::new(key, hash))
        .await?;
    match result {
        AuthResult::Success => Ok(()),
        AuthResult::Failure { .. } => Err(TransportError::AuthRejected {
            user: cfg.user.clone(),
            peer: cfg.peer.clone(),
            key: cfg.key.clone(),
            fingerprint: fp,
        }),
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
        let key = {
            let path = cfg.key.clone();
            tokio::task::spawn_blocking(move || load_private_key(&path))
                .await
                .map_err(|e| TransportError::Internal(e.to_string()))??
        };
        let gone = CancellationToken::new();
        let channels = ChannelTokens::default();
        let handler = Handler {
            check: HostCheck::Pinned {
                known_hosts: cfg.known_hosts.clone(),
                host: host.clone(),
                port,
                peer: cfg.peer.clone(),
            },
            gone: gone.clone(),
            channels: channels.clone(),
        };
        let setup = async {
            let mut session = connect(cfg, &host, port, handler).await?;
            authenticate(&mut session, cfg, key).await?;
            Ok::<_, TransportError>(session)
        };
        let handle = tokio::time::timeout(cfg.connect_timeout, setup)
            .await
            .map_err(|_| TransportError::ConnectTimeout {
                peer: cfg.peer.clone(),
                timeout: cfg.connect_timeout,
            })??;
        Ok(Connection {
            handle,
            peer: cfg.peer.clone(),
            open_timeout: cfg.connect_timeout,
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
        gone: CancellationToken::new(),
        channels: ChannelTokens::default(),
    };
    let cfg = ClientConfig::new(peer, PathBuf::new(), PathBuf::new());
    let result = tokio::time::timeout(cfg.connect_timeout, connect(&cfg, &host, port, handler))
        .await
        .map_err(|_| TransportError::ConnectTimeout {
            peer: peer.to_string(),
            timeout: cfg.connect_timeout,
        })?;
    let captured = slot.lock().ok().and_then(|mut s| s.take());
    match (captured, result) {
        (Some(key), _) => Ok(key),
        (None, Err(e)) => Err(e),
        (None, Ok(_)) => Err(TransportError::Internal(format!("{peer} sent no host key"))),
    }
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
