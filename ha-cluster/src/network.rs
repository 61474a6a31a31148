//! What the actions read from the node's network and DHCP configuration
//! (`/etc/config/network`, `/etc/config/dhcp`), and the LAN requirements of the spec.

use std::net::Ipv4Addr;
use std::path::Path;

use sync_core::uci::{Package, Section};

use crate::addr::Cidr;
use crate::ClusterError;

pub const NETWORK: &str = "etc/config/network";
pub const DHCP: &str = "etc/config/dhcp";

/// A `config interface` of the network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub proto: String,
    /// The Linux device (`br-lan`, `eth1`); empty when none is configured.
    pub device: String,
    /// The static IPv4 address, when `proto` is `static` and one is configured.
    pub addr: Option<Cidr>,
}

pub fn load(root: &Path, rel: &str) -> Result<Package, ClusterError> {
    Ok(Package::load_or_empty(&root.join(rel))?)
}

fn iface_of(s: &Section) -> Option<Iface> {
    let name = s.name.clone()?;
    let proto = s.get("proto").unwrap_or("none").to_string();
    // OpenWrt >= 21.02 says `device`; older configurations `ifname` (+ `type bridge`).
    let device = match (s.get("device"), s.get("ifname"), s.get("type")) {
        (Some(d), _, _) => d.to_string(),
        (None, Some(_), Some("bridge")) => format!("br-{name}"),
        (None, Some(i), _) => i.split_whitespace().next().unwrap_or("").to_string(),
        (None, None, _) => String::new(),
    };
    let addr = if proto == "static" {
        let first = s.get_list("ipaddr").into_iter().next();
        first.and_then(|a| match a.parse::<Cidr>() {
            Ok(c) => Some(c),
            Err(_) => {
                let ip: Ipv4Addr = a.parse().ok()?;
                let mask: Ipv4Addr = s.get("netmask").unwrap_or("255.255.255.0").parse().ok()?;
                Cidr::from_netmask(ip, mask)
            }
        })
    } else {
        None
    };
    Some(Iface {
        name,
        proto,
        device,
        addr,
    })
}

/// Every named `config interface` except loopback, in file order.
pub fn interfaces(root: &Path) -> Result<Vec<Iface>, ClusterError> {
    let net = load(root, NETWORK)?;
    Ok(net
        .sections_of_kind("interface")
        .filter_map(iface_of)
        .filter(|i| i.name != "loopback")
        .collect())
}

/// The interface named `name`, or an error listing the ones that exist.
pub fn interface(root: &Path, name: &str) -> Result<Iface, ClusterError> {
    let all = interfaces(root)?;
    all.iter()
        .find(|i| i.name == name)
        .cloned()
        .ok_or_else(|| ClusterError::UnknownInterface {
            name: name.to_string(),
            known: all.iter().map(|i| i.name.clone()).collect(),
        })
}

/// The static interface holding `ip`, if any.
pub(crate) fn interface_with_address(
    root: &Path,
    ip: Ipv4Addr,
) -> Result<Option<Iface>, ClusterError> {
    Ok(interfaces(root)?
        .into_iter()
        .find(|i| i.addr.is_some_and(|a| a.addr == ip)))
}

/// A DHCP server section serving one interface.
struct DhcpServer {
    section: String,
    options: Vec<String>,
    force: bool,
}

/// The DHCP server of `iface`, when one is configured and not `ignore`d.
fn dhcp_server(root: &Path, iface: &str) -> Result<Option<DhcpServer>, ClusterError> {
    let dhcp = load(root, DHCP)?;
    for (i, s) in dhcp.sections_of_kind("dhcp").enumerate() {
        if s.get("interface") != Some(iface) || s.get("ignore") == Some("1") {
            continue;
        }
        return Ok(Some(DhcpServer {
            section: s.name.clone().unwrap_or_else(|| format!("@dhcp[{i}]")),
            options: s.get_list("dhcp_option"),
            force: s.get("force") == Some("1"),
        }));
    }
    Ok(None)
}

/// The value of DHCP option `code` (`3,192.168.1.1` or `option:router,192.168.1.1`).
fn dhcp_option(options: &[String], code: u8, name: &str) -> Option<String> {
    options.iter().find_map(|o| {
        let (k, v) = o.split_once(',')?;
        let k = k.trim();
        (k == code.to_string() || k == format!("option:{name}")).then(|| v.trim().to_string())
    })
}

/// The requirements the spec sets on a LAN interface: a static IPv4 address, and, when a DHCP
/// server runs on it, option 3 = the virtual IP, option 6 set, and (for extra LANs) force
/// start. Returns the interface, or every problem found (each saying what to change).
pub(crate) fn check_lan(
    root: &Path,
    name: &str,
    vip: Option<Cidr>,
    extra: bool,
) -> Result<Iface, ClusterError> {
    let iface = interface(root, name)?;
    let mut problems = Vec::new();
    if iface.proto != "static" {
        problems.push(format!(
            "interface {name} uses proto {}: HA needs a static IPv4 address on it; set \
             network.{name}.proto=static with an ipaddr and netmask",
            iface.proto
        ));
    } else if iface.addr.is_none() {
        problems.push(format!(
            "interface {name} is static but has no valid IPv4 address: set network.{name}.ipaddr \
             (and netmask)"
        ));
    }
    if iface.device.is_empty() {
        problems.push(format!(
            "interface {name} has no device: set network.{name}.device"
        ));
    }
    if let Some(d) = dhcp_server(root, name)? {
        let s = &d.section;
        if extra && !d.force {
            problems.push(format!(
                "a DHCP server runs on {name} without the force start option: set \
                 dhcp.{s}.force=1"
            ));
        }
        let want = vip.map_or("<virtual IP>".to_string(), |v| v.addr.to_string());
        match dhcp_option(&d.options, 3, "router") {
            None => problems.push(format!(
                "a DHCP server runs on {name} but DHCP option 3 (router) is not set: add \
                 dhcp_option '3,{want}' to dhcp.{s}"
            )),
            Some(r) => {
                let own = iface.addr.is_some_and(|a| r == a.addr.to_string());
                let wrong = vip.is_some_and(|v| r != v.addr.to_string());
                if own || wrong {
                    problems.push(format!(
                        "DHCP option 3 (router) of {name} is {r}{}: clients would lose their \
                         gateway on a switchover; set it to the virtual IP ('3,{want}' in \
                         dhcp.{s})",
                        if own { ", this node's own address" } else { "" }
                    ));
                }
            }
        }
        if dhcp_option(&d.options, 6, "dns-server").is_none() {
            problems.push(format!(
                "a DHCP server runs on {name} but DHCP option 6 (DNS server) is not set: add \
                 dhcp_option '6,{want}' (or a DNS server reachable while the primary is down) \
                 to dhcp.{s}"
            ));
        }
    }
    if let (Some(v), Some(a)) = (vip, iface.addr) {
        if !a.contains(v.addr) || v.prefix != a.prefix {
            problems.push(format!(
                "virtual IP {v} is not in the subnet of {name} ({}/{}): pick an unused address \
                 of that subnet, with the same prefix length",
                a.network(),
                a.prefix
            ));
        } else if v.addr == a.network() || v.addr == a.broadcast() {
            problems.push(format!(
                "virtual IP {v} is the network or broadcast address of {name}: pick a host \
                 address"
            ));
        } else if v.addr == a.addr {
            problems.push(format!(
                "virtual IP {v} is this node's own address on {name}: pick an unused address"
            ));
        }
    }
    if problems.is_empty() {
        Ok(iface)
    } else {
        Err(ClusterError::Requirements(problems))
    }
}

/// remove-interface on the primary: interface `name` takes its virtual IP as its own address
/// (in place of `own`, same prefix), so clients that keep the virtual IP as their gateway
/// (DHCP option 3) keep reaching this node. Returns whether the configuration changed.
pub(crate) fn take_over_address(
    root: &Path,
    name: &str,
    own: Ipv4Addr,
    vip: Ipv4Addr,
) -> Result<bool, ClusterError> {
    let path = root.join(NETWORK);
    let mut net = load(root, NETWORK)?;
    let Some(s) = net.section_mut(name) else {
        return Ok(false);
    };
    let swap = |v: &str| -> Option<String> {
        match v.split_once('/') {
            Some((ip, len)) if ip.parse() == Ok(own) => Some(format!("{vip}/{len}")),
            None if v.parse() == Ok(own) => Some(vip.to_string()),
            _ => None,
        }
    };
    let changed = match s.value("ipaddr").cloned() {
        Some(sync_core::uci::Value::Single(v)) => match swap(&v) {
            Some(new) => {
                s.set("ipaddr", &new)?;
                true
            }
            None => false,
        },
        Some(sync_core::uci::Value::List(vs)) => {
            let new: Vec<String> = vs.iter().map(|v| swap(v).unwrap_or(v.clone())).collect();
            let changed = new != vs;
            if changed {
                s.set_list("ipaddr", new)?;
            }
            changed
        }
        None => false,
    };
    if changed {
        net.write_atomic(&path)?;
    }
    Ok(changed)
}

/// remove-interface on the backup: its copy of interface `name` goes (outside the cluster it
/// would be a second router, and DHCP server, on the primary's segment). Returns whether it
/// was there.
pub fn remove_interface(root: &Path, name: &str) -> Result<bool, ClusterError> {
    let path = root.join(NETWORK);
    let mut net = load(root, NETWORK)?;
    if net.section(name).is_none_or(|s| s.kind != "interface") {
        return Ok(false);
    }
    net.remove_section(name);
    net.write_atomic(&path)?;
    Ok(true)
}
