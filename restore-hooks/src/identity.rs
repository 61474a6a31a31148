//! Node identity: what stays this node's own whatever the primary sends.
//!
//! The incumbent copied everything on the list, so the backup took the primary's hostname
//! (INCUMBENT.md fault 9) and, had anyone removed the default exclusions, its network and
//! keys. The restore never writes, mirrors over or deletes these paths, whatever the restore
//! list and exclude_list say:
//!
//! | path | why it is per node |
//! |---|---|
//! | `/etc/config/network` | management (static LAN) address, devices of this box |
//! | `/etc/config/keepalived` | role, priority, peer address |
//! | `/etc/ha-sync/` | ha-sync host key, authorized keys, pinned peer key |
//! | `/etc/dropbear/` | SSH host keys and `authorized_keys` of this node |
//! | `/etc/keepalived/keys/` | the incumbent's sync key pair |
//! | `/etc/conntrackd/conntrackd.conf` | this node's addresses on the HA link |
//!
//! And one value inside a synced file: option `hostname` of the first `system` section of
//! `/etc/config/system`. The rest of that file (timezone, NTP, log settings) is the primary's;
//! the restore writes the primary's file with this node's hostname put back.

use std::path::Path;
use sync_core::node;
use sync_core::path::RelPath;
use sync_core::uci::Package;

/// Paths (relative to the root) the restore leaves alone, with everything below them.
pub const PER_NODE: &[&str] = &[
    "etc/config/network",
    node::KEEPALIVED_UCI,
    node::ETC_DIR,
    "etc/dropbear",
    "etc/keepalived/keys",
    "etc/conntrackd/conntrackd.conf",
];

/// The synced file whose `hostname` stays this node's.
pub const SYSTEM_CONFIG: &str = "etc/config/system";

/// Whether `p` is, or lies below, a per-node path.
pub fn is_per_node(p: &RelPath) -> bool {
    PER_NODE.iter().any(|n| {
        let s = p.as_str();
        s == *n || (s.starts_with(n) && s.as_bytes().get(n.len()) == Some(&b'/'))
    })
}

/// The hostname of the first `system` section of a `/etc/config/system` text.
pub fn hostname_of(text: &str) -> Option<String> {
    let pkg = Package::parse(text, Path::new("/etc/config/system")).ok()?;
    let first = pkg.sections_of_kind("system").next()?;
    first.get("hostname").map(str::to_string)
}

/// The primary's `/etc/config/system` with this node's hostname kept. Unchanged bytes when
/// there is nothing to keep (no local hostname, or the same one).
pub fn keep_hostname(primary: &[u8], local: Option<&str>) -> Result<Vec<u8>, String> {
    let Some(local) = local else {
        return Ok(primary.to_vec());
    };
    let text = std::str::from_utf8(primary).map_err(|_| "not UTF-8 text".to_string())?;
    let mut pkg = Package::parse(text, Path::new("/etc/config/system")).map_err(|e| {
        format!("cannot keep this node's hostname, the primary's file does not parse: {e}")
    })?;
    let Some(first) = pkg.sections.iter_mut().find(|s| s.kind == "system") else {
        return Ok(primary.to_vec());
    };
    if first.get("hostname") == Some(local) {
        return Ok(primary.to_vec());
    }
    first.set("hostname", local).map_err(|e| e.to_string())?;
    Ok(pkg.render().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_node_is_component_wise() {
        let p = |s: &str| RelPath::new(s).unwrap();
        assert!(is_per_node(&p("etc/config/network")));
        assert!(is_per_node(&p("etc/dropbear/dropbear_ed25519_host_key")));
        assert!(is_per_node(&p("etc/ha-sync")));
        assert!(!is_per_node(&p("etc/config/network2")));
        assert!(!is_per_node(&p("etc/config/firewall")));
        assert!(!is_per_node(&p("etc/ha-syncx/a")));
    }

    #[test]
    fn hostname_is_kept_and_the_rest_is_the_primarys() {
        let primary =
            b"config system\n\toption hostname 'fw-primary'\n\toption zonename 'Europe/Rome'\n";
        let out = keep_hostname(primary, Some("fw-backup")).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(hostname_of(&text).as_deref(), Some("fw-backup"));
        assert!(text.contains("option zonename 'Europe/Rome'"));
        assert_eq!(keep_hostname(primary, None).unwrap(), primary);
        assert_eq!(keep_hostname(primary, Some("fw-primary")).unwrap(), primary);
        assert!(keep_hostname(b"config system\n\toption 'x", Some("b")).is_err());
    }
}
