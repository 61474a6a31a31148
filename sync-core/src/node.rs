//! The node: where ha-sync's files live under a router root, what role UCI gives this node,
//! and the VRRP state its hooks recorded.
//!
//! Every crate asks this module instead of joining path literals of its own, so a path is
//! spelled once. Everything is relative to a root (`/` on a router, a temporary directory in
//! tests), and reading the node never fails: a missing or unreadable file is "not
//! configured", which every caller must handle anyway (a node before `init`, a reboot before
//! keepalived's first event).
//!
//! keepalived keeps no state file ha-sync could read, so the hooks record the state of the
//! last event they acted on in `<state dir>/vrrp_state`, on RAM: after a reboot the state is
//! unknown until keepalived's first event, which comes within seconds.

use crate::fsx::{self, Durability};
use crate::path::RelPath;
use crate::uci::{Package, UciError};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The cluster's UCI file: role sections (`primary`/`backup`), `ha_peer`, VRRP instances.
pub const KEEPALIVED_UCI: &str = "etc/config/keepalived";
/// The system's UCI file (`system.@system[0].hostname`).
pub const SYSTEM_UCI: &str = "etc/config/system";
/// ha-sync's rebuildable state (RAM on a router: flash wears out).
pub const STATE_DIR: &str = "var/run/ha-sync";
/// ha-sync's own keys: host key, cluster key, authorized and known hosts. Never synced.
pub const ETC_DIR: &str = "etc/ha-sync";
/// Persistent agent data: the attic, the failback base. Not under `var/` (tmpfs on OpenWrt):
/// what a failback needs must survive a reboot; on the overlay, like the default staging tree.
pub const DATA_DIR: &str = "usr/share/ha-sync";
/// The staging tree when UCI names none (`keepalived.ha_peer.sync_dir`).
pub const DEFAULT_STAGING: &str = "usr/share/keepalived/rsync";
/// The cluster key's file name in [`ETC_DIR`] when UCI names none.
pub const CLUSTER_KEY_NAME: &str = "id_ed25519";
/// The daemon's control socket (`ha-sync now`, `ha-sync status`).
pub const CONTROL_SOCKET: &str = "var/run/ha-sync.sock";
/// The agent's port, as the incumbent's dropbear instance on the HA link.
pub const DEFAULT_PORT: u16 = 65022;

/// The configured role (`keepalived.primary` / `keepalived.backup` sections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Backup,
}

impl Role {
    /// The UCI section that names the role, and the word `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// This node's VRRP state as the last keepalived event left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VrrpState {
    Master,
    Backup,
    Fault,
    /// keepalived was stopped (NOTIFY_STOP).
    Stop,
}

impl VrrpState {
    pub fn as_str(self) -> &'static str {
        match self {
            VrrpState::Master => "master",
            VrrpState::Backup => "backup",
            VrrpState::Fault => "fault",
            VrrpState::Stop => "stop",
        }
    }
}

impl fmt::Display for VrrpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VrrpState {
    type Err = String;

    fn from_str(s: &str) -> Result<VrrpState, String> {
        match s.trim() {
            "master" => Ok(VrrpState::Master),
            "backup" => Ok(VrrpState::Backup),
            "fault" => Ok(VrrpState::Fault),
            "stop" => Ok(VrrpState::Stop),
            other => Err(format!("unknown VRRP state {other:?}")),
        }
    }
}

/// ha-sync's SSH files on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The agent's ed25519 host key (made on first start).
    pub host_key: PathBuf,
    /// The primaries allowed in (OpenSSH authorized_keys).
    pub authorized_keys: PathBuf,
    /// The backup's pinned host key (OpenSSH known_hosts).
    pub known_hosts: PathBuf,
    /// The cluster key when UCI names none.
    pub default_key: PathBuf,
}

/// The peer, from `keepalived.ha_peer` (`address`, `ssh_port`, `ssh_key`), as the incumbent.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub address: Option<String>,
    pub port: u16,
    /// The cluster private key: `ssh_key` when that file exists, else [`Keys::default_key`].
    pub key: PathBuf,
}

impl PeerConfig {
    /// `host:port`, bracketing an IPv6 literal; `None` when no address is configured.
    pub fn addr(&self) -> Option<String> {
        self.address.as_deref().map(|a| peer_addr(a, self.port))
    }
}

/// A root-relative path as the router spells it (`/usr/share/keepalived/rsync`), the form
/// UCI options hold.
pub fn router_path(rel: &str) -> String {
    format!("/{rel}")
}

/// `host:port` for a host that may be an IPv6 literal.
pub fn peer_addr(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One node's files and identity, under its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    root: PathBuf,
}

impl Node {
    pub fn new(root: impl Into<PathBuf>) -> Node {
        Node { root: root.into() }
    }

    /// The router's root: `/`, a temporary directory in tests.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A router path (`/etc/keepalived/keys/id_rsa`, or relative) under the root. A path that
    /// is not a clean router path (`..`) is taken as it is, for the error that follows to name.
    pub fn path(&self, router_path: &str) -> PathBuf {
        match RelPath::from_abs(router_path).or_else(|_| RelPath::new(router_path)) {
            Ok(p) => self.root.join(p.as_str()),
            Err(_) => PathBuf::from(router_path),
        }
    }

    /// `<root>/etc/config/keepalived`.
    pub fn keepalived_uci(&self) -> PathBuf {
        self.root.join(KEEPALIVED_UCI)
    }

    /// The cluster's UCI package; empty when the file does not exist.
    pub fn keepalived(&self) -> Result<Package, UciError> {
        Package::load_or_empty(&self.keepalived_uci())
    }

    /// The staging tree: UCI `keepalived.ha_peer.sync_dir` when set (an absolute router
    /// path, taken under the root), else [`DEFAULT_STAGING`].
    pub fn staging_dir(&self) -> PathBuf {
        let dir = self
            .keepalived()
            .ok()
            .and_then(|p| p.get("ha_peer", "sync_dir").map(str::to_string))
            .and_then(|d| RelPath::from_abs(&d).ok());
        match dir {
            Some(d) => self.root.join(d.as_str()),
            None => self.root.join(DEFAULT_STAGING),
        }
    }

    /// `<root>/var/run/ha-sync`: stat cache, status, locks, the hooks' VRRP record.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    /// `<root>/usr/share/ha-sync`: persistent data (attic, failback base).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join(DATA_DIR)
    }

    /// Every live version a restore, pull or merge replaces is kept here.
    pub fn attic_dir(&self) -> PathBuf {
        self.data_dir().join("attic")
    }

    /// The agent's own directories: never a restore target nor mirrored over, whatever the
    /// restore list says (staging, state, keys, data).
    pub fn protected_dirs(&self) -> Vec<PathBuf> {
        vec![
            self.staging_dir(),
            self.state_dir(),
            self.etc_dir(),
            self.data_dir(),
        ]
    }

    /// `<root>/var/run/ha-sync.sock`.
    /// The lock every sync from this node holds (`now`, the daemon, the catch-up gate), so
    /// two never interleave.
    pub fn sync_lock_path(&self) -> PathBuf {
        self.state_dir().join("now.lock")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.root.join(CONTROL_SOCKET)
    }

    /// `<root>/etc/ha-sync`.
    pub fn etc_dir(&self) -> PathBuf {
        self.root.join(ETC_DIR)
    }

    pub fn keys(&self) -> Keys {
        let etc = self.etc_dir();
        Keys {
            host_key: etc.join("host_key"),
            authorized_keys: etc.join("authorized_keys"),
            known_hosts: etc.join("known_hosts"),
            default_key: etc.join(CLUSTER_KEY_NAME),
        }
    }

    /// The peer from `keepalived.ha_peer`; a missing file or option gives the defaults, a
    /// malformed file is an error naming file and line.
    pub fn peer(&self) -> Result<PeerConfig, UciError> {
        let p = self.keepalived()?;
        let port = p
            .get("ha_peer", "ssh_port")
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_PORT);
        let key = p
            .get("ha_peer", "ssh_key")
            .map(|k| self.path(k))
            .filter(|k| k.exists())
            .unwrap_or_else(|| self.keys().default_key);
        Ok(PeerConfig {
            address: p.get("ha_peer", "address").map(str::to_string),
            port,
            key,
        })
    }

    /// The configured role; `None` when HA is off or the file cannot be read (logged).
    pub fn role(&self) -> Option<Role> {
        match self.keepalived() {
            Ok(p) if p.section("primary").is_some() => Some(Role::Primary),
            Ok(p) if p.section("backup").is_some() => Some(Role::Backup),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("{e}; role unknown");
                None
            }
        }
    }

    /// Where the hooks record the VRRP state.
    pub fn vrrp_state_file(&self) -> PathBuf {
        self.state_dir().join("vrrp_state")
    }

    /// The VRRP state the hooks recorded; `None` before the first event since boot.
    pub fn vrrp_state(&self) -> Option<VrrpState> {
        crate::fsx::read_text(&self.vrrp_state_file())
            .ok()?
            .parse()
            .ok()
    }

    /// Records the VRRP state (the hooks, on each keepalived event).
    pub fn set_vrrp_state(&self, s: VrrpState) -> io::Result<()> {
        fsx::write_atomic(
            &self.vrrp_state_file(),
            format!("{s}\n").as_bytes(),
            0o644,
            Durability::Visible,
        )
    }

    /// This node's name: `system.@system[0].hostname`, else `fallback`.
    pub fn name(&self, fallback: &str) -> String {
        Package::load_or_empty(&self.root.join(SYSTEM_UCI))
            .ok()
            .and_then(|p| {
                p.sections_of_kind("system")
                    .find_map(|s| s.get("hostname").map(str::to_string))
            })
            .unwrap_or_else(|| fallback.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::write;

    #[test]
    fn an_unconfigured_node_has_defaults_and_no_role() {
        let t = tempfile::tempdir().unwrap();
        let n = Node::new(t.path());
        assert_eq!(n.role(), None);
        assert_eq!(n.vrrp_state(), None);
        assert_eq!(n.staging_dir(), t.path().join(DEFAULT_STAGING));
        assert_eq!(n.name("backup"), "backup");
        let p = n.peer().unwrap();
        assert_eq!((p.address, p.port), (None, DEFAULT_PORT));
        assert_eq!(p.key, n.keys().default_key);
    }

    #[test]
    fn role_peer_staging_and_name_come_from_uci() {
        let t = tempfile::tempdir().unwrap();
        write(
            t.path(),
            KEEPALIVED_UCI,
            "config backup 'backup'\n\nconfig peer 'ha_peer'\n\toption address 'fd00::2'\n\toption ssh_port '2222'\n\toption sync_dir '/tmp/ns-ha'\n\toption ssh_key '/etc/keepalived/keys/id_rsa'\n",
        );
        write(t.path(), "etc/keepalived/keys/id_rsa", "k");
        write(
            t.path(),
            SYSTEM_UCI,
            "config system\n\toption hostname 'fw-b'\n",
        );
        let n = Node::new(t.path());
        assert_eq!(n.role(), Some(Role::Backup));
        assert_eq!(n.staging_dir(), t.path().join("tmp/ns-ha"));
        assert_eq!(n.name("x"), "fw-b");
        let p = n.peer().unwrap();
        assert_eq!(p.addr().as_deref(), Some("[fd00::2]:2222"));
        assert_eq!(p.key, t.path().join("etc/keepalived/keys/id_rsa"));
    }

    #[test]
    fn the_vrrp_state_round_trips_through_its_file() {
        let t = tempfile::tempdir().unwrap();
        let n = Node::new(t.path());
        for s in [
            VrrpState::Master,
            VrrpState::Backup,
            VrrpState::Fault,
            VrrpState::Stop,
        ] {
            n.set_vrrp_state(s).unwrap();
            assert_eq!(n.vrrp_state(), Some(s));
        }
        std::fs::write(n.vrrp_state_file(), "garbage\n").unwrap();
        assert_eq!(n.vrrp_state(), None);
    }
}
