//! The primary's side of the network records: `/etc/ha` regenerated from its UCI before every
//! sync, as `ns-ha-export` does (INCUMBENT-SOURCE.md §3.5); the backup imports them
//! ([`crate::records`]).
//!
//! Runs when this node is the primary (any VRRP state) or the VRRP master (a backup during a
//! failover), like the incumbent. Each file is one JSON document; a file is written (atomically)
//! only when its content changes, so an unchanged export does not trigger a sync, and a record
//! file that no longer applies (`hotspot` once dedalo is off) is removed.
//!
//! - `wan_interfaces`: the interfaces of the firewall zone `ns_wan`, by name, with their options;
//! - `wan_devices`: the devices under them, as a list of option maps with `type` (`device` or
//!   `interface`) and `key` (the section name): a VLAN and its parent, a bridge and its ports, a
//!   bond (`bond-X`, the `X` bonding interface) and its slaves; `@alias` devices are skipped;
//! - `routes`: every `route` and `route6` section; `wg_interfaces`, `ipsec_interfaces`: the
//!   interfaces named `wg*`, `ipsec*`; `tun_interfaces`: those whose device is `tun*`;
//!   `wg_peers`: the `wireguard_*` sections; `hotspot`: dedalo's interface and its MAC, when
//!   dedalo is enabled.
//!
//! Anonymous sections get the name the import needs: a device its `name` option made a UCI
//! name (`br-lan` -> `br_lan`), a route `route<N>`, a WireGuard peer `<iface>_peer<N>` (the
//! import types it back as `wireguard_<iface>`).

use crate::{at, HookError};
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeSet;
use std::path::Path;
use sync_core::fsx::{self, Durability};
use sync_core::node::{Node, Role, VrrpState};
use sync_core::uci::{Package, Section, Value};

use crate::records::RECORDS_DIR;

/// What an export changed, by file name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Exported {
    pub written: Vec<String>,
    pub removed: Vec<String>,
}

fn options(s: &Section) -> Map<String, Json> {
    s.options
        .iter()
        .map(|(k, v)| {
            let j = match v {
                Value::Single(x) => json!(x),
                Value::List(l) => json!(l),
            };
            (k.clone(), j)
        })
        .collect()
}

/// A UCI section name made of `text` (`br-lan` -> `br_lan`).
fn uci_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn interfaces(net: &Package) -> impl Iterator<Item = (&str, &Section)> {
    net.sections
        .iter()
        .filter(|s| s.kind == "interface")
        .filter_map(|s| Some((s.name.as_deref()?, s)))
}

/// The `device` section describing device `name`, if any.
fn device_section<'a>(net: &'a Package, name: &str) -> Option<&'a Section> {
    net.sections
        .iter()
        .find(|s| s.kind == "device" && s.get("name") == Some(name))
}

/// Devices under `dev`, depth first, each once.
fn collect_devices(net: &Package, dev: &str, seen: &mut BTreeSet<String>, out: &mut Vec<Json>) {
    if dev.is_empty() || dev.starts_with('@') || !seen.insert(dev.to_string()) {
        return;
    }
    if let Some(bond) = dev.strip_prefix("bond-") {
        if let Some((name, s)) = interfaces(net).find(|(n, _)| *n == bond) {
            let mut o = options(s);
            o.insert("type".into(), json!("interface"));
            o.insert("key".into(), json!(name));
            out.push(Json::Object(o));
            for slave in s.get_list("slaves") {
                collect_devices(net, &slave, seen, out);
            }
        }
        return;
    }
    if let Some(s) = device_section(net, dev) {
        let mut o = options(s);
        let key = s.name.clone().unwrap_or_else(|| uci_name(dev));
        // The record's `type` is the section type; the device's own (`bridge`, `8021q`)
        // travels as `device_type` (the incumbent's export lost it).
        if let Some(t) = o.remove("type") {
            o.insert("device_type".into(), t);
        }
        o.insert("type".into(), json!("device"));
        o.insert("key".into(), json!(key));
        out.push(Json::Object(o));
        for port in s.get_list("ports") {
            collect_devices(net, &port, seen, out);
        }
        if let Some(parent) = s.get("ifname") {
            collect_devices(net, parent, seen, out);
        }
    } else if let Some((parent, _)) = dev.rsplit_once('.') {
        // A VLAN without a device section (`eth1.100`): its parent may have one.
        collect_devices(net, parent, seen, out);
    }
}

/// The records of `root`'s UCI, by file name (`hotspot` only when it applies).
pub fn records(root: &Path) -> Result<Vec<(&'static str, Json)>, HookError> {
    let node = Node::new(root);
    let load = |name: &str| {
        let p = node.path(&format!("/etc/config/{name}"));
        Package::load_or_empty(&p).map_err(HookError::from)
    };
    let (net, fw, dedalo) = (load("network")?, load("firewall")?, load("dedalo")?);

    let wan_names: Vec<String> = fw
        .section("ns_wan")
        .map(|z| z.get_list("network"))
        .unwrap_or_default();
    let mut wan_interfaces = Map::new();
    let mut wan_devices = Vec::new();
    let mut seen = BTreeSet::new();
    for name in &wan_names {
        if let Some((_, s)) = interfaces(&net).find(|(n, _)| n == name) {
            wan_interfaces.insert(name.clone(), Json::Object(options(s)));
            if let Some(dev) = s.get("device") {
                collect_devices(&net, dev, &mut seen, &mut wan_devices);
            }
        }
    }
    let by_name = |pred: &dyn Fn(&str, &Section) -> bool| -> Json {
        Json::Object(
            interfaces(&net)
                .filter(|(n, s)| pred(n, s))
                .map(|(n, s)| (n.to_string(), Json::Object(options(s))))
                .collect(),
        )
    };
    let mut routes = Map::new();
    for (i, s) in net
        .sections
        .iter()
        .filter(|s| s.kind == "route" || s.kind == "route6")
        .enumerate()
    {
        let key = s.name.clone().unwrap_or_else(|| format!("route{i}"));
        routes.insert(key, Json::Object(options(s)));
    }
    let mut wg_peers = Map::new();
    for (i, s) in net
        .sections
        .iter()
        .filter(|s| s.kind.starts_with("wireguard_"))
        .enumerate()
    {
        let iface = &s.kind["wireguard_".len()..];
        let key = s.name.clone().unwrap_or_else(|| format!("{iface}_peer{i}"));
        wg_peers.insert(key, Json::Object(options(s)));
    }
    let mut out = vec![
        ("wan_devices", Json::Array(wan_devices)),
        ("wan_interfaces", Json::Object(wan_interfaces)),
        ("routes", Json::Object(routes)),
        ("ipsec_interfaces", by_name(&|n, _| n.starts_with("ipsec"))),
        ("wg_interfaces", by_name(&|n, _| n.starts_with("wg"))),
        ("wg_peers", Json::Object(wg_peers)),
        (
            "tun_interfaces",
            by_name(&|_, s| s.get("device").is_some_and(|d| d.starts_with("tun"))),
        ),
    ];
    let hotspot = dedalo
        .sections
        .iter()
        .find(|s| s.kind == "dedalo")
        .filter(|s| s.get("disabled") != Some("1"))
        .and_then(|s| s.get("interface").map(str::to_string));
    if let Some(dev) = hotspot {
        let mac = std::fs::read_to_string(root.join("sys/class/net").join(&dev).join("address"))
            .map(|m| m.trim().to_string())
            .unwrap_or_default();
        out.push(("hotspot", json!({"device": dev, "mac_address": mac})));
    }
    Ok(out)
}

/// Regenerates `/etc/ha` when this node is the primary or the master and has a network
/// configuration; `None` otherwise.
pub fn export(root: &Path) -> Result<Option<Exported>, HookError> {
    let node = Node::new(root);
    if node.role() != Some(Role::Primary) && node.vrrp_state() != Some(VrrpState::Master) {
        return Ok(None);
    }
    // No network configuration, no records: a root that is not a router's (a test tree, a
    // node being set up) keeps whatever its /etc/ha holds.
    if !node.path("/etc/config/network").exists() {
        return Ok(None);
    }
    let dir = root.join(RECORDS_DIR);
    let mut done = Exported::default();
    let recs = records(root)?;
    let names: BTreeSet<&str> = recs.iter().map(|(n, _)| *n).collect();
    for (name, value) in &recs {
        let p = dir.join(name);
        let text = format!("{value}\n");
        if std::fs::read(&p).ok().as_deref() == Some(text.as_bytes()) {
            continue;
        }
        fsx::write_atomic(&p, text.as_bytes(), 0o644, Durability::Durable).map_err(at(&p))?;
        done.written.push(name.to_string());
    }
    // Only the records this export owns go; anything else an admin keeps there stays.
    for stale in ["hotspot"] {
        if !names.contains(stale) && dir.join(stale).exists() {
            std::fs::remove_file(dir.join(stale)).map_err(at(&dir.join(stale)))?;
            done.removed.push(stale.to_string());
        }
    }
    if !done.written.is_empty() || !done.removed.is_empty() {
        tracing::info!(
            "exported network records to {}: {}",
            dir.display(),
            done.written
                .iter()
                .chain(&done.removed)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(Some(done))
}
