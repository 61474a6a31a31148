//! The backup agent's SSH server: public-key login from authorized_keys, one `ha-sync`
//! subsystem session at a time, the exec actions and the shell registered on it (none by
//! default), nothing else (no forwarding, no agent, no X11, no environment).

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::PublicKey;
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, Disconnect, MethodKind, MethodSet};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::bridge;
use super::keys::{fingerprint, load_or_create_host_key, AuthorizedKeys};
use super::shell::{self, PtyRequest, PtySize, ShellPolicy};
use super::{
    PeerInfo, ReadWrite, Result, TransportError, CHANNEL_WINDOW, EXIT_BUSY, EXIT_ERROR, MAX_PACKET,
    SUBSYSTEM,
};

/// Channels one connection may have open at once.
const MAX_CHANNELS: usize = 4;

/// Settings of the backup agent's listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Host key (OpenSSH format); an ed25519 key is generated there on first start.
    pub host_key: PathBuf,
    /// Keys allowed to log in; read again for every connection.
    pub authorized_keys: PathBuf,
    /// A connection silent for this long is dropped (keepalives every quarter of it detect
    /// a dead peer sooner). Default 300 s.
    pub idle_timeout: Duration,
    /// A connection not logged in this long after it was accepted is dropped: the SSH
    /// version line, the key exchange and the login all count (issue 14, finding 5: idle TCP
    /// connections used to fill the connection cap for minutes). Default 10 s.
    pub auth_timeout: Duration,
    /// A sync session that keeps the agent waiting for its next bytes this long is ended and
    /// frees the one session slot (an authenticated peer that stops talking). Default 120 s,
    /// the session deadline's base on the primary's side.
    pub session_idle: Duration,
}

impl ServerConfig {
    pub fn new(listen: SocketAddr, host_key: PathBuf, authorized_keys: PathBuf) -> Self {
        ServerConfig {
            listen,
            host_key,
            authorized_keys,
            idle_timeout: Duration::from_secs(300),
            auth_timeout: Duration::from_secs(10),
            session_idle: sync_core::limits::SESSION_BASE,
        }
    }
}

/// Runs one session on a blocking thread. The stream is buffered: flush at every turn.
/// Returning `Err(text)` makes the remote side see exit status 1 and `text` on stderr.
pub trait StreamHandler: Send + Sync + 'static {
    fn handle(&self, stream: &mut dyn ReadWrite, peer: &PeerInfo) -> Result<(), String>;
}

impl<F> StreamHandler for F
where
    F: Fn(&mut dyn ReadWrite, &PeerInfo) -> Result<(), String> + Send + Sync + 'static,
{
    fn handle(&self, stream: &mut dyn ReadWrite, peer: &PeerInfo) -> Result<(), String> {
        self(stream, peer)
    }
}

struct Shared {
    authorized_keys: PathBuf,
    handler: Arc<dyn StreamHandler>,
    /// Named exec requests accepted (exact match, no shell); empty by default.
    actions: HashMap<String, Arc<dyn StreamHandler>>,
    /// Who may have a shell, and which; `None` refuses every shell request.
    shell: Option<Arc<dyn ShellPolicy>>,
    /// Peer of the running `ha-sync` session, if any.
    active: Mutex<Option<SocketAddr>>,
    session_idle: Duration,
    /// Connections not logged in yet.
    pending: Mutex<Pending>,
    /// Connections logged in and not ended.
    logged_in: std::sync::atomic::AtomicUsize,
}

/// Connections accepted and not logged in yet, oldest first, and how many each source has.
#[derive(Default)]
struct Pending {
    next: u64,
    conns: std::collections::BTreeMap<u64, (std::net::IpAddr, CancellationToken)>,
    per_source: HashMap<std::net::IpAddr, usize>,
}

/// Connections not logged in yet that one source address may hold.
const MAX_PENDING_PER_SOURCE: usize = 4;
/// Connections not logged in yet, in all: the rest of [`MAX_CONNECTIONS`] stays for logged-in
/// ones. At the cap, the oldest is dropped for the newcomer: an attacker's idle connections
/// make room for the primary's, which logs in within milliseconds.
const MAX_PENDING: usize = 16;

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        match self.pending.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        }
    }

    /// Admits a new connection from `ip` as not logged in: its id and the token that drops it
    /// early; `None` when its source holds too many already.
    fn admit(&self, ip: std::net::IpAddr) -> Option<(u64, CancellationToken)> {
        let mut p = self.pending();
        if p.per_source.get(&ip).copied().unwrap_or(0) >= MAX_PENDING_PER_SOURCE {
            return None;
        }
        if p.conns.len() >= MAX_PENDING {
            if let Some((_, (old_ip, token))) = p.conns.pop_first() {
                tracing::warn!("{old_ip}: not logged in yet, dropped to make room for {ip}");
                token.cancel();
                Self::forget_source(&mut p, old_ip);
            }
        }
        let id = p.next;
        p.next += 1;
        let token = CancellationToken::new();
        p.conns.insert(id, (ip, token.clone()));
        *p.per_source.entry(ip).or_default() += 1;
        Some((id, token))
    }

    /// Connection `id` logged in, or ended: it no longer counts as pending.
    fn settled(&self, id: u64) {
        let mut p = self.pending();
        if let Some((ip, _)) = p.conns.remove(&id) {
            Self::forget_source(&mut p, ip);
        }
    }

    fn forget_source(p: &mut Pending, ip: std::net::IpAddr) {
        if let Some(n) = p.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                p.per_source.remove(&ip);
            }
        }
    }
}

/// Releases the one-session slot when the session ends.
struct BusyGuard(Arc<Shared>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        match self.0.active.lock() {
            Ok(mut a) => *a = None,
            Err(p) => *p.into_inner() = None,
        }
    }
}

impl Shared {
    /// Takes the session slot, or returns who holds it.
    fn try_acquire(
        self: &Arc<Self>,
        peer: SocketAddr,
    ) -> std::result::Result<BusyGuard, SocketAddr> {
        let mut active = match self.active.lock() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        match *active {
            Some(holder) => Err(holder),
            None => {
                *active = Some(peer);
                Ok(BusyGuard(self.clone()))
            }
        }
    }
}

/// What the agent offers: what our client and a current OpenSSH client need, nothing more.
/// Each name costs bytes in every handshake (see `client::preferred`).
fn server_preferred() -> russh::Preferred {
    use std::borrow::Cow;
    russh::Preferred {
        kex: Cow::Owned(vec![
            russh::kex::CURVE25519,
            russh::kex::MLKEM768X25519_SHA256,
            russh::kex::EXTENSION_SUPPORT_AS_SERVER,
            russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]),
        key: Cow::Owned(vec![russh::keys::Algorithm::Ed25519]),
        cipher: Cow::Owned(vec![
            russh::cipher::CHACHA20_POLY1305,
            russh::cipher::AES_256_GCM,
        ]),
        mac: Cow::Owned(vec![russh::mac::HMAC_SHA256_ETM]),
        compression: Cow::Owned(vec![russh::compression::NONE]),
        ..russh::Preferred::default()
    }
}

/// A bound, not yet running, agent.
pub struct Server {
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    authorized_keys: PathBuf,
    handler: Arc<dyn StreamHandler>,
    actions: HashMap<String, Arc<dyn StreamHandler>>,
    shell: Option<Arc<dyn ShellPolicy>>,
    auth_timeout: Duration,
    session_idle: Duration,
}

/// Loads (or creates) the host key and binds the listener. `handler` serves the `ha-sync`
/// subsystem.
pub async fn bind(cfg: ServerConfig, handler: Arc<dyn StreamHandler>) -> Result<Server> {
    let host_key = {
        let path = cfg.host_key.clone();
        tokio::task::spawn_blocking(move || load_or_create_host_key(&path))
            .await
            .map_err(|e| TransportError::Internal(e.to_string()))??
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| TransportError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let keepalive = (cfg.idle_timeout / 4).max(Duration::from_secs(1));
    let config = russh::server::Config {
        server_id: russh::SshId::Standard(
            concat!("SSH-2.0-ha-sync_", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_secs(1),
        // OpenSSH clients probe with "none" first; answering it at once costs nothing.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        window_size: CHANNEL_WINDOW,
        maximum_packet_size: MAX_PACKET,
        max_auth_attempts: 6,
        inactivity_timeout: Some(cfg.idle_timeout),
        keepalive_interval: Some(keepalive),
        keepalive_max: 3,
        nodelay: true,
        preferred: server_preferred(),
        ..Default::default()
    };
    Ok(Server {
        listener,
        config: Arc::new(config),
        authorized_keys: cfg.authorized_keys,
        handler,
        actions: HashMap::new(),
        shell: None,
        auth_timeout: cfg.auth_timeout,
        session_idle: cfg.session_idle,
    })
}

impl Server {
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| TransportError::Internal(format!("listener address: {e}")))
    }

    /// Accepts `exec <name>` (the exact command string, no shell) and serves it with
    /// `handler`, like the subsystem but outside the one-session lock. No action is
    /// registered by default: every exec request is refused.
    pub fn with_action(mut self, name: &str, handler: Arc<dyn StreamHandler>) -> Self {
        self.actions.insert(name.to_string(), handler);
        self
    }

    /// Accepts shell requests (with or without a terminal) from the peers `policy` allows,
    /// running the command it returns. Without this every shell request is refused.
    pub fn with_shell(mut self, policy: Arc<dyn ShellPolicy>) -> Self {
        self.shell = Some(policy);
        self
    }

    /// Serves forever.
    pub async fn run(self) -> Result<()> {
        self.run_until(std::future::pending::<()>()).await
    }

    /// Serves until `shutdown` completes, then disconnects every client (waiting up to
    /// 5 s for them to go). Errors accepting a connection (e.g. out of file descriptors)
    /// are logged and retried, never fatal.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let addr = self.local_addr()?;
        let shared = Arc::new(Shared {
            authorized_keys: self.authorized_keys,
            handler: self.handler,
            actions: self.actions,
            shell: self.shell,
            active: Mutex::new(None),
            session_idle: self.session_idle,
            pending: Mutex::new(Pending::default()),
            logged_in: std::sync::atomic::AtomicUsize::new(0),
        });
        let stopping = CancellationToken::new();
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        tracing::info!("ha-sync agent listening on {addr}");
        loop {
            while connections.try_join_next().is_some() {}
            let (socket, peer) = tokio::select! {
                () = &mut shutdown => break,
                r = self.listener.accept() => match r {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("accepting on {addr}: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Counted as admitted, not as tasks: a connection dropped to make room is gone
            // from the count at once, though its task may not have run its end yet.
            let logged_in = shared.logged_in.load(std::sync::atomic::Ordering::SeqCst);
            if logged_in >= MAX_CONNECTIONS - MAX_PENDING {
                tracing::warn!("{logged_in} connections logged in already, dropping {peer}");
                continue;
            }
            let Some((id, evicted)) = shared.admit(peer.ip()) else {
                tracing::warn!(
                    "{peer}: {MAX_PENDING_PER_SOURCE} connections from this address are not \
                     logged in yet; dropped"
                );
                continue;
            };
            let mut conn = Connection::new(shared.clone(), peer);
            conn.pending_id = Some(id);
            let authed = conn.authed.clone();
            connections.spawn(serve_connection(
                self.config.clone(),
                socket,
                conn,
                Login {
                    authed,
                    deadline: tokio::time::Instant::now() + self.auth_timeout,
                    evicted,
                },
                stopping.clone(),
            ));
        }
        stopping.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        Ok(())
    }
}

/// Connections served at once, logged in or not ([`MAX_PENDING`] of them not logged in).
const MAX_CONNECTIONS: usize = 32;

/// What ends a connection that has not logged in: its deadline, or the newcomer it made
/// room for.
struct Login {
    authed: Arc<std::sync::atomic::AtomicBool>,
    deadline: tokio::time::Instant,
    evicted: CancellationToken,
}

impl Login {
    /// Completes when the connection must go for not having logged in; never once it has.
    async fn expired(&self) {
        tokio::select! {
            () = tokio::time::sleep_until(self.deadline) => {}
            () = self.evicted.cancelled() => {}
        }
        if self.authed.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

async fn serve_connection(
    config: Arc<russh::server::Config>,
    socket: tokio::net::TcpStream,
    conn: Connection,
    login: Login,
    stopping: CancellationToken,
) {
    let peer = conn.addr;
    tracing::debug!("connection from {peer}");
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!("set_nodelay: {e}");
    }
    // The version line and the key exchange happen here: a peer that sends nothing would
    // hold this forever without the login deadline.
    let session = tokio::select! {
        r = russh::server::run_stream(config, socket, conn) => match r {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("ssh handshake with {peer} failed: {e}");
                return;
            }
        },
        () = login.expired() => {
            tracing::warn!("{peer}: no login within the deadline; dropped");
            return;
        }
    };
    let handle = session.handle();
    tokio::select! {
        r = session => match r {
            Ok(()) => tracing::debug!("connection from {peer} closed"),
            Err(e) => tracing::debug!("connection from {peer} ended: {e}"),
        },
        () = login.expired() => {
            tracing::warn!("{peer}: no login within the deadline; dropped");
            let _ = handle
                .disconnect(Disconnect::ByApplication, "login timeout".into(), "en".into())
                .await;
        }
        () = stopping.cancelled() => {
            let _ = handle
                .disconnect(Disconnect::ByApplication, "ha-sync agent stopping".into(), "en".into())
                .await;
        }
    }
}

/// One client connection.
struct Connection {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// authorized_keys as read for this connection.
    authorized: Option<AuthorizedKeys>,
    key_fingerprint: Option<String>,
    /// Open channels with no session started yet.
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// Channels running a session, with their "closed" token.
    running: HashMap<ChannelId, CancellationToken>,
    /// Terminal requests waiting for their shell request.
    ptys: HashMap<ChannelId, PtyRequest>,
    /// Cancelled when the connection ends (this handler is dropped).
    gone: CancellationToken,
    /// Its place among the connections not logged in yet, until it logs in.
    pending_id: Option<u64>,
    /// Set at login: the login deadline no longer applies.
    authed: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.gone.cancel();
        if let Some(id) = self.pending_id.take() {
            self.shared.settled(id);
        }
        if self.authed.load(std::sync::atomic::Ordering::SeqCst) {
            self.shared
                .logged_in
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Connection {
    fn new(shared: Arc<Shared>, addr: SocketAddr) -> Self {
        Connection {
            shared,
            addr,
            authorized: None,
            key_fingerprint: None,
            channels: HashMap::new(),
            running: HashMap::new(),
            ptys: HashMap::new(),
            gone: CancellationToken::new(),
            pending_id: None,
            authed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }
    }

    fn is_authorized(&mut self, key: &PublicKey) -> bool {
        if self.authorized.is_none() {
            match AuthorizedKeys::load(&self.shared.authorized_keys) {
                Ok(keys) => self.authorized = Some(keys),
                Err(e) => {
                    tracing::warn!("refusing login from {}: {e}", self.addr);
                    self.authorized = Some(AuthorizedKeys::default());
                }
            }
        }
        self.authorized.as_ref().is_some_and(|a| a.contains(key))
    }

    fn reject() -> Auth {
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        }
    }

    fn peer(&self) -> PeerInfo {
        PeerInfo {
            addr: self.addr,
            key_fingerprint: self.key_fingerprint.clone().unwrap_or_default(),
        }
    }

    fn start(
        &mut self,
        id: ChannelId,
        handler: Arc<dyn StreamHandler>,
        guard: Option<BusyGuard>,
        what: String,
    ) -> bool {
        let Some(channel) = self.channels.remove(&id) else {
            return false;
        };
        let closed = self.gone.child_token();
        self.running.insert(id, closed.clone());
        let peer = self.peer();
        tokio::spawn(serve_channel(channel, handler, peer, guard, closed, what));
        true
    }
}

/// Runs `handler` on the channel, then reports the outcome: stderr text on error, EOF,
/// exit status, close.
async fn serve_channel(
    channel: Channel<Msg>,
    handler: Arc<dyn StreamHandler>,
    peer: PeerInfo,
    guard: Option<BusyGuard>,
    closed: CancellationToken,
    what: String,
) {
    tracing::info!(
        "{what} session from {} ({})",
        peer.addr,
        peer.key_fingerprint
    );
    let (mut stream, write, bshared, pump) = bridge::start(channel, Vec::new(), closed.clone());
    // The one sync session: a peer that keeps it waiting ends it, and the slot is free.
    let watchdog = guard.as_ref().map(|g| {
        let (idle, abort, addr) = (g.0.session_idle, pump.abort_handle(), peer.addr);
        tokio::spawn(async move {
            loop {
                let waited = bshared.waiting_for().unwrap_or_default();
                if waited >= idle {
                    tracing::warn!("{addr}: nothing for {idle:?} in a sync session; ending it");
                    bshared.stall();
                    abort.abort();
                    return;
                }
                tokio::time::sleep((idle - waited).max(Duration::from_millis(100))).await;
            }
        })
    });
    let peer2 = peer.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        let result = handler.handle(&mut stream, &peer2);
        let flushed = stream.flush();
        match (result, flushed) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) if !closed_error(&e) => Err(format!("sending the last data: {e}")),
            _ => Ok(()),
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("session handler failed: {e}")));
    // The next session may start as soon as this one's handler is done.
    drop(guard);
    if let Some(w) = watchdog {
        w.abort();
    }

    let status = match &outcome {
        Ok(()) => {
            tracing::info!("{what} session from {} done", peer.addr);
            0
        }
        Err(e) => {
            tracing::warn!("{what} session from {} failed: {e}", peer.addr);
            EXIT_ERROR
        }
    };
    if closed.is_cancelled() {
        return;
    }
    if let Err(e) = outcome {
        let text = format!("{}\n", e.trim_end());
        bridge::send_or_closed(&closed, write.extended_data_bytes(1, text.into_bytes())).await;
    }
    bridge::send_or_closed(&closed, write.eof()).await;
    bridge::send_or_closed(&closed, write.exit_status(status)).await;
    bridge::send_or_closed(&closed, write.close()).await;
    // Closed from this side, the channel is no longer "established" for russh, which then
    // drops the client's closing reply without telling the handler or the pump: stop the
    // pump and free the channel's slot here, or a connection kept open for many sessions
    // (the primary's daemon) runs out of channels after MAX_CHANNELS of them.
    pump.abort();
    closed.cancel();
}

fn closed_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionAborted
    )
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(Self::reject())
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        tracing::warn!("password login as {user} from {} refused", self.addr);
        Ok(Self::reject())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(Self::reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.is_authorized(offer.public_key) {
            Auth::Accept
        } else {
            Self::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = fingerprint(key.public_key);
        if self.is_authorized(key.public_key) {
            tracing::debug!("{user} from {} logged in with {fp}", self.addr);
            self.key_fingerprint = Some(fp);
            if !self.authed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                self.shared
                    .logged_in
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            if let Some(id) = self.pending_id.take() {
                self.shared.settled(id);
            }
            Ok(Auth::Accept)
        } else {
            tracing::warn!(
                "login as {user} from {} with unknown key {fp} refused",
                self.addr
            );
            Ok(Self::reject())
        }
    }

    async fn auth_openssh_certificate(
        &mut self,
        _user: &str,
        _certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(Self::reject())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.running.retain(|_, t| !t.is_cancelled());
        if self.channels.len() + self.running.len() >= MAX_CHANNELS {
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        self.ptys.remove(&channel);
        if let Some(closed) = self.running.remove(&channel) {
            closed.cancel();
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != SUBSYSTEM || !self.channels.contains_key(&channel) {
            tracing::warn!("subsystem {name:?} from {} refused", self.addr);
            return session.channel_failure(channel);
        }
        session.channel_success(channel)?;
        match self.shared.try_acquire(self.addr) {
            Ok(guard) => {
                let handler = self.shared.handler.clone();
                self.start(channel, handler, Some(guard), SUBSYSTEM.to_string());
            }
            Err(holder) => {
                tracing::warn!("{} refused: busy with a session from {holder}", self.addr);
                self.channels.remove(&channel);
                let text = format!("busy: another sync session is running (from {holder})\n");
                session.extended_data(channel, 1, text.into_bytes())?;
                session.eof(channel)?;
                session.exit_status_request(channel, EXIT_BUSY)?;
                session.close(channel)?;
            }
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data);
        match self.shared.actions.get(command.as_ref()).cloned() {
            Some(handler) if self.channels.contains_key(&channel) => {
                session.channel_success(channel)?;
                self.start(channel, handler, None, format!("exec {command:?}"));
                Ok(())
            }
            _ => {
                tracing::warn!("exec {command:?} from {} refused", self.addr);
                // The channel stays open, as OpenSSH leaves it (a client may try another
                // request on it); ours closes it on the refusal, freeing its slot.
                session.channel_failure(channel)
            }
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let policy = match &self.shared.shell {
            Some(p) if self.channels.contains_key(&channel) => p.clone(),
            _ => {
                tracing::warn!("shell request from {} refused", self.addr);
                return session.channel_failure(channel);
            }
        };
        session.channel_success(channel)?;
        let peer = self.peer();
        let pty = self.ptys.remove(&channel);
        let Some(ch) = self.channels.remove(&channel) else {
            return Ok(());
        };
        match policy.shell(&peer) {
            Ok(cmd) => {
                let closed = self.gone.child_token();
                self.running.insert(channel, closed.clone());
                tokio::spawn(shell::serve(ch, cmd, pty, peer, closed));
            }
            Err(text) => {
                // Said on the channel (not as a bare request failure) so the user reads why.
                tracing::warn!("shell for {} refused: {text}", self.addr);
                session.extended_data(channel, 1, format!("{}\n", text.trim_end()).into_bytes())?;
                session.eof(channel)?;
                session.exit_status_request(channel, EXIT_ERROR)?;
                session.close(channel)?;
            }
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.shared.shell.is_none() || !self.channels.contains_key(&channel) {
            return session.channel_failure(channel);
        }
        // The terminal name lands in the shell's environment: keep it a plain word.
        let term = if !term.is_empty()
            && term.len() <= 64
            && term
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        {
            term.to_string()
        } else {
            "vt100".to_string()
        };
        self.ptys.insert(
            channel,
            PtyRequest {
                term,
                size: PtySize::from_request(col_width, row_height),
            },
        );
        session.channel_success(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn window_change_request(
        &mut self,
        _channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Carried to a running shell on its channel (ChannelMsg::WindowChange); the request
        // wants no reply.
        Ok(())
    }
}
