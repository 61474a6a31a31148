//! Which services a backup keeps stopped, and which service a synced file belongs to.

use std::collections::BTreeSet;
use std::path::Path;

/// Stopped on NOTIFY_BACKUP (and FAULT, STOP), restarted on NOTIFY_MASTER (INCUMBENT.md).
pub(crate) const KEPT_STOPPED: &[&str] = &[
    "dnsmasq",
    "ns-binding",
    "acme",
    "swanctl",
    "mwan3",
    "openvpn",
    "snort",
    "adblock",
    "banip",
    "dedalo",
    "flashstart",
    "netifyd",
    // netifyd's companions (800-netifyd): the DPI engine, its updaters and reports.
    "dpi",
    "dpireport",
    "dpi-data-update",
    "dpi-license-update",
    "dpi-update",
    "ns-flows",
    "ns-stats",
    "ns-ui",
    "ddns",
    "ns-plug",
];

/// Restarted on NOTIFY_MASTER, in this order: the kept-stopped services plus nginx, which
/// keeps running on a backup (restart only).
pub(crate) const RESTARTED_ON_MASTER: &[&str] = &[
    "dnsmasq",
    "ns-binding",
    "acme",
    "swanctl",
    "mwan3",
    "openvpn",
    "snort",
    "nginx",
    "adblock",
    "banip",
    "dedalo",
    "flashstart",
    "netifyd",
    "dpi",
    "dpireport",
    "dpi-data-update",
    "dpi-license-update",
    "dpi-update",
    "ns-flows",
    "ns-stats",
    "ns-ui",
    "ddns",
    "ns-plug",
];

/// Files and directories (relative to the root) whose service is not simply named after
/// the `etc/config/<name>` file. A path below a directory here belongs to its service.
const OWNERS: &[(&str, &str)] = &[
    ("etc/config/dhcp", "dnsmasq"),
    ("etc/dnsmasq.conf", "dnsmasq"),
    ("etc/dnsmasq.d", "dnsmasq"),
    ("etc/ethers", "dnsmasq"),
    ("etc/firewall.user", "firewall"),
    ("etc/firewall.d", "firewall"),
    ("etc/nftables.d", "firewall"),
    ("etc/config/ipsec", "swanctl"),
    ("etc/swanctl", "swanctl"),
    ("etc/openvpn", "openvpn"),
    ("etc/nginx", "nginx"),
    ("etc/acme", "acme"),
    ("etc/ssl/acme", "nginx"),
    ("etc/adblock", "adblock"),
    ("etc/banip", "banip"),
    ("etc/netifyd", "netifyd"),
    ("etc/netifyd.conf", "netifyd"),
    ("etc/snort", "snort"),
    // 500-netmap: its init script is not named after its UCI file.
    ("etc/config/netmap", "ns-netmap"),
    ("var/ns-snort", "snort"),
];

/// The service whose configuration `rel` (relative path) is, if any.
pub(crate) fn owner(rel: &str) -> Option<String> {
    for (p, svc) in OWNERS {
        if rel == *p || (rel.starts_with(p) && rel.as_bytes().get(p.len()) == Some(&b'/')) {
            return Some((*svc).to_string());
        }
    }
    let name = rel.strip_prefix("etc/config/")?;
    (!name.is_empty() && !name.contains('/')).then(|| name.to_string())
}

/// Services to reload for `changed` router paths: those with an init script under `root`,
/// minus the kept-stopped ones unless this node is master (a reload would start them).
pub(crate) fn to_reload(root: &Path, changed: &[String], master: bool) -> Vec<String> {
    let mut set = BTreeSet::new();
    for c in changed {
        let rel = c.trim_start_matches('/');
        if let Some(svc) = owner(rel) {
            if !master && KEPT_STOPPED.contains(&svc.as_str()) {
                continue;
            }
            if has_init_script(root, &svc) {
                set.insert(svc);
            }
        }
    }
    set.into_iter().collect()
}

pub(crate) fn has_init_script(root: &Path, svc: &str) -> bool {
    !svc.contains('/') && root.join("etc/init.d").join(svc).is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        assert_eq!(owner("etc/config/firewall").as_deref(), Some("firewall"));
        assert_eq!(owner("etc/config/dhcp").as_deref(), Some("dnsmasq"));
        assert_eq!(owner("etc/openvpn/server.conf").as_deref(), Some("openvpn"));
        assert_eq!(owner("etc/openvpnx").as_deref(), None);
        assert_eq!(owner("etc/ha/wan_interfaces").as_deref(), None);
        assert_eq!(owner("etc/config/sub/x").as_deref(), None);
    }
}
