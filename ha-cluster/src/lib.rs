//! The cluster companion: the actions of the incumbent's `ns-ha-config` (set up, inspect,
//! change and tear down the two-node cluster) over keepalived, conntrackd and the agent.
//!
//! - [`actions`]: each action, run on the primary (or, for `check-*`/`status`, on either node)
//!   against a root directory and a [`Runner`], so tests run them on temporary roots.
//! - [`keepalived`]: the UCI sections of `/etc/config/keepalived` and the `keepalived.conf`
//!   renderer; [`conntrackd`]: `conntrackd.conf`.
//! - [`remote`]: the named actions the backup's agent serves to the cluster key only
//!   (validate, configure, enable, disable, reset), the shell of `ssh-remote`, and the
//!   client that calls them; [`upgrade`]: `upgrade-remote`'s image upload and install.
//!
//! Actions that change the cluster change the primary's UCI, then hand the whole [`Spec`] to
//! the backup (`configure`), which writes its own sections from it: both nodes always describe
//! the same cluster, and `/etc/config/keepalived` stays out of the sync (each node's file names
//! its own role and addresses).
//!
//! [`Spec`]: keepalived::Spec

pub mod actions;
pub mod addr;
pub mod bootstrap;
pub mod conntrackd;
pub mod keepalived;
pub mod network;
pub mod remote;
pub mod upgrade;

use std::path::{Path, PathBuf};

pub use restore_hooks::Role;
use sync_core::runner::Runner;

/// The UCI file of the cluster, relative to the root.
pub const KEEPALIVED_UCI: &str = "etc/config/keepalived";

/// The UCI section naming this node's role (`keepalived.primary` / `keepalived.backup`).
pub fn role_section(role: Role) -> &'static str {
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
    Transport(#[from] crate::transport::TransportError),
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

/// The named actions the backup's agent runs for the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteAction {
    /// Check HA interfaces on the backup: exist, static; report device and address.
    Validate,
    /// Write the backup's cluster sections (and conntrackd) from the primary's spec.
    Configure,
    Enable,
    Disable,
    Reset,
}

impl RemoteAction {
    pub const ALL: [RemoteAction; 5] = [
        RemoteAction::Validate,
        RemoteAction::Configure,
        RemoteAction::Enable,
        RemoteAction::Disable,
        RemoteAction::Reset,
    ];

    /// The exact `exec` command string the agent accepts.
    pub fn command(self) -> &'static str {
        match self {
            RemoteAction::Validate => "ha-sync-cluster validate",
            RemoteAction::Configure => "ha-sync-cluster configure",
            RemoteAction::Enable => "ha-sync-cluster enable",
            RemoteAction::Disable => "ha-sync-cluster disable",
            RemoteAction::Reset => "ha-sync-cluster reset",
        }
    }
}

/// The backup, as the primary's actions reach it: one JSON request, one JSON answer.
pub trait Peer {
    fn call(
        &self,
        action: RemoteAction,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, ClusterError>;

    /// Sends a firmware image for the backup to check and install (see [`upgrade`]).
    fn send_image(
        &self,
        header: &upgrade::ImageHeader,
        image: &Path,
    ) -> Result<serde_json::Value, ClusterError>;
}
