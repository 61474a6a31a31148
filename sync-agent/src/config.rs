//! Where the agents find their peer, keys and files, from the router's configuration.
//!
//! Peer address, port and key: `<root>/etc/config/keepalived`, section `ha_peer` (`address`,
//! `ssh_port`, `ssh_key`), as the incumbent. ha-sync's own SSH files: `<root>/etc/ha-sync/`.
//! Flags override each value.

use std::path::{Path, PathBuf};
use sync_core::path::RelPath;
use sync_core::uci::Package;

/// ha-sync's own keys, relative to the root.
pub const ETC_DIR: &str = "etc/ha-sync";

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub address: Option<String>,
    pub port: u16,
    pub key: PathBuf,
}

/// A router path (`/etc/keepalived/keys/id_rsa`) under `root`.
pub fn under_root(root: &Path, router_path: &str) -> PathBuf {
    match RelPath::from_abs(router_path) {
        Ok(p) => root.join(p.as_str()),
        Err(_) => PathBuf::from(router_path),
    }
}

pub fn host_key(root: &Path) -> PathBuf {
    root.join(ETC_DIR).join("host_key")
}

pub fn authorized_keys(root: &Path) -> PathBuf {
    root.join(ETC_DIR).join("authorized_keys")
}

pub fn known_hosts(root: &Path) -> PathBuf {
    root.join(ETC_DIR).join("known_hosts")
}

/// The cluster key when UCI names none.
pub fn default_key(root: &Path) -> PathBuf {
    root.join(ETC_DIR).join("id_ed25519")
}

/// Reads `keepalived.ha_peer`; a missing file or option gives the defaults, a malformed file
/// is an error naming file and line.
pub fn peer(root: &Path) -> Result<PeerConfig, sync_core::uci::UciError> {
    let p = Package::load_or_empty(&root.join("etc/config/keepalived"))?;
    let port = p
        .get("ha_peer", "ssh_port")
        .and_then(|s| s.parse().ok())
        .unwrap_or(crate::transport::DEFAULT_PORT);
    let key = p
        .get("ha_peer", "ssh_key")
        .map(|k| under_root(root, k))
        .filter(|k| k.exists())
        .unwrap_or_else(|| default_key(root));
    Ok(PeerConfig {
        address: p.get("ha_peer", "address").map(str::to_string),
        port,
        key,
    })
}

/// `host:port` for a host that may be an IPv6 literal.
pub fn peer_addr(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
