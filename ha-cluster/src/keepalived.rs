//! The cluster as UCI sections of `/etc/config/keepalived` (what OpenWrt's init script turns
//! into `/tmp/keepalived.conf`), and our own renderer of `keepalived.conf` for hosts without
//! that init script and for `show-config --render`.
//!
//! One VRRP instance carries every virtual IP (a switchover moves all of them together):
//!
//! | section | type | what |
//! |---|---|---|
//! | `primary` / `backup` | `vrrp_instance` | the role (the sync reads it), VRID 100, priority 100/50, PASS auth, unicast to the peer |
//! | `ha_peer` | `peer` | the other node: `address`, the agent's `ssh_port`/`ssh_key`, `sync_*` lists |
//! | `<if>_ipaddress` | `ipaddress` | the virtual IP of HA interface `<if>` (`name=<if>_ha`, `label_suffix=ha`, `ns_link=network/<if>`) |
//! | `<if>_<ip>_ipaddress` | `ipaddress` | an extra VIP (`add-vip`) on `<if>` |
//! | `<if>_track` | `track_interface` | the device of an extra HA interface `<if>`: link down there = FAULT, so the peer takes over (the main LAN's device is the instance's own interface, which keepalived tracks by itself) |
//!
//! What the incumbent got wrong and this does not: section names come from the real interface
//! name (never a hard-coded `lan_*`); a device whose `<dev>:ha` label would exceed the kernel's
//! 15 characters is refused with the limit named; the VRRP password is generated once at init
//! and carried over by every later change; no `track_script` ties sync health to VRRP
//! priority (a failing sync must never move the virtual IPs). The one script is the primary's
//! catch-up gate ([`CATCHUP_SCRIPT`]): it holds a *returning* primary below a reachable,
//! master backup whose changes it has not pulled yet, for a bounded time, and never while the
//! backup is down.
//!
//! The interfaces and node addresses of the cluster travel between nodes as a [`Spec`]; each
//! node writes its own sections from it ([`write`]) and reads it back ([`read`]).
//!
//! What keepalived itself reports (its state and statistics dumps, and the virtual IPs of
//! these sections as `ha-sync status` shows them) is read by `sync_core::keepalived`: the
//! daemon and `ha-sync status` in sync-agent read it too, and sync-agent cannot depend on this
//! crate.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use sync_core::node;
use sync_core::uci::Package;

use crate::addr::Cidr;
use crate::{role_section, ClusterError, Role};

/// The VRRP router id of the cluster (the incumbent's).
pub(crate) const VRID: u8 = 100;
pub(crate) const PRIORITY_PRIMARY: u8 = 100;
pub(crate) const PRIORITY_BACKUP: u8 = 50;
/// The instance name keepalived reports in `NAME=` to the hooks.
pub(crate) const INSTANCE_NAME: &str = "ha";
pub(crate) const PEER_SECTION: &str = "ha_peer";
/// The label `<device>:ha` keepalived gives each virtual IP (so `ip addr` shows which are
/// virtual); Linux caps a label at IFNAMSIZ - 1 = 15 bytes.
pub(crate) const LABEL_SUFFIX: &str = "ha";
pub(crate) const MAX_LABEL: usize = 15;

/// The incumbent's default `sync_list`.
pub const DEFAULT_SYNC_LIST: &[&str] = &[
    "/etc/ha",
    "/etc/acme",
    "/etc/ssl/acme",
    "/etc/openvpn",
    "/etc/nginx",
    "/etc/adblock",
    "/etc/banip",
    "/etc/netifyd",
    "/tmp/dhcp.leases",
    "/var/ns-snort",
    "/tmp/banIP-backup",
    "/tmp/adblock-Backup",
];

/// The incumbent's default `exclude_list`.
pub const DEFAULT_EXCLUDE_LIST: &[&str] = &[
    "/etc/config/network",
    "/etc/config/keepalived",
    "/etc/dropbear/authorized_keys",
    "/etc/conntrackd/conntrackd.conf",
];

/// One HA interface: its virtual IP and both nodes' own addresses on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaIface {
    /// The network interface (`lan`, `lan2`, `dmz`).
    pub name: String,
    /// Its device on the node that wrote the spec (each node writes its own).
    pub device: String,
    pub vip: Cidr,
    pub primary: Ipv4Addr,
    pub backup: Ipv4Addr,
}

/// An extra virtual IP on an HA interface (`add-vip`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    pub interface: String,
    pub address: Cidr,
}

/// The cluster, as both nodes share it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub vrid: u8,
    /// The VRRP PASS secret (8 hex characters), generated once at init.
    pub auth_pass: String,
    /// HA interfaces; the first is the main LAN, which carries VRRP and the sync.
    pub interfaces: Vec<HaIface>,
    pub aliases: Vec<Alias>,
}

impl Spec {
    pub fn main(&self) -> Option<&HaIface> {
        self.interfaces.first()
    }

    pub fn interface(&self, name: &str) -> Option<&HaIface> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// Every virtual IP: the interfaces' and the aliases'.
    pub fn vips(&self) -> Vec<Cidr> {
        self.interfaces
            .iter()
            .map(|i| i.vip)
            .chain(self.aliases.iter().map(|a| a.address))
            .collect()
    }

    /// This node's and the peer's addresses on the main LAN.
    pub fn addresses(&self, role: Role) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let m = self.main()?;
        Some(match role {
            Role::Primary => (m.primary, m.backup),
            Role::Backup => (m.backup, m.primary),
        })
    }
}

/// A random VRRP PASS secret: 8 hex characters (PASS authentication keeps 8 bytes).
pub(crate) fn generate_password() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Refuses a device whose `<dev>:ha` label would not fit in a Linux label.
pub(crate) fn check_label(device: &str) -> Result<(), ClusterError> {
    let label = format!("{device}:{LABEL_SUFFIX}");
    if label.len() > MAX_LABEL {
        return Err(ClusterError::LabelTooLong {
            device: device.to_string(),
            label,
        });
    }
    Ok(())
}

fn ipaddress_section(iface: &str) -> String {
    format!("{iface}_ipaddress")
}

fn alias_section(a: &Alias) -> String {
    format!("{}_{}_ipaddress", a.interface, a.address.underscored())
}

fn track_section(iface: &str) -> String {
    format!("{iface}_track")
}

fn link(iface: &str) -> String {
    format!("network/{iface}")
}

/// The role the UCI configures (`primary` / `backup` section), if any.
pub fn role_of(pkg: &Package) -> Option<Role> {
    if pkg.section("primary").is_some() {
        Some(Role::Primary)
    } else if pkg.section("backup").is_some() {
        Some(Role::Backup)
    } else {
        None
    }
}

/// Reads the cluster back from this node's sections; `None` when HA is not configured.
pub fn read(pkg: &Package) -> Result<Option<(Role, Spec)>, ClusterError> {
    let Some(role) = role_of(pkg) else {
        return Ok(None);
    };
    let inst = pkg
        .section(role_section(role))
        .ok_or_else(|| ClusterError::Corrupt("no vrrp_instance section".into()))?;
    let vrid = inst
        .get("virtual_router_id")
        .and_then(|v| v.parse().ok())
        .unwrap_or(VRID);
    let auth_pass = inst.get("auth_pass").unwrap_or_default().to_string();
    let mut spec = Spec {
        vrid,
        auth_pass,
        interfaces: Vec::new(),
        aliases: Vec::new(),
    };
    let bad = |name: &str, what: &str| {
        ClusterError::Corrupt(format!(
            "keepalived.{name}: {what}; fix it with uci or run `ns-ha-config reset`"
        ))
    };
    for vip_name in inst.get_list("virtual_ipaddress") {
        let Some(s) = pkg
            .sections_of_kind("ipaddress")
            .find(|s| s.get("name") == Some(vip_name.as_str()))
        else {
            continue;
        };
        let section = s.name.clone().unwrap_or_default();
        let Some(iface) = s.get("ns_link").and_then(|l| l.strip_prefix("network/")) else {
            continue;
        };
        let address: Cidr = s
            .get("address")
            .unwrap_or_default()
            .parse()
            .map_err(|e| bad(&section, &format!("address: {e}")))?;
        if section == ipaddress_section(iface) {
            let ip = |opt: &str| -> Result<Ipv4Addr, ClusterError> {
                s.get(opt)
                    .unwrap_or_default()
                    .parse()
                    .map_err(|_| bad(&section, &format!("{opt} is not an IPv4 address")))
            };
            spec.interfaces.push(HaIface {
                name: iface.to_string(),
                device: s.get("device").unwrap_or_default().to_string(),
                vip: address,
                primary: ip("ns_primary_address")?,
                backup: ip("ns_backup_address")?,
            });
        } else {
            spec.aliases.push(Alias {
                interface: iface.to_string(),
                address,
            });
        }
    }
    Ok(Some((role, spec)))
}

/// Whether the section is one [`write`] owns.
/// The options of the VRRP instance this module decides; any other is the admin's.
const INSTANCE_OPTIONS: &[&str] = &[
    "name",
    "state",
    "interface",
    "virtual_router_id",
    "priority",
    "advert_int",
    "auth_type",
    "auth_pass",
    "unicast_src_ip",
    "unicast_peer",
    "virtual_ipaddress",
    "track_interface",
    "track_script",
];

/// The catch-up gate (issue 11, item 3): on the primary, a `vrrp_script` running
/// `ha-sync caught-up` lowers its priority below the backup's while the acting backup holds
/// changes not yet pulled (bounded by `ha_peer.catchup_wait`; never while the peer is down).
pub const CATCHUP_SCRIPT: &str = "ha_catchup";
/// Its `track_script` section (named by the instance's `track_script` list).
pub const CATCHUP_TRACK: &str = "ha_catchup_track";
/// The command keepalived runs.
pub const CATCHUP_COMMAND: &str = "/usr/sbin/ha-sync caught-up";
/// Applied while the check fails: the primary's 100 goes below the backup's 50.
const CATCHUP_WEIGHT: i32 = -60;
/// The incumbent's sync-as-vrrp_script sections, replaced by the gate (INCUMBENT-SOURCE §1.1).
const INCUMBENT_SCRIPTS: &[&str] = &["ha_sync", "ha_sender", "ha_receiver"];

/// Whether `name` is one of the incumbent's sync-as-vrrp_script sections.
pub fn is_incumbent_script(name: &str) -> bool {
    INCUMBENT_SCRIPTS.contains(&name)
}

/// The primary's catch-up gate: its `vrrp_script`, its `track_script`, and the instance's
/// `track_script` list naming it; whether anything changed.
pub fn add_catchup(pkg: &mut Package) -> Result<bool, ClusterError> {
    let before = pkg.clone();
    let script = pkg.ensure_section("vrrp_script", CATCHUP_SCRIPT)?;
    script.set("name", CATCHUP_SCRIPT)?;
    script.set("script", CATCHUP_COMMAND)?;
    // Every 5 s, up to 10 s for a pull; failed from the start, so a primary coming back
    // does not preempt before the first check has pulled.
    script.set("interval", "5")?;
    script.set("timeout", "10")?;
    script.set("weight", &CATCHUP_WEIGHT.to_string())?;
    script.set("fall", "1")?;
    script.set("rise", "1")?;
    script.set("init_fail", "1")?;
    let track = pkg.ensure_section("track_script", CATCHUP_TRACK)?;
    track.set("name", CATCHUP_TRACK)?;
    track.set("value", CATCHUP_SCRIPT)?;
    track.set("weight", &CATCHUP_WEIGHT.to_string())?;
    if let Some(inst) = pkg.section_mut(role_section(Role::Primary)) {
        let mut list = inst.get_list("track_script");
        if !list.iter().any(|t| t == CATCHUP_TRACK) {
            list.push(CATCHUP_TRACK.to_string());
            inst.set_list("track_script", list)?;
        }
    }
    Ok(*pkg != before)
}

fn owned(s: &sync_core::uci::Section) -> bool {
    matches!(s.name.as_deref(), Some("primary") | Some("backup"))
        || s.name.as_deref().is_some_and(|n| {
            n == CATCHUP_SCRIPT || n == CATCHUP_TRACK || INCUMBENT_SCRIPTS.contains(&n)
        })
        || (matches!(s.kind.as_str(), "ipaddress" | "track_interface")
            && s.get("ns_link").is_some_and(|l| l.starts_with("network/")))
}

/// Replaces this node's cluster sections with `spec` for `role`; `device` gives the node's
/// own device of an HA interface. Sections that are not ours (and the `sync_*` options of
/// `ha_peer`) are kept as they are.
pub fn write(
    pkg: &mut Package,
    spec: &Spec,
    role: Role,
    device: &dyn Fn(&HaIface) -> String,
) -> Result<(), ClusterError> {
    let (local, peer) = spec
        .addresses(role)
        .ok_or_else(|| ClusterError::Corrupt("a cluster needs at least its main LAN".into()))?;
    let devices: Vec<String> = spec.interfaces.iter().map(device).collect();
    for d in &devices {
        check_label(d)?;
    }
    // The instance is rewritten whole, but options set by hand on it (the spec's debugging
    // step sets `primary.debug`) survive a cluster change.
    let kept: Vec<(String, sync_core::uci::Value)> = pkg
        .section(role_section(role))
        .map(|s| {
            s.options
                .iter()
                .filter(|(k, _)| !INSTANCE_OPTIONS.contains(&k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    pkg.sections.retain(|s| !owned(s));
    pkg.ensure_section("globals", "globals")?;

    let (state, priority, mode) = match role {
        Role::Primary => ("MASTER", PRIORITY_PRIMARY, "send"),
        Role::Backup => ("BACKUP", PRIORITY_BACKUP, "receive"),
    };
    let inst = pkg.ensure_section("vrrp_instance", role_section(role))?;
    inst.set("name", INSTANCE_NAME)?;
    inst.set("state", state)?;
    inst.set("interface", &devices[0])?;
    inst.set("virtual_router_id", &spec.vrid.to_string())?;
    inst.set("priority", &priority.to_string())?;
    inst.set("advert_int", "1")?;
    inst.set("auth_type", "PASS")?;
    inst.set("auth_pass", &spec.auth_pass)?;
    inst.set("unicast_src_ip", &local.to_string())?;
    inst.set_list("unicast_peer", vec![PEER_SECTION.to_string()])?;
    let mut vip_names: Vec<String> = spec
        .interfaces
        .iter()
        .map(|i| format!("{}_ha", i.name))
        .collect();
    vip_names.extend(
        spec.aliases
            .iter()
            .map(|a| format!("{}_{}_ha", a.interface, a.address.underscored())),
    );
    inst.set_list("virtual_ipaddress", vip_names)?;
    // The instance's own interface is tracked by keepalived already (a track_interface
    // entry for it is ignored with a warning, and makes `keepalived -t` fail): only the
    // other HA interfaces are listed.
    inst.set_list(
        "track_interface",
        spec.interfaces[1..]
            .iter()
            .map(|i| track_section(&i.name))
            .collect(),
    )?;
    if role == Role::Primary {
        inst.set_list("track_script", vec![CATCHUP_TRACK.to_string()])?;
    }
    for (k, v) in kept {
        if inst.value(&k).is_none() {
            inst.options.push((k, v));
        }
    }
    if role == Role::Primary {
        add_catchup(pkg)?;
    }

    let p = pkg.ensure_section("peer", PEER_SECTION)?;
    p.set("name", PEER_SECTION)?;
    p.set("address", &peer.to_string())?;
    p.set("ssh_port", &sync_agent::transport::DEFAULT_PORT.to_string())?;
    match role {
        // The cluster key on the primary, as `ha_peer.ssh_key` names it.
        Role::Primary => p.set(
            "ssh_key",
            &node::router_path(&format!("{}/{}", node::ETC_DIR, node::CLUSTER_KEY_NAME)),
        )?,
        Role::Backup => {
            p.delete("ssh_key");
        }
    }
    if p.get("sync_dir").is_none() {
        p.set("sync_dir", &node::router_path(node::DEFAULT_STAGING))?;
    }
    p.set("sync_mode", mode)?;
    for (opt, default) in [
        ("sync_list", DEFAULT_SYNC_LIST),
        ("exclude_list", DEFAULT_EXCLUDE_LIST),
    ] {
        if p.value(opt).is_none() {
            p.set_list(opt, default.iter().map(|s| s.to_string()).collect())?;
        }
    }

    for (i, dev) in spec.interfaces.iter().zip(&devices) {
        let s = pkg.ensure_section("ipaddress", &ipaddress_section(&i.name))?;
        s.set("name", &format!("{}_ha", i.name))?;
        s.set("address", &i.vip.to_string())?;
        s.set("device", dev)?;
        s.set("label_suffix", LABEL_SUFFIX)?;
        s.set("ns_link", &link(&i.name))?;
        s.set("ns_primary_address", &i.primary.to_string())?;
        s.set("ns_backup_address", &i.backup.to_string())?;
    }
    for a in &spec.aliases {
        let dev = spec
            .interfaces
            .iter()
            .zip(&devices)
            .find(|(i, _)| i.name == a.interface)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| {
                ClusterError::NotConfigured(format!(
                    "interface {} of VIP {} is not an HA interface",
                    a.interface, a.address
                ))
            })?;
        let s = pkg.ensure_section("ipaddress", &alias_section(a))?;
        s.set(
            "name",
            &format!("{}_{}_ha", a.interface, a.address.underscored()),
        )?;
        s.set("address", &a.address.to_string())?;
        s.set("device", &dev)?;
        s.set("label_suffix", LABEL_SUFFIX)?;
        s.set("ns_link", &link(&a.interface))?;
    }
    for (i, dev) in spec.interfaces.iter().zip(&devices).skip(1) {
        let s = pkg.ensure_section("track_interface", &track_section(&i.name))?;
        s.set("name", &track_section(&i.name))?;
        s.set("value", dev)?;
        s.set("ns_link", &link(&i.name))?;
    }
    Ok(())
}

/// Removes every cluster section (reset); `globals` and sections of others stay.
pub fn clear(pkg: &mut Package) {
    pkg.sections
        .retain(|s| !owned(s) && s.name.as_deref() != Some(PEER_SECTION));
}

// ---------------------------------------------------------------------------------------------
// keepalived.conf

/// How the rendered instance tells ha-sync about state changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// As OpenWrt's init script: `env -i ACTION=... hotplug-call keepalived`, and the
    /// hotplug script calls `ha-sync hook`.
    Hotplug,
    /// A command given the event as its last argument: `"/usr/sbin/ha-sync hook"` gives
    /// `notify_master "/usr/sbin/ha-sync hook NOTIFY_MASTER"`. keepalived runs the first word
    /// as the script: it must be an absolute path, owned by root, not writable by others.
    Command(String),
}

/// Settings of [`render`].
#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub notify: Notify,
    /// `router_id` of `global_defs`, if any.
    pub router_id: Option<String>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            notify: Notify::Command("/usr/sbin/ha-sync hook".into()),
            router_id: None,
        }
    }
}

fn find_named<'a>(
    pkg: &'a Package,
    kind: &'a str,
    name: &str,
) -> Option<&'a sync_core::uci::Section> {
    pkg.sections_of_kind(kind)
        .find(|s| s.get("name") == Some(name))
}

/// Renders `keepalived.conf` from the UCI sections, as OpenWrt's init script would for the
/// options the cluster uses, with `opts.notify` lines in each instance. A value with
/// whitespace is quoted, as the init script does.
pub fn render(pkg: &Package, opts: &RenderOptions) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "! Configuration file for keepalived, written by ha-sync");
    let _ = writeln!(o, "global_defs {{");
    // The hooks run init scripts and ip: root, and scripts checked for safe permissions.
    let _ = writeln!(o, "\tscript_user root");
    let _ = writeln!(o, "\tenable_script_security");
    let router_id = opts
        .router_id
        .clone()
        .or_else(|| pkg.get("globals", "router_id").map(str::to_string));
    if let Some(r) = router_id {
        let _ = writeln!(o, "\trouter_id {r}");
    }
    let _ = writeln!(o, "}}");
    for sc in pkg.sections_of_kind("vrrp_script") {
        let (Some(name), Some(script)) = (sc.get("name"), sc.get("script")) else {
            continue;
        };
        let _ = writeln!(o, "\nvrrp_script {name} {{");
        let _ = writeln!(o, "\tscript \"{script}\"");
        for opt in ["interval", "timeout", "weight", "fall", "rise"] {
            if let Some(v) = sc.get(opt) {
                let _ = writeln!(o, "\t{opt} {}", word(v));
            }
        }
        if sc.get("init_fail") == Some("1") {
            let _ = writeln!(o, "\tinit_fail");
        }
        let _ = writeln!(o, "}}");
    }
    for inst in pkg.sections_of_kind("vrrp_instance") {
        let Some(name) = inst.get("name") else {
            continue;
        };
        let _ = writeln!(o, "\nvrrp_instance {name} {{");
        for opt in [
            "state",
            "interface",
            "unicast_src_ip",
            "virtual_router_id",
            "priority",
            "advert_int",
        ] {
            if let Some(v) = inst.get(opt) {
                let _ = writeln!(o, "\t{opt} {}", word(v));
            }
        }
        if inst.value("nopreempt").is_some() {
            let _ = writeln!(o, "\tnopreempt");
        }
        if let (Some(t), Some(p)) = (inst.get("auth_type"), inst.get("auth_pass")) {
            let _ = writeln!(o, "\tauthentication {{");
            let _ = writeln!(o, "\t\tauth_type {t}");
            let _ = writeln!(o, "\t\tauth_pass {p}");
            let _ = writeln!(o, "\t}}");
        }
        let peers: Vec<String> = inst
            .get_list("unicast_peer")
            .iter()
            .filter_map(|p| {
                find_named(pkg, "peer", p)?
                    .get("address")
                    .map(str::to_string)
            })
            .collect();
        block(&mut o, "unicast_peer", &peers);
        let vips: Vec<String> = inst
            .get_list("virtual_ipaddress")
            .iter()
            .filter_map(|v| {
                let s = find_named(pkg, "ipaddress", v)?;
                let addr = s.get("address")?;
                Some(match s.get("device") {
                    None => addr.to_string(),
                    Some(dev) => format!(
                        "{addr} dev {dev} label {dev}:{}",
                        s.get("label_suffix").unwrap_or("vip")
                    ),
                })
            })
            .collect();
        block(&mut o, "virtual_ipaddress", &vips);
        let tracked: Vec<String> = inst
            .get_list("track_interface")
            .iter()
            .filter_map(|t| {
                let s = find_named(pkg, "track_interface", t)?;
                let v = s.get("value")?;
                Some(match s.get("weight") {
                    Some(w) => format!("{v} weight {w}"),
                    None => v.to_string(),
                })
            })
            .collect();
        block(&mut o, "track_interface", &tracked);
        let scripts: Vec<String> = inst
            .get_list("track_script")
            .iter()
            .filter_map(|t| {
                let s = find_named(pkg, "track_script", t)?;
                let v = s.get("value")?;
                Some(match s.get("weight") {
                    Some(w) => format!("{v} weight {w}"),
                    None => v.to_string(),
                })
            })
            .collect();
        block(&mut o, "track_script", &scripts);
        for ev in ["backup", "master", "fault", "stop"] {
            let action = format!("NOTIFY_{}", ev.to_ascii_uppercase());
            let cmd = match &opts.notify {
                Notify::Hotplug => format!(
                    "/bin/busybox env -i ACTION={action} TYPE=INSTANCE NAME={name} \
                     /sbin/hotplug-call keepalived"
                ),
                Notify::Command(c) => format!("{c} {action}"),
            };
            let _ = writeln!(o, "\tnotify_{ev} \"{cmd}\"");
        }
        let _ = writeln!(o, "}}");
    }
    o
}

fn word(v: &str) -> String {
    if v.split_whitespace().count() > 1 {
        format!("\"{v}\"")
    } else {
        v.to_string()
    }
}

fn block(o: &mut String, name: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(o, "\t{name} {{");
    for i in items {
        let _ = writeln!(o, "\t\t{i}");
    }
    let _ = writeln!(o, "\t}}");
}
