//! The network records the primary exports to `/etc/ha/`, and their import on the backup.
//!
//! One JSON document per file (INCUMBENT.md): `wan_devices` is a list of device option maps
//! (`type`, `key` = section name, the rest options); `wan_interfaces`, `wg_interfaces`,
//! `ipsec_interfaces`, `tun_interfaces`, `wg_peers` and `routes` map a UCI section name to
//! its options; `hotspot` is `{"device": ..., "mac_address": ...}`. Option values are strings
//! or lists of strings (numbers and booleans are taken as their text).
//!
//! Import into this node's `/etc/config/network`: every section tagged `ns_tag` `ha` is
//! dropped and the records are created again, tagged, interfaces with `auto '0'` so they stay
//! down until NOTIFY_MASTER brings them up, routes as they are (enabled). A record whose
//! section name exists already takes that section's place (the backup's own `wan` is taken
//! over, as before), so a second import of the same records renders the same file and writes
//! nothing. The hotspot MAC goes on this node's device of that name as `ns_macaddr`, tagged
//! `ha_hotspot` so the next import can take it off again without dropping the device.

use crate::{at, HookError};
use serde_json::{Map, Value as Json};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use sync_core::uci::{Package, Section, Value};

pub const RECORDS_DIR: &str = "etc/ha";
pub const NETWORK: &str = "etc/config/network";
/// Records of interfaces, brought up on NOTIFY_MASTER and down on the backup.
pub const INTERFACE_RECORDS: &[&str] = &[
    "wan_interfaces",
    "wg_interfaces",
    "ipsec_interfaces",
    "tun_interfaces",
];
const TAG: &str = "ha";
const HOTSPOT_TAG: &str = "ha_hotspot";
/// Section name of a hotspot device created by the import (the node had none of that name).
const HOTSPOT_SECTION: &str = "ha_hotspot";

/// A record's options, as exported.
pub type Options = Map<String, Json>;

/// A WAN interface with static IPv4 addresses (mask stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WanAddr {
    pub iface: String,
    pub device: Option<String>,
    pub ips: Vec<String>,
}

fn bad(path: &Path, msg: impl Into<String>) -> HookError {
    HookError::Record {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn load(root: &Path, name: &str) -> Result<Option<(PathBuf, Json)>, HookError> {
    let path = root.join(RECORDS_DIR).join(name);
    let text = match sync_core::fsx::read_text(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(at(&path)(e)),
    };
    let v = serde_json::from_str(&text).map_err(|e| bad(&path, format!("not JSON: {e}")))?;
    Ok(Some((path, v)))
}

/// A record file that maps section names to option maps.
fn load_sections(root: &Path, name: &str) -> Result<Vec<(String, Options)>, HookError> {
    let Some((path, v)) = load(root, name)? else {
        return Ok(Vec::new());
    };
    let Json::Object(map) = v else {
        return Err(bad(&path, "expected an object of sections"));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Json::Object(o) => Ok((k, o)),
            _ => Err(bad(
                &path,
                format!("section {k:?}: expected an object of options"),
            )),
        })
        .collect()
}

/// Interface names of the interface records, in record order, each with its options.
pub fn interfaces(root: &Path) -> Result<Vec<(String, Options)>, HookError> {
    let mut out = Vec::new();
    for f in INTERFACE_RECORDS {
        out.extend(load_sections(root, f)?);
    }
    Ok(out)
}

/// WAN interfaces with their static IPv4 addresses and device.
pub fn wan_ipv4(root: &Path) -> Result<Vec<WanAddr>, HookError> {
    let mut out = Vec::new();
    for (name, opts) in load_sections(root, "wan_interfaces")? {
        let ips: Vec<String> = opts
            .get("ipaddr")
            .map(text_values)
            .unwrap_or_default()
            .into_iter()
            .map(|ip| ip.split('/').next().unwrap_or_default().to_string())
            .filter(|ip| !ip.is_empty() && !ip.contains(':'))
            .collect();
        if !ips.is_empty() {
            let device = opts
                .get("device")
                .and_then(|d| text_values(d).into_iter().next());
            out.push(WanAddr {
                iface: name,
                device,
                ips,
            });
        }
    }
    Ok(out)
}

fn scalar(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(if *b { "1" } else { "0" }.to_string()),
        _ => None,
    }
}

/// A JSON value as the list of texts UCI would hold.
pub fn text_values(v: &Json) -> Vec<String> {
    match v {
        Json::Array(a) => a.iter().filter_map(scalar).collect(),
        o => scalar(o).into_iter().collect(),
    }
}

fn uci_value(v: &Json) -> Option<Value> {
    match v {
        Json::Array(a) => Some(Value::List(a.iter().filter_map(scalar).collect())),
        o => scalar(o).map(Value::Single),
    }
}

/// Builds one tagged section from a record. Options UCI cannot name (e.g. `.type` from a
/// JSON dump) are skipped; a section name UCI cannot hold fails the whole import.
fn section(
    path: &Path,
    kind: &str,
    name: &str,
    opts: &Options,
    skip: &[&str],
) -> Result<Section, HookError> {
    let mut s =
        Section::new(kind, Some(name)).map_err(|e| bad(path, format!("section {name:?}: {e}")))?;
    for (k, v) in opts {
        if skip.contains(&k.as_str()) || k == "ns_tag" {
            continue;
        }
        let Some(val) = uci_value(v) else { continue };
        let res = match val {
            Value::Single(x) => s.set(k, &x),
            Value::List(l) => s.set_list(k, l),
        };
        if let Err(e) = res {
            tracing::warn!(
                "{}: section {name}: option {k:?} skipped: {e}",
                path.display()
            );
        }
    }
    Ok(s)
}

fn tagged(s: &Section, tag: &str) -> bool {
    s.get_list("ns_tag").iter().any(|t| t == tag)
}

fn add_tag(s: &mut Section, tag: &str) -> Result<(), HookError> {
    if !tagged(s, tag) {
        s.add_list("ns_tag", tag)?;
    }
    Ok(())
}

fn remove_tag(s: &mut Section, tag: &str) -> Result<(), HookError> {
    let rest: Vec<String> = s
        .get_list("ns_tag")
        .into_iter()
        .filter(|t| t != tag)
        .collect();
    s.set_list("ns_tag", rest)?;
    Ok(())
}

/// The sections the records describe, in import order.
/// One line per record the import writes, as the incumbent logged them (`Importing network
/// configuration: {...}`, the JSON of the section: its options, `type` and `key`).
pub fn describe_imported(root: &Path) -> Result<Vec<String>, HookError> {
    Ok(wanted(root)?
        .iter()
        .map(|s| {
            let mut m = serde_json::Map::new();
            for (k, v) in &s.options {
                // Secrets stay out of syslog (WireGuard keys, PPPoE passwords).
                let secret = k.contains("key") || k.contains("password") || k == "secret";
                let v = if secret {
                    serde_json::Value::from("***")
                } else {
                    serde_json::to_value(v).unwrap_or_default()
                };
                m.insert(k.clone(), v);
            }
            m.insert("type".into(), s.kind.clone().into());
            m.insert("key".into(), s.name.clone().unwrap_or_default().into());
            format!(
                "Importing network configuration: {}",
                serde_json::Value::Object(m)
            )
        })
        .collect())
}

fn wanted(root: &Path) -> Result<Vec<Section>, HookError> {
    let mut out = Vec::new();
    if let Some((path, v)) = load(root, "wan_devices")? {
        let Json::Array(devs) = v else {
            return Err(bad(&path, "expected a list of devices"));
        };
        for d in devs {
            let Json::Object(o) = d else {
                return Err(bad(&path, "expected a device object"));
            };
            let Some(key) = o.get("key").and_then(scalar) else {
                tracing::warn!("{}: device without key skipped", path.display());
                continue;
            };
            let kind = o
                .get("type")
                .and_then(scalar)
                .unwrap_or_else(|| "device".into());
            let mut s = section(&path, &kind, &key, &o, &["type", "key", "device_type"])?;
            if let Some(t) = o.get("device_type").and_then(scalar) {
                s.set("type", &t)
                    .map_err(|e| bad(&path, format!("device {key}: {e}")))?;
            }
            add_tag(&mut s, TAG)?;
            out.push(s);
        }
    }
    let dir = root.join(RECORDS_DIR);
    for &f in INTERFACE_RECORDS {
        for (name, opts) in load_sections(root, f)? {
            let mut s = section(&dir.join(f), "interface", &name, &opts, &["auto"])?;
            s.set("auto", "0")?;
            add_tag(&mut s, TAG)?;
            out.push(s);
        }
        if f == "wg_interfaces" {
            for (name, opts) in load_sections(root, "wg_peers")? {
                let kind = format!("wireguard_{}", name.split('_').next().unwrap_or(&name));
                let mut s = section(&dir.join("wg_peers"), &kind, &name, &opts, &[])?;
                add_tag(&mut s, TAG)?;
                out.push(s);
            }
        }
    }
    for (name, opts) in load_sections(root, "routes")? {
        let mut s = section(&dir.join("routes"), "route", &name, &opts, &[])?;
        add_tag(&mut s, TAG)?;
        out.push(s);
    }
    Ok(out)
}

/// `(device name, MAC)` of the hotspot record; a VLAN's MAC goes on its parent device.
fn hotspot(root: &Path) -> Result<Option<(String, String)>, HookError> {
    let Some((path, v)) = load(root, "hotspot")? else {
        return Ok(None);
    };
    let dev = v.get("device").and_then(scalar);
    let mac = v.get("mac_address").and_then(scalar);
    match (dev, mac) {
        (Some(d), Some(m)) if !d.is_empty() && !m.is_empty() => {
            let parent = d.split('.').next().unwrap_or(&d).to_string();
            Ok(Some((parent, m)))
        }
        _ => {
            tracing::warn!(
                "{}: no device or mac_address; hotspot MAC not imported",
                path.display()
            );
            Ok(None)
        }
    }
}

/// Imports the records into `<root>/etc/config/network`; whether the file changed.
pub fn import(root: &Path) -> Result<bool, HookError> {
    let path = root.join(NETWORK);
    let old = Package::load_or_empty(&path)?;
    let new_sections = wanted(root)?;
    let hotspot = hotspot(root)?;
    let mut by_name: HashMap<String, Section> = HashMap::new();
    let mut order = Vec::new();
    for s in new_sections {
        let n = s.name.clone().unwrap_or_default();
        if by_name.insert(n.clone(), s).is_none() {
            order.push(n);
        }
    }
    // The hotspot MAC goes on the node's own device of that name when it has one.
    let own_hotspot_dev = hotspot.as_ref().and_then(|(dev, _)| {
        old.sections.iter().position(|s| {
            s.kind == "device" && !tagged(s, TAG) && s.get("name") == Some(dev.as_str())
        })
    });
    if let (Some((dev, mac)), None) = (&hotspot, own_hotspot_dev) {
        let mut s = Section::new("device", Some(HOTSPOT_SECTION))?;
        s.set("name", dev)?;
        s.set("ns_macaddr", mac)?;
        add_tag(&mut s, TAG)?;
        if by_name.insert(HOTSPOT_SECTION.to_string(), s).is_none() {
            order.push(HOTSPOT_SECTION.to_string());
        }
    }
    let mut out = Package::default();
    for (i, s) in old.sections.iter().enumerate() {
        if let Some(n) = &s.name {
            if let Some(new) = by_name.remove(n) {
                out.sections.push(new);
                continue;
            }
        }
        if tagged(s, TAG) {
            continue;
        }
        let mut s = s.clone();
        if tagged(&s, HOTSPOT_TAG) {
            s.delete("ns_macaddr");
            remove_tag(&mut s, HOTSPOT_TAG)?;
        }
        if own_hotspot_dev == Some(i) {
            if let Some((_, mac)) = &hotspot {
                s.set("ns_macaddr", mac)?;
                add_tag(&mut s, HOTSPOT_TAG)?;
            }
        }
        out.sections.push(s);
    }
    for n in order {
        if let Some(s) = by_name.remove(&n) {
            out.sections.push(s);
        }
    }
    if out.render() == old.render() {
        return Ok(false);
    }
    out.write_atomic(&path)?;
    Ok(true)
}

/// Devices carrying an imported hotspot MAC: `(device name, MAC)`.
pub fn hotspot_devices(root: &Path) -> Result<Vec<(String, String)>, HookError> {
    let net = Package::load_or_empty(&root.join(NETWORK))?;
    Ok(net
        .sections_of_kind("device")
        .filter(|s| tagged(s, TAG) || tagged(s, HOTSPOT_TAG))
        .filter_map(|s| Some((s.get("name")?.to_string(), s.get("ns_macaddr")?.to_string())))
        .collect())
}
