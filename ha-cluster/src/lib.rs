#![deny(unreachable_pub)]
//! The cluster companion: the actions of the incumbent's `ns-ha-config` (set up, inspect,
//! change and tear down the two-node cluster) over keepalived, conntrackd and the agent.
//!
//! A crate of its own, above `sync-agent`: it uses the agent's SSH client and registers its
//! actions on the agent's server, and the agent (daemon, status, sync) needs nothing of it.
//! What both read of keepalived's own files (VRRP state, statistics, virtual IPs) is in
//! `sync_core::keepalived`.
//!
//! Pure code, on files under a root: [`keepalived`] (the UCI sections of
//! `/etc/config/keepalived` and the `keepalived.conf` renderer), [`conntrackd`]
//! (`conntrackd.conf`), [`network`] (`/etc/config/network` and `dhcp`), [`addr`].
//!
//! Over the agent, layered so that no module imports one that imports it back:
//! - [`request`]: what the primary asks of the backup ([`request::ClusterRequest`], one
//!   variant per remote action, and the typed answers), and the [`Peer`] the actions call.
//! - `services` (inside): the init scripts the actions run, through a [`Runner`].
//! - [`actions`]: each action, run on the primary (or, for `check-*`/`status`, on either node)
//!   against a root directory and a [`Runner`], so tests run them on temporary roots; and the
//!   backup's half of each remote action ([`actions::serve`]).
//! - [`upgrade`]: `upgrade-remote`'s image upload and install.
//! - [`remote`]: the agent serving the remote actions, the upload and the shell of
//!   `ssh-remote` to the cluster key only, and [`remote::SshPeer`], the [`Peer`] over SSH.
//! - [`bootstrap`]: first contact with the backup (port 22, root's password).
//!
//! Actions that change the cluster change the primary's UCI, then hand the whole [`Spec`] to
//! the backup (`configure`), which writes its own sections from it: both nodes always describe
//! the same cluster, and `/etc/config/keepalived` stays out of the sync (each node's file names
//! its own role and addresses).
//!
//! [`Spec`]: keepalived::Spec
//! [`Peer`]: request::Peer

pub mod actions;
pub mod addr;
pub mod bootstrap;
pub mod conntrackd;
pub mod keepalived;
pub mod migrate;
pub mod network;
pub mod remote;
pub mod request;
mod services;
pub mod upgrade;

use std::path::{Path, PathBuf};

pub use restore_hooks::Role;
use sync_agent::transport::TransportError;
use sync_core::runner::Runner;
use sync_core::uci::Package;

pub(crate) use sync_core::node::KEEPALIVED_UCI;

/// The cluster key's public half on the backup (written by init-backup-node): the only key
/// the agent runs the cluster actions for.
pub fn cluster_pub(root: &Path) -> PathBuf {
    root.join(sync_core::node::ETC_DIR).join("cluster_key.pub")
}

/// This node's cluster UCI (empty when there is none yet).
pub(crate) fn load_uci(ctx: &Ctx) -> Result<Package, ClusterError> {
    Ok(Package::load_or_empty(&ctx.path(KEEPALIVED_UCI))?)
}

/// The UCI section naming this node's role (`keepalived.primary` / `keepalived.backup`).
pub(crate) fn role_section(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Backup => "backup",
    }
}

/// What an action runs against.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// The router's root: `/`, a temporary directory in tests.
    pub root: &'a Path,
    pub runner: &'a dyn Runner,
}

impl Ctx<'_> {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

/// What went wrong; each message says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// One or more requirements of the spec are not met; one line each.
    #[error("requirements not met:\n{}", .0.iter().map(|p| format!("- {p}")).collect::<Vec<_>>().join("\n"))]
    Requirements(Vec<String>),
    #[error("no interface {name:?} in /etc/config/network (interfaces here: {}); give one of them", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownInterface { name: String, known: Vec<String> },
    #[error("invalid virtual IP {value:?}: {why}; write it in CIDR form, e.g. 192.168.100.240/24")]
    BadCidr { value: String, why: String },
    #[error("invalid IPv4 address {value:?} for {what}")]
    BadAddress { value: String, what: &'static str },
    #[error("{0}")]
    AlreadyConfigured(String),
    #[error("{0}")]
    NotConfigured(String),
    #[error(
        "device {device} is too long for the virtual IP label {label} ({} characters, Linux \
         allows {}); rename the device to at most {} characters",
        label.len(), keepalived::MAX_LABEL, keepalived::MAX_LABEL - 1 - keepalived::LABEL_SUFFIX.len()
    )]
    LabelTooLong { device: String, label: String },
    #[error("{0}")]
    Invalid(String),
    /// The cluster sections are not what this module writes.
    #[error("cluster configuration is damaged: {0}")]
    Corrupt(String),
    /// The peer refused or failed a remote action.
    #[error("backup node: {0}")]
    Peer(String),
    #[error("{action} failed ({cmd}): {detail}")]
    Command {
        action: &'static str,
        cmd: String,
        detail: String,
    },
    #[error(transparent)]
    Uci(#[from] sync_core::uci::UciError),
    #[error(transparent)]
    Transport(TransportError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ClusterError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ClusterError {
        let path = path.into();
        move |source| ClusterError::Io { path, source }
    }
}

impl From<TransportError> for ClusterError {
    /// What the backup refused, or a shell that ended early, is the peer's answer (as
    /// `backup node: ...`); a local terminal error names the terminal; the rest (connection,
    /// host key, login with a key) stays the transport's.
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::PasswordRejected { .. }
            | TransportError::ExecRefused { .. }
            | TransportError::ShellRefused { .. }
            | TransportError::ShellEnded { .. }
            | TransportError::OutputTooLarge { .. } => ClusterError::Peer(e.to_string()),
            TransportError::Terminal(source) => ClusterError::Io {
                path: PathBuf::from("terminal"),
                source,
            },
            e => ClusterError::Transport(e),
        }
    }
}
