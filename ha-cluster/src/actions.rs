//! The `ns-ha-config` actions. Each reads and writes files under `ctx.root` and runs commands
//! through `ctx.runner` only, so the same code runs a router and a test on a temporary root.
//!
//! Actions that change the cluster run on the primary: they change its UCI, hand the whole
//! spec to the backup (`configure`, when the backup is initialized: `peer` is `None` before
//! `init-backup-node`) and reload keepalived. The backup's half of each remote action is
//! [`serve`].

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;

use sync_core::fsx;
use sync_core::uci::Package;

use crate::addr::Cidr;
use crate::keepalived::{self, Alias, HaIface, Spec};
use crate::network::{self, Iface};
use crate::request::{ClusterAnswer, ClusterRequest, FoundIface, Peer, Validation, WantedIface};
use crate::services::{enabled, reload, service, start_services, stop_services};
use crate::KEEPALIVED_UCI;
use crate::{cluster_pub, conntrackd, load_uci, role_section, ClusterError, Ctx, Role};

fn parse_vip(value: &str) -> Result<Cidr, ClusterError> {
    value.parse().map_err(|why| ClusterError::BadCidr {
        value: value.to_string(),
        why,
    })
}

fn parse_ip(value: &str, what: &'static str) -> Result<Ipv4Addr, ClusterError> {
    value.parse().map_err(|_| ClusterError::BadAddress {
        value: value.to_string(),
        what,
    })
}

/// This node's configured cluster, or `NotConfigured`.
fn configured(ctx: &Ctx) -> Result<(Package, Role, Spec), ClusterError> {
    let pkg = load_uci(ctx)?;
    match keepalived::read(&pkg)? {
        Some((role, spec)) => Ok((pkg, role, spec)),
        None => Err(ClusterError::NotConfigured(
            "HA is not configured on this node: run `ns-ha-config init-primary-node` first".into(),
        )),
    }
}

/// As [`configured`], and refuses on the backup (changes are made on the primary).
fn configured_primary(ctx: &Ctx) -> Result<(Package, Spec), ClusterError> {
    match configured(ctx)? {
        (pkg, Role::Primary, spec) => Ok((pkg, spec)),
        (_, Role::Backup, _) => Err(ClusterError::Invalid(
            "this node is the backup: run this action on the primary node".into(),
        )),
    }
}

/// This node's device of an HA interface: from its own network configuration, else the
/// one the spec carries.
fn own_device<'a>(ctx: &Ctx<'a>) -> impl Fn(&HaIface) -> String + 'a {
    let root = ctx.root;
    move |i: &HaIface| match network::interface(root, &i.name) {
        Ok(n) if !n.device.is_empty() => n.device,
        _ => i.device.clone(),
    }
}

/// Writes UCI and conntrackd.conf for `spec` on this node.
fn write_node(ctx: &Ctx, mut pkg: Package, spec: &Spec, role: Role) -> Result<(), ClusterError> {
    let device = own_device(ctx);
    keepalived::write(&mut pkg, spec, role, &device)?;
    set_enabled(&mut pkg)?;
    default_lease_file(ctx, &mut pkg)?;
    let main_dev = spec.main().map(&device).unwrap_or_default();
    if let Some(text) = conntrackd::render(spec, role, &main_dev, &conntrackd::Paths::default()) {
        let path = ctx.path(conntrackd::CONF);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(ClusterError::io(dir))?;
        }
        write_text(&path, &text)?;
    }
    let path = ctx.path(KEEPALIVED_UCI);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(ClusterError::io(dir))?;
    }
    pkg.write_atomic(&path)?;
    Ok(())
}

/// The default `sync_list` names dnsmasq's lease file where `dhcp.ns_dnsmasq.leasefile` puts
/// it, as the incumbent's init does; a list the admin changed is left alone.
fn default_lease_file(ctx: &Ctx, pkg: &mut Package) -> Result<(), ClusterError> {
    let default: Vec<String> = keepalived::DEFAULT_SYNC_LIST
        .iter()
        .map(|s| s.to_string())
        .collect();
    if pkg.get_list(keepalived::PEER_SECTION, "sync_list") != default {
        return Ok(());
    }
    let dhcp = Package::load_or_empty(&ctx.path("etc/config/dhcp"))?;
    let Some(lease) = dhcp
        .get("ns_dnsmasq", "leasefile")
        .filter(|l| l.starts_with('/'))
    else {
        return Ok(());
    };
    let list = default
        .into_iter()
        .map(|p| {
            if p == "/tmp/dhcp.leases" {
                lease.to_string()
            } else {
                p
            }
        })
        .collect();
    pkg.set_list(keepalived::PEER_SECTION, "sync_list", list)?;
    Ok(())
}

/// [`set_enabled`] on this node's keepalived UCI, written only when it changes.
fn enable_local(ctx: &Ctx) -> Result<(), ClusterError> {
    let mut pkg = load_uci(ctx)?;
    if set_enabled(&mut pkg)? {
        pkg.write_atomic(&ctx.path(KEEPALIVED_UCI))?;
    }
    Ok(())
}

/// `keepalived.globals.enabled=1`: a `0` left by the incumbent's disable keeps keepalived's
/// init script from starting it, whatever else is configured.
pub(crate) fn set_enabled(pkg: &mut Package) -> Result<bool, ClusterError> {
    if pkg.get("globals", "enabled") == Some("1") {
        return Ok(false);
    }
    pkg.ensure_section("globals", "globals")?
        .set("enabled", "1")?;
    Ok(true)
}

/// Replaces a configuration file (keepalived.conf, conntrackd.conf) durably and atomically,
/// mode 0644: a power cut right after a cluster change must not leave keepalived without
/// its configuration.
fn write_text(path: &std::path::Path, text: &str) -> Result<(), ClusterError> {
    fsx::write_atomic(path, text.as_bytes(), 0o644, fsx::Durability::Durable)
        .map_err(ClusterError::io(path))
}

/// A change of the running cluster: this node's sections, the backup's (which also drops
/// the `removed` interfaces from its network), then keepalived here reloaded.
fn change(
    ctx: &Ctx,
    pkg: Package,
    spec: &Spec,
    peer: Option<&dyn Peer>,
    removed: &[&str],
) -> Result<(), ClusterError> {
    write_node(ctx, pkg, spec, Role::Primary)?;
    if let Some(p) = peer {
        p.call(&ClusterRequest::Configure {
            spec: spec.clone(),
            start: false,
            removed: removed.iter().map(|r| r.to_string()).collect(),
        })?;
    }
    reload(ctx)
}

// ---------------------------------------------------------------------------------------------
// Checks

/// `check-primary-node <lan>`: static address, DHCP options 3 and 6.
pub fn check_primary_node(ctx: &Ctx, lan: &str) -> Result<Iface, ClusterError> {
    network::check_lan(ctx.root, lan, None, false)
}

/// The backup's half of `check-backup-node` (and of `validate`): each interface exists and
/// is static, with `address` when one is expected.
pub(crate) fn check_backup_local(
    ctx: &Ctx,
    wanted: &[WantedIface],
) -> Result<Vec<Iface>, ClusterError> {
    let mut problems = Vec::new();
    let mut found = Vec::new();
    for WantedIface {
        name,
        address: want,
    } in wanted
    {
        let iface = match network::interface(ctx.root, name) {
            Ok(i) => i,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        match (iface.proto.as_str(), iface.addr) {
            ("static", Some(a)) => {
                if want.is_some_and(|w| w != a.addr) {
                    problems.push(format!(
                        "interface {name} has address {}, not {}: give the backup's own \
                         address on {name}",
                        a.addr,
                        want.map(|w| w.to_string()).unwrap_or_default()
                    ));
                }
            }
            (proto, _) => problems.push(format!(
                "interface {name} uses proto {proto}{}: HA needs a static IPv4 address on it; \
                 set network.{name}.proto=static with an ipaddr and netmask on the backup",
                if proto == "static" {
                    " without an address"
                } else {
                    ""
                }
            )),
        }
        found.push(iface);
    }
    if problems.is_empty() {
        Ok(found)
    } else {
        Err(ClusterError::Requirements(problems))
    }
}

// ---------------------------------------------------------------------------------------------
// Init

/// `init-primary-node <primary_ip> <backup_ip> <vip/len> <lan>`: keepalived (role primary)
/// and conntrackd configured and started, the cluster key generated.
pub fn init_primary_node(
    ctx: &Ctx,
    primary_ip: &str,
    backup_ip: &str,
    vip: &str,
    lan: &str,
) -> Result<Spec, ClusterError> {
    let pkg = load_uci(ctx)?;
    if let Some(role) = keepalived::role_of(&pkg) {
        return Err(ClusterError::AlreadyConfigured(format!(
            "HA is already configured on this node (role {}): run `ns-ha-config reset` first \
             to start over",
            role_section(role)
        )));
    }
    let primary = parse_ip(primary_ip, "the primary node")?;
    let backup = parse_ip(backup_ip, "the backup node")?;
    let vip = parse_vip(vip)?;
    let iface = network::check_lan(ctx.root, lan, Some(vip), false)?;
    let addr = iface
        .addr
        .ok_or_else(|| ClusterError::Invalid(format!("{lan} has no address")))?;
    check_node_addresses(lan, addr, primary, backup, vip)?;
    keepalived::check_label(&iface.device)?;
    // Generated here only: every later change carries it over in the spec, so the two nodes
    // never disagree on it.
    let auth_pass = keepalived::generate_password();
    let spec = Spec {
        vrid: keepalived::VRID,
        auth_pass,
        interfaces: vec![HaIface {
            name: lan.to_string(),
            device: iface.device.clone(),
            vip,
            primary,
            backup,
        }],
        aliases: Vec::new(),
    };
    ensure_cluster_key(ctx)?;
    write_node(ctx, pkg, &spec, Role::Primary)?;
    start_services(ctx)?;
    Ok(spec)
}

fn check_node_addresses(
    name: &str,
    addr: Cidr,
    primary: Ipv4Addr,
    backup: Ipv4Addr,
    vip: Cidr,
) -> Result<(), ClusterError> {
    let mut problems = Vec::new();
    if addr.addr != primary {
        problems.push(format!(
            "{primary} is not this node's address on {name} ({}): give the primary's own \
             address first",
            addr.addr
        ));
    }
    if !addr.contains(backup) {
        problems.push(format!(
            "backup address {backup} is not in the subnet of {name} ({}/{}): both nodes must \
             be on the same LAN",
            addr.network(),
            addr.prefix
        ));
    }
    if backup == primary || backup == vip.addr {
        problems.push(format!(
            "backup address {backup} is the primary's address or the virtual IP: give the \
             backup's own address"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ClusterError::Requirements(problems))
    }
}

/// The cluster key (ed25519) the primary logs in to the backup's agent with; generated once.
pub(crate) fn ensure_cluster_key(ctx: &Ctx) -> Result<std::path::PathBuf, ClusterError> {
    let key = sync_core::node::Node::new(ctx.root).keys().default_key;
    if !key.exists() {
        sync_agent::transport::generate_keypair(&key)?;
    }
    Ok(key)
}

// ---------------------------------------------------------------------------------------------
// Interfaces and VIPs

/// `add-lan-interface <primary_ip> <backup_ip> <vip/len>`: the interface holding
/// `primary_ip` becomes an HA interface.
pub fn add_lan_interface(
    ctx: &Ctx,
    peer: Option<&dyn Peer>,
    primary_ip: &str,
    backup_ip: &str,
    vip: &str,
) -> Result<HaIface, ClusterError> {
    let (pkg, mut spec) = configured_primary(ctx)?;
    let primary = parse_ip(primary_ip, "the primary node")?;
    let backup = parse_ip(backup_ip, "the backup node")?;
    let vip = parse_vip(vip)?;
    let iface = network::interface_with_address(ctx.root, primary)?.ok_or_else(|| {
        ClusterError::Invalid(format!(
            "no interface of this node has the static address {primary}: configure the \
             interface with a static address first, then give that address"
        ))
    })?;
    if let Some(i) = spec.interface(&iface.name) {
        return Err(ClusterError::AlreadyConfigured(format!(
            "interface {} is already an HA interface (virtual IP {}); remove it first with \
             `ns-ha-config remove-interface {}`",
            i.name, i.vip, i.name
        )));
    }
    if spec.vips().iter().any(|v| v.addr == vip.addr) {
        return Err(ClusterError::AlreadyConfigured(format!(
            "virtual IP {vip} is already configured"
        )));
    }
    let checked = network::check_lan(ctx.root, &iface.name, Some(vip), true)?;
    let addr = checked
        .addr
        .ok_or_else(|| ClusterError::Invalid(format!("{} has no address", iface.name)))?;
    check_node_addresses(&iface.name, addr, primary, backup, vip)?;
    keepalived::check_label(&checked.device)?;
    if let Some(p) = peer {
        p.call(&ClusterRequest::Validate {
            interfaces: vec![WantedIface {
                name: iface.name.clone(),
                address: Some(backup),
            }],
        })?;
    }
    let new = HaIface {
        name: iface.name.clone(),
        device: checked.device.clone(),
        vip,
        primary,
        backup,
    };
    spec.interfaces.push(new.clone());
    change(ctx, pkg, &spec, peer, &[])?;
    Ok(new)
}

/// `remove-interface <if>`: its VIP and extra VIPs leave keepalived, on both nodes; the
/// backup drops the interface from its network configuration, and here the interface takes
/// the virtual IP as its address (as the incumbent: the clients' gateway stays). The main
/// LAN carries VRRP and the sync: removing it is `reset`.
pub fn remove_interface(
    ctx: &Ctx,
    peer: Option<&dyn Peer>,
    name: &str,
) -> Result<HaIface, ClusterError> {
    let (pkg, mut spec) = configured_primary(ctx)?;
    let Some(pos) = spec.interfaces.iter().position(|i| i.name == name) else {
        network::interface(ctx.root, name)?;
        return Err(not_ha(name, &spec));
    };
    if pos == 0 {
        return Err(ClusterError::Invalid(format!(
            "{name} is the main LAN of the cluster (it carries VRRP and the sync): to remove \
             it, tear the cluster down with `ns-ha-config reset`"
        )));
    }
    let removed = spec.interfaces.remove(pos);
    spec.aliases.retain(|a| a.interface != name);
    // The backup drops its copy of the interface; this node keeps serving the segment on
    // the virtual IP, the address its clients use as their gateway.
    change(ctx, pkg, &spec, peer, &[name])?;
    if network::take_over_address(ctx.root, name, removed.primary, removed.vip.addr)? {
        service(ctx, "network", "reload")?;
    }
    Ok(removed)
}

fn not_ha(name: &str, spec: &Spec) -> ClusterError {
    ClusterError::NotConfigured(format!(
        "interface {name} is not an HA interface (HA interfaces: {}); add it with \
         `ns-ha-config add-lan-interface`",
        spec.interfaces
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// `add-vip <if> <vip/len>`: an extra virtual IP on an HA interface.
pub fn add_vip(
    ctx: &Ctx,
    peer: Option<&dyn Peer>,
    name: &str,
    vip: &str,
) -> Result<Alias, ClusterError> {
    let (pkg, mut spec) = configured_primary(ctx)?;
    let vip = parse_vip(vip)?;
    let iface = network::interface(ctx.root, name)?;
    if spec.interface(name).is_none() {
        return Err(not_ha(name, &spec));
    }
    let subnet = iface
        .addr
        .ok_or_else(|| ClusterError::Invalid(format!("{name} has no static address")))?;
    if !subnet.contains(vip.addr) || vip.prefix != subnet.prefix {
        return Err(ClusterError::Invalid(format!(
            "virtual IP {vip} is not in the subnet of {name} ({}/{}): pick an unused address \
             of that subnet, with the same prefix length",
            subnet.network(),
            subnet.prefix
        )));
    }
    let taken = spec
        .interfaces
        .iter()
        .flat_map(|i| [i.primary, i.backup])
        .any(|a| a == vip.addr);
    if taken || vip.addr == subnet.network() || vip.addr == subnet.broadcast() {
        return Err(ClusterError::Invalid(format!(
            "{} is a node's own address or the network/broadcast address of {name}: pick an \
             unused address",
            vip.addr
        )));
    }
    if spec.vips().iter().any(|v| v.addr == vip.addr) {
        return Err(ClusterError::AlreadyConfigured(format!(
            "virtual IP {} is already configured; remove it first with `ns-ha-config \
             remove-vip`",
            vip.addr
        )));
    }
    let alias = Alias {
        interface: name.to_string(),
        address: vip,
    };
    spec.aliases.push(alias.clone());
    change(ctx, pkg, &spec, peer, &[])?;
    Ok(alias)
}

/// `remove-vip <if> <vip/len>`.
pub fn remove_vip(
    ctx: &Ctx,
    peer: Option<&dyn Peer>,
    name: &str,
    vip: &str,
) -> Result<Alias, ClusterError> {
    let (pkg, mut spec) = configured_primary(ctx)?;
    let vip = parse_vip(vip)?;
    let Some(pos) = spec
        .aliases
        .iter()
        .position(|a| a.interface == name && a.address.addr == vip.addr)
    else {
        let known: Vec<String> = spec
            .aliases
            .iter()
            .map(|a| format!("{} on {}", a.address, a.interface))
            .collect();
        return Err(ClusterError::NotConfigured(format!(
            "no extra virtual IP {vip} on {name} (configured: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    };
    let removed = spec.aliases.remove(pos);
    change(ctx, pkg, &spec, peer, &[])?;
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// Inspect

/// `show-config`, in the spec's layout.
pub fn show_config(ctx: &Ctx) -> Result<String, ClusterError> {
    let pkg = load_uci(ctx)?;
    let spec = keepalived::read(&pkg)?.map(|(_, s)| s);
    let ifaces = network::interfaces(ctx.root)?;
    let mut o = String::new();
    let _ = writeln!(o, "Current configuration\n");
    let _ = writeln!(o, "Interfaces:");
    let ha: Vec<&HaIface> = spec.iter().flat_map(|s| &s.interfaces).collect();
    if ha.is_empty() {
        let _ = writeln!(o, "  None");
    }
    let device = own_device(ctx);
    for i in &ha {
        let _ = writeln!(
            o,
            "  Interface: {}, Device: {}, Virtual IP: {}",
            i.name,
            device(i),
            i.vip
        );
    }
    let _ = writeln!(o, "\nAliases:");
    let aliases: Vec<&Alias> = spec.iter().flat_map(|s| &s.aliases).collect();
    if aliases.is_empty() {
        let _ = writeln!(o, "  None");
    }
    for a in aliases {
        let _ = writeln!(
            o,
            "  Interface: {}, Virtual Alias IP: {}",
            a.interface, a.address
        );
    }
    let _ = writeln!(
        o,
        "\n-----------------------------------------------------------------\n"
    );
    let _ = writeln!(o, "Not configured\n");
    let _ = writeln!(o, "Interfaces:");
    let rest: Vec<&Iface> = ifaces
        .iter()
        .filter(|i| !ha.iter().any(|h| h.name == i.name))
        .collect();
    if rest.is_empty() {
        let _ = writeln!(o, "  None");
    }
    for i in rest {
        // The trailing space is the incumbent's; scripts may match the line whole.
        let _ = writeln!(o, "  Interface: {}, Device: {} ", i.name, i.device);
    }
    Ok(o)
}

/// `show-config --render`: the `keepalived.conf` this node's UCI gives.
pub fn render_config(ctx: &Ctx, opts: &keepalived::RenderOptions) -> Result<String, ClusterError> {
    Ok(keepalived::render(&load_uci(ctx)?, opts))
}

/// `status`, in the spec's layout. `Status` is `enabled` when a role is configured and
/// keepalived is enabled.
pub fn status(ctx: &Ctx) -> String {
    let mut st = sync_agent::status::collect(ctx.root, None);
    if st.status == "enabled" && !enabled(ctx) {
        st.status = "disabled".into();
    }
    st.render()
}

// ---------------------------------------------------------------------------------------------
// Enable, disable, reset

/// `enable`: keepalived and conntrackd enabled and started here (the primary takes the VIPs
/// first), then on the backup.
pub fn enable(ctx: &Ctx, peer: Option<&dyn Peer>) -> Result<(), ClusterError> {
    configured_primary(ctx)?;
    enable_local(ctx)?;
    start_services(ctx)?;
    if let Some(p) = peer {
        p.call(&ClusterRequest::Enable)?;
    }
    Ok(())
}

/// `disable`: the backup first (so it does not take over), then here.
pub fn disable(ctx: &Ctx, peer: Option<&dyn Peer>) -> Result<(), ClusterError> {
    configured_primary(ctx)?;
    if let Some(p) = peer {
        p.call(&ClusterRequest::Disable)?;
    }
    stop_services(ctx)
}

/// What `reset` did; `peer_error` when the backup could not be reset (do it there by hand).
#[derive(Debug, Default)]
pub struct ResetReport {
    pub peer_error: Option<String>,
}

/// `reset`: undoes init on the backup, then here: keepalived and conntrackd stopped and
/// disabled, their configuration, the agent's keys and the staging tree removed. The network
/// configuration is left as it is.
pub fn reset(ctx: &Ctx, peer: Option<&dyn Peer>) -> Result<ResetReport, ClusterError> {
    let pkg = load_uci(ctx)?;
    if keepalived::role_of(&pkg).is_none() {
        return Err(ClusterError::NotConfigured(
            "HA is not configured on this node: nothing to reset".into(),
        ));
    }
    let mut report = ResetReport::default();
    if let Some(p) = peer {
        if let Err(e) = p.call(&ClusterRequest::Reset) {
            report.peer_error = Some(e.to_string());
        }
    }
    reset_local(ctx, pkg)?;
    Ok(report)
}

fn reset_local(ctx: &Ctx, mut pkg: Package) -> Result<(), ClusterError> {
    stop_services(ctx)?;
    let staging = pkg
        .get(keepalived::PEER_SECTION, "sync_dir")
        .map(str::to_string)
        .unwrap_or_else(|| sync_core::node::router_path(sync_core::node::DEFAULT_STAGING));
    keepalived::clear(&mut pkg);
    pkg.write_atomic(&ctx.path(KEEPALIVED_UCI))?;
    let mut gone = vec![
        ctx.path(conntrackd::CONF),
        sync_core::node::Node::new(ctx.root).keys().default_key,
        sync_core::node::Node::new(ctx.root).keys().known_hosts,
        sync_core::node::Node::new(ctx.root).keys().authorized_keys,
        sync_core::node::Node::new(ctx.root).keys().host_key,
        cluster_pub(ctx.root),
    ];
    for k in gone.clone() {
        let mut p = k.into_os_string();
        p.push(".pub");
        gone.push(p.into());
    }
    for f in gone {
        match fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ClusterError::Io { path: f, source: e })
            }
            _ => {}
        }
    }
    let staging = sync_core::node::Node::new(ctx.root).path(&staging);
    restore_crons(ctx)?;
    // Never remove the root itself, whatever sync_dir says.
    if staging != ctx.root && staging.starts_with(ctx.root) {
        match fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ClusterError::Io {
                    path: staging,
                    source: e,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// A node leaving the cluster runs every cron job again: the lines the backup overlay
/// disabled (ha-sync's marker only; the admin's own comments stay) are enabled, and crond is
/// told.
fn restore_crons(ctx: &Ctx) -> Result<(), ClusterError> {
    use restore_hooks::cron;
    let path = ctx.path(cron::CRONTAB);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ClusterError::io(&path)(e)),
    };
    let clean = cron::unmark(&text);
    if clean == text {
        return Ok(());
    }
    let mode = fsx::mode_or(&path, 0o600).map_err(ClusterError::io(&path))?;
    fsx::write_atomic(&path, clean.as_bytes(), mode, fsx::Durability::Durable)
        .map_err(ClusterError::io(&path))?;
    if let Err(e) = cron::notify_crond(ctx.root) {
        tracing::warn!("telling crond: {e}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The backup's side of the remote actions

/// Runs `request` for the primary on this (backup) node; the agent calls it for the cluster
/// key only.
pub fn serve(ctx: &Ctx, request: ClusterRequest) -> Result<ClusterAnswer, ClusterError> {
    let pkg = load_uci(ctx)?;
    let role = keepalived::role_of(&pkg);
    if role == Some(Role::Primary) {
        return Err(ClusterError::Invalid(
            "this node is configured as the primary; a primary takes no orders from its peer"
                .into(),
        ));
    }
    match request {
        ClusterRequest::Validate { interfaces } => {
            let found = check_backup_local(ctx, &interfaces)?;
            Ok(ClusterAnswer::Validated(Validation {
                configured: role.is_some(),
                interfaces: found
                    .into_iter()
                    .map(|i| FoundIface {
                        name: i.name,
                        device: i.device,
                        address: i.addr,
                    })
                    .collect(),
            }))
        }
        ClusterRequest::Configure {
            spec,
            start,
            removed,
        } => {
            let wanted: Vec<WantedIface> = spec
                .interfaces
                .iter()
                .map(|i| WantedIface {
                    name: i.name.clone(),
                    address: Some(i.backup),
                })
                .collect();
            check_backup_local(ctx, &wanted)?;
            write_node(ctx, pkg, &spec, Role::Backup)?;
            // Interfaces the primary took out of the cluster (never one still in it).
            let mut network_changed = false;
            for gone in removed.iter().filter(|n| spec.interface(n).is_none()) {
                network_changed |= network::remove_interface(ctx.root, gone)?;
            }
            if network_changed {
                service(ctx, "network", "reload")?;
            }
            if start {
                start_services(ctx)?;
            } else {
                reload(ctx)?;
            }
            Ok(ClusterAnswer::Configured { configured: true })
        }
        ClusterRequest::Enable => {
            if role.is_none() {
                return Err(ClusterError::NotConfigured(
                    "HA is not configured on the backup: run `ns-ha-config init-backup-node`"
                        .into(),
                ));
            }
            enable_local(ctx)?;
            start_services(ctx)?;
            Ok(ClusterAnswer::Done)
        }
        ClusterRequest::Disable => {
            stop_services(ctx)?;
            Ok(ClusterAnswer::Done)
        }
        ClusterRequest::Reset => {
            if role.is_some() {
                reset_local(ctx, pkg)?;
            }
            Ok(ClusterAnswer::Done)
        }
    }
}
