//! SSH transport between the two nodes.
//!
//! The backup runs [`server::Server`] (key-only SSH on port 65022, one subsystem named
//! [`SUBSYSTEM`]); the primary calls [`client::run`], or keeps a [`client::Connection`] open
//! and runs one session per channel on it (the daemon). [`client`] is also the SSH client of
//! the cluster companion (commands and shells, password logins on port 22). Both sides hand the sync protocol a
//! plain blocking byte stream ([`ReadWrite`]) on a blocking thread: the protocol code never
//! sees SSH or tokio.
//!
//! Stream semantics, both sides:
//! - writes are buffered (64 KiB); call `flush()` at every turn of the conversation. A read
//!   that has to wait for the peer flushes pending writes first, so a forgotten flush costs
//!   a little latency, never a deadlock.
//! - `read` returns `Ok(0)` once the peer sent EOF (the client sends EOF when its closure
//!   returns); an error of kind `ConnectionAborted` when the channel or connection went away
//!   without EOF.
//! - writes fail with `BrokenPipe` once the peer closed the channel.

pub mod client;
pub mod keys;
pub mod server;
pub mod shell;

mod bridge;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use client::{
    fetch_host_key, run, Algorithms, ClientConfig, Connection, ExecOutput, HostCheck, Login,
    ShellIo, Target,
};
pub use keys::{
    check_known_host, convert_dropbear_key, generate_keypair, load_or_create_host_key,
    load_private_key, pin_known_host, to_dropbear_rsa, AuthorizedKeys, HostKeyStatus,
};
pub use russh::keys::{PrivateKey, PublicKey};
pub use server::{bind, Server, ServerConfig, StreamHandler};
pub use shell::{PtySize, ShellCommand, ShellPolicy};

/// Name of the SSH subsystem carrying a sync session.
pub const SUBSYSTEM: &str = "ha-sync";
/// Default TCP port of the backup agent.
pub use sync_core::node::DEFAULT_PORT;
/// Exit status of a session refused because another one is running.
pub const EXIT_BUSY: u32 = 2;
/// Exit status of a session whose handler returned an error.
pub const EXIT_ERROR: u32 = 1;

/// Size of the read and write buffers around the channel.
pub(crate) const STREAM_BUFFER: usize = 64 * 1024;
/// SSH channel window offered to the peer (bytes in flight before it waits for us).
pub(crate) const CHANNEL_WINDOW: u32 = 2 * 1024 * 1024;
/// Largest SSH packet we accept; russh warns above 65535.
pub(crate) const MAX_PACKET: u32 = 65535;
/// Longest stderr text kept from the remote side.
pub(crate) const MAX_STDERR: usize = 64 * 1024;

/// A blocking, buffered byte stream over an SSH channel.
pub trait ReadWrite: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send + ?Sized> ReadWrite for T {}

/// Who is on the other end of a server-side session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Remote TCP address.
    pub addr: SocketAddr,
    /// SHA-256 fingerprint (`SHA256:...`) of the key the peer authenticated with.
    pub key_fingerprint: String,
}

/// Errors of the transport: keys, known hosts, connection, authentication, remote failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load private key {path}: {reason}")]
    KeyLoad { path: PathBuf, reason: String },
    #[error("{path} already exists; remove it first to replace the key")]
    KeyExists { path: PathBuf },
    #[error("cannot encode key for {path}: {reason}")]
    KeyEncode { path: PathBuf, reason: String },
    #[error("key generation failed: {0}")]
    KeyGen(String),
    #[error(
        "host key for {host} ({fingerprint}) not in {path}; verify it and run \
         `ha-sync pin {peer}` to trust it"
    )]
    HostKeyUnknown {
        host: String,
        peer: String,
        path: PathBuf,
        fingerprint: String,
    },
    #[error(
        "HOST KEY CHANGED for {host}: it now presents {fingerprint}, not the key pinned in \
         {path} line {line} (someone may be intercepting the connection); remove that line \
         after verifying the new key, then run `ha-sync pin {peer}`"
    )]
    HostKeyChanged {
        host: String,
        peer: String,
        path: PathBuf,
        line: usize,
        fingerprint: String,
    },
    #[error("host {host} presented an SSH certificate; only plain host keys are supported")]
    HostCertificate { host: String },
    #[error("invalid peer address {peer:?}: {reason}")]
    InvalidPeer { peer: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {peer}: {source}")]
    Connect {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {timeout:?} connecting to {peer}")]
    ConnectTimeout { peer: String, timeout: Duration },
    #[error(
        "authentication as {user} to {peer} refused for key {key} ({fingerprint}); is its \
         public key in the backup's authorized_keys?"
    )]
    AuthRejected {
        user: String,
        peer: String,
        key: PathBuf,
        fingerprint: String,
    },
    /// Bootstrap only; the password is in no message.
    #[error(
        "{peer} refused the password of {user}: check the backup's root password (and that it \
         allows password logins on SSH)"
    )]
    PasswordRejected { user: String, peer: String },
    #[error(
        "{peer} refused to run {command:?}: is ha-sync's agent (not another SSH server) \
         listening there, and up to date?"
    )]
    ExecRefused { peer: String, command: String },
    #[error(
        "{peer} refused a shell: is ha-sync's agent (not another SSH server) listening there, \
         and up to date?"
    )]
    ShellRefused { peer: String },
    #[error("connection to {peer} ended before the shell exited")]
    ShellEnded { peer: String },
    #[error("{peer}: answer too large")]
    OutputTooLarge { peer: String },
    /// Reading or writing the local ends of a shell.
    #[error("terminal: {0}")]
    Terminal(#[source] std::io::Error),
    #[error("{peer} refused the `{subsystem}` subsystem")]
    SubsystemRefused { peer: String, subsystem: String },
    #[error("remote error (exit status {status}): {message}")]
    Remote { status: u32, message: String },
    #[error("connection to {peer} ended before the remote reported a result{detail}")]
    ConnectionLost { peer: String, detail: String },
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl TransportError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        TransportError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = TransportError> = std::result::Result<T, E>;
