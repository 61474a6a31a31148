//! `ha-sync rpcd list` / `ha-sync rpcd call METHOD`: the rpcd executable of NethSecurity's web
//! UI (`/usr/libexec/rpcd/ns.ha`, a wrapper that execs this), with the incumbent's method
//! names, parameters and result shapes. Each method runs the code of the matching
//! `ns-ha-config` action (the `ha-cluster` crate); this module only translates.
//!
//! Errors, as the incumbent's (python `ns.ha` with `nethsec.utils`):
//! - `{"error": "..."}` (its `generic_error`), exit status 0, for a failed action;
//! - a `ValidationError(parameter, message)` for the checks it names: the incumbent let it
//!   escape (a traceback ending `nethsec.utils.ValidationError: ('p', 'm')` on stderr, nothing
//!   on stdout, exit 1). We write that line on stderr and exit 1 too, and print nethsec's
//!   `validation_error` object on stdout, so the UI (rpcd ignores the exit status) shows the
//!   field error instead of an empty answer.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ha_cluster::keepalived::{self, Spec};
use ha_cluster::remote::SshPeer;
use ha_cluster::request::{ClusterRequest, Peer};
use ha_cluster::{actions, bootstrap, network, upgrade, ClusterError, Ctx, Role};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use sync_core::runner::RootedRunner;
use sync_core::uci::Package;

#[derive(Args)]
pub struct RpcdArgs {
    /// The router's root directory (commands then run only from under it).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    #[command(subcommand)]
    op: Op,
}

#[derive(Subcommand)]
enum Op {
    /// Print the methods and their parameter templates (JSON).
    List,
    /// Run METHOD with the JSON object on stdin; print the JSON result.
    Call { method: String },
}

/// `ns.ha list`, as the incumbent prints it (key order kept: a literal, not a map).
pub(crate) const METHODS: &str = r#"{"init-local": {"role": "primary", "primary_node_ip": "100.100.100.1", "backup_node_ip": "100.100.100.2", "virtual_ip": "192.168.100.253", "pubkey": "ssh-rsa AAAAB....", "password": "xxxxxxxx", "lan_interface": "lan"}, "init-remote": {"ssh_password": "Nethesis,1234", "lan_interface": "lan"}, "check-remote": {"backup_node_ip": "100.100.100.2", "ssh_password": "Nethesis,1234", "lan_interface": "lan"}, "validate-requirements": {"role": "primary", "lan_interface": "lan"}, "add-lan-interface": {"role": "primary", "primary_node_ip": "100.100.200.1", "backup_node_ip": "100.100.200.2", "virtual_ip": "192.168.200.250/24"}, "remove-interface": {"role": "primary", "interface": "lan2"}, "add-vip": {"role": "primary", "interface": "lan", "virtual_ip": "1.2.3.5/24"}, "remove-vip": {"role": "primary", "interface": "lan", "virtual_ip": "1.2.3.5/24"}, "status": {}, "list-interfaces": {}, "list-vips": {}, "reset": {"role": "primary", "pubkey": "ssh-rsa AAAAB...."}, "upgrade-remote": {"image": "/tmp/upgrade.img.gz"}, "disable": {"role": "primary"}, "enable": {"role": "primary"}}"#;

/// What a method answers.
pub(crate) enum Reply {
    Ok(Value),
    /// The incumbent's `ValidationError(parameter, message)`.
    Invalid(String, String),
    /// The incumbent's `generic_error`.
    Error(String),
}

fn invalid(parameter: &str, message: &str) -> Reply {
    Reply::Invalid(parameter.into(), message.into())
}

fn success() -> Reply {
    Reply::Ok(json!({ "success": true }))
}

pub fn run(args: RpcdArgs) -> Result<()> {
    match args.op {
        Op::List => {
            println!("{METHODS}");
            Ok(())
        }
        Op::Call { method } => {
            let runner = RootedRunner::new(&args.root);
            let ctx = Ctx {
                root: &args.root,
                runner: &runner,
            };
            // As the incumbent: these three never read stdin.
            let input = if matches!(method.as_str(), "status" | "list-interfaces" | "list-vips") {
                Map::new()
            } else {
                read_input()?
            };
            let reply = call(&ctx, &method, &input)?;
            print_reply(reply)
        }
    }
}

fn read_input() -> Result<Map<String, Value>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(1 << 20)
        .read_to_end(&mut buf)
        .context("reading the request on stdin")?;
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    serde_json::from_slice(&buf).context("the request on stdin is not a JSON object")
}

fn print_reply(reply: Reply) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match reply {
        Reply::Ok(v) => writeln!(out, "{}", serde_json::to_string(&v)?)?,
        Reply::Error(e) => writeln!(out, "{}", json!({ "error": e }))?,
        Reply::Invalid(p, m) => {
            let v = json!({"validation": {"errors": [
                {"parameter": p, "message": m, "value": ""}
            ]}});
            writeln!(out, "{v}")?;
            out.flush()?;
            eprintln!("nethsec.utils.ValidationError: ('{p}', '{m}')");
            std::process::exit(1);
        }
    }
    Ok(())
}

/// Runs `method`; an unknown method or a crash of the incumbent's is an error here too.
pub(crate) fn call(ctx: &Ctx, method: &str, a: &Map<String, Value>) -> Result<Reply> {
    let arg = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    // The incumbent takes any role but "primary" as the backup.
    let primary = arg("role") == "primary";
    Ok(match method {
        "status" => status(ctx.root),
        "list-interfaces" => list_interfaces(ctx.root)?,
        "list-vips" => list_vips(ctx.root)?,
        "validate-requirements" => validate_requirements(ctx, primary, &arg("lan_interface")),
        "check-remote" => check_remote(
            &arg("backup_node_ip"),
            &arg("ssh_password"),
            &arg("lan_interface"),
        )?,
        "init-local" if primary => init_local(
            ctx,
            &arg("primary_node_ip"),
            &arg("backup_node_ip"),
            &arg("virtual_ip"),
            &arg("lan_interface"),
        ),
        "init-remote" => init_remote(ctx, &arg("ssh_password"))?,
        "add-lan-interface" if primary => add_lan_interface(
            ctx,
            &arg("primary_node_ip"),
            &arg("backup_node_ip"),
            &arg("virtual_ip"),
        )?,
        "remove-interface" if primary => {
            let i = arg("interface");
            with_ha_interface(ctx.root, &i, |p| {
                remote(
                    actions::remove_interface(ctx, p, &i).map(drop),
                    "remove_interface",
                )
            })?
        }
        "add-vip" if primary => {
            let i = arg("interface");
            with_ha_interface(ctx.root, &i, |p| {
                remote(
                    actions::add_vip(ctx, p, &i, &arg("virtual_ip")).map(drop),
                    "add_vip",
                )
            })?
        }
        "remove-vip" if primary => {
            let i = arg("interface");
            with_ha_interface(ctx.root, &i, |p| {
                remote(
                    actions::remove_vip(ctx, p, &i, &arg("virtual_ip")).map(drop),
                    "remove_vip",
                )
            })?
        }
        "init-local" | "add-lan-interface" | "remove-interface" | "add-vip" | "remove-vip" => {
            Reply::Error(format!(
                "{method} with role backup is not supported by ha-sync: the primary configures \
                 the backup over ha-sync's agent; call {method} with role primary on the primary"
            ))
        }
        "reset" if primary => {
            let p = peer(ctx.root)?;
            match actions::reset(ctx, p.as_ref().map(|p| p as &dyn Peer)) {
                Ok(r) => match r.peer_error {
                    Some(e) => Reply::Error(format!("error_executing_reset_on_backup_node: {e}")),
                    None => success(),
                },
                Err(e) => Reply::Error(e.to_string()),
            }
        }
        "enable" if primary => {
            let p = peer(ctx.root)?;
            remote(
                actions::enable(ctx, p.as_ref().map(|p| p as &dyn Peer)),
                "enable",
            )
        }
        "disable" if primary => {
            let p = peer(ctx.root)?;
            remote(
                actions::disable(ctx, p.as_ref().map(|p| p as &dyn Peer)),
                "disable",
            )
        }
        // The backup's half: what its agent runs when the primary asks.
        "reset" => backup_half(ctx, ClusterRequest::Reset),
        "enable" => backup_half(ctx, ClusterRequest::Enable),
        "disable" => backup_half(ctx, ClusterRequest::Disable),
        "upgrade-remote" => upgrade_remote(ctx, &arg("image"))?,
        _ => bail!("unknown method {method:?} (see `ns.ha list`)"),
    })
}

fn backup_half(ctx: &Ctx, req: ClusterRequest) -> Reply {
    match actions::serve(ctx, req) {
        Ok(_) => success(),
        Err(e) => Reply::Error(e.to_string()),
    }
}

/// `{"success": true}`, or the incumbent's `error_executing_<action>_on_backup_node` when the
/// backup failed (with the cause), or the local failure.
fn remote(r: Result<(), ClusterError>, action: &str) -> Reply {
    match r {
        Ok(()) => success(),
        Err(e @ (ClusterError::Peer(_) | ClusterError::Transport(_))) => {
            Reply::Error(format!("error_executing_{action}_on_backup_node: {e}"))
        }
        Err(e) => Reply::Error(e.to_string()),
    }
}

fn peer(root: &Path) -> Result<Option<SshPeer>> {
    SshPeer::from_config(root).context("reading the backup's address and keys")
}

fn load(root: &Path, rel: &str) -> Result<Package> {
    Package::load_or_empty(&root.join(rel)).with_context(|| format!("reading /{rel}"))
}

/// This node's cluster, if configured.
fn spec(root: &Path) -> Result<Option<(Role, Spec)>> {
    let pkg = load(root, sync_core::node::KEEPALIVED_UCI)?;
    Ok(keepalived::read(&pkg)?)
}

/// The incumbent's check before remove-interface, add-vip, remove-vip.
fn with_ha_interface(
    root: &Path,
    name: &str,
    f: impl FnOnce(Option<&dyn Peer>) -> Reply,
) -> Result<Reply> {
    let configured = spec(root)?.is_some_and(|(_, s)| s.interface(name).is_some());
    if !configured {
        return Ok(invalid("interface", "interface_not_configured_for_ha"));
    }
    let p = peer(root)?;
    Ok(f(p.as_ref().map(|p| p as &dyn Peer)))
}

// ---------------------------------------------------------------------------------------------
// Inspect

fn status(root: &Path) -> Reply {
    let st = sync_agent::status::collect(root, None);
    let mut v = st.to_json();
    let lock_timeout = load(root, sync_core::node::KEEPALIVED_UCI)
        .ok()
        .and_then(|p| p.get("globals", "ns_lock_timeout").map(str::to_string))
        .unwrap_or_default();
    let locked = lock_timeout.parse::<u64>().is_ok_and(|t| t > 0)
        && lock_timeout.bytes().all(|b| b.is_ascii_digit());
    if let Value::Object(m) = &mut v {
        m.insert(
            "lock_status".into(),
            json!(if locked { "enabled" } else { "disabled" }),
        );
        m.insert(
            "lock_timeout".into(),
            json!(if locked { lock_timeout } else { String::new() }),
        );
        // The incumbent reads the VRRP state and statistics only on a configured node.
        if st.status != "enabled" {
            m.insert("state".into(), json!("unknown"));
            m.insert("keepalived_stats".into(), json!({}));
        }
    }
    Reply::Ok(v)
}

fn list_interfaces(root: &Path) -> Result<Reply> {
    let spec = spec(root)?.map(|(_, s)| s);
    let interfaces: Vec<Value> = network::interfaces(root)?
        .into_iter()
        // Aliases (`@lan`) and interfaces without a device are not offered.
        .filter(|i| !i.device.is_empty() && !i.device.starts_with('@'))
        .map(|i| {
            let ha = spec.as_ref().and_then(|s| s.interface(&i.name));
            json!({
                "device": i.device,
                "name": i.name,
                "ha_configured": ha.is_some(),
                "virtual_ip": ha.map(|h| h.vip.to_string()).unwrap_or_default(),
            })
        })
        .collect();
    Ok(Reply::Ok(json!({ "interfaces": interfaces })))
}

fn list_vips(root: &Path) -> Result<Reply> {
    let vips: Vec<Value> = spec(root)?
        .map(|(_, s)| s.aliases)
        .unwrap_or_default()
        .into_iter()
        .map(|a| json!({"interface": a.interface, "ipaddr": a.address.to_string()}))
        .collect();
    Ok(Reply::Ok(json!({ "vips": vips })))
}

// ---------------------------------------------------------------------------------------------
// Checks

/// The incumbent's `validate_network` codes for `lan`.
fn network_codes(root: &Path, lan: &str) -> Vec<String> {
    let net = load(root, network::NETWORK).unwrap_or_default();
    let mut codes = Vec::new();
    match net.get(lan, "proto") {
        None => codes.extend(["lan_network_not_found", "lan_network_not_static"]),
        Some("static") => {}
        Some(_) => codes.push("lan_network_not_static"),
    }
    // IFNAMSIZ is 16 and keepalived labels the VIP `<device>:ha`.
    if net.get(lan, "device").unwrap_or("").len() >= 13 {
        codes.push("lan_device_network_too_long");
    }
    codes.into_iter().map(String::from).collect()
}

/// The incumbent's `validate_dhcp` codes for the IPv4 DHCP servers on `lan`. Options are
/// recognized by name or number (`option:router` or `3`), as dnsmasq takes both.
fn dhcp_codes(root: &Path, lan: &str) -> Vec<String> {
    let dhcp = load(root, network::DHCP).unwrap_or_default();
    let ka = load(root, sync_core::node::KEEPALIVED_UCI).unwrap_or_default();
    let configured = ka.sections_of_kind("vrrp_instance").next().is_some();
    let value = |opts: &[String], code: &str, name: &str| {
        opts.iter().find_map(|o| {
            let (k, v) = o.split_once(',')?;
            (k.trim() == code || k.trim().starts_with(&format!("option:{name}")))
                .then(|| v.trim().to_string())
        })
    };
    let mut codes = Vec::new();
    for s in dhcp.sections_of_kind("dhcp") {
        if s.get("dhcpv4") != Some("server") || s.get("interface") != Some(lan) {
            continue;
        }
        let opts = s.get_list("dhcp_option");
        match value(&opts, "3", "router") {
            None => codes.push("dhcp_router_option_not_found".to_string()),
            Some(router) if configured => {
                let vip = ka
                    .sections_of_kind("ipaddress")
                    .filter(|v| v.get("name").and_then(|n| n.split('_').next()) == Some(lan))
                    .filter_map(|v| v.get("address"))
                    .next();
                if let Some(vip) = vip {
                    if vip.split('/').next().unwrap_or("").trim() != router {
                        codes.push(format!("dhcp_router_option_does_not_match_vip: {lan}"));
                    }
                }
            }
            Some(_) => {}
        }
        if value(&opts, "6", "dns").is_none() {
            codes.push("dhcp_dns_option_not_found".to_string());
        }
    }
    codes
}

/// `{"success", "errors"}`: the incumbent's codes first; when it finds nothing, the checks
/// the actions run (stricter: address and device present, DHCP option values), as text.
fn validate_requirements(ctx: &Ctx, primary: bool, lan: &str) -> Reply {
    let mut errors = network_codes(ctx.root, lan);
    if primary {
        errors.extend(dhcp_codes(ctx.root, lan));
    }
    if errors.is_empty() {
        let checked = if primary {
            actions::check_primary_node(ctx, lan).map(drop)
        } else {
            actions::serve(
                ctx,
                ClusterRequest::Validate {
                    interfaces: vec![ha_cluster::request::WantedIface {
                        name: lan.to_string(),
                        address: None,
                    }],
                },
            )
            .map(drop)
        };
        match checked {
            Ok(()) => {}
            Err(ClusterError::Requirements(p)) => errors.extend(p),
            Err(e) => errors.push(e.to_string()),
        }
    }
    Reply::Ok(json!({"success": errors.is_empty(), "errors": errors}))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// The backup's check over port 22 with root's password, as check-backup-node.
fn check_remote(backup: &str, password: &str, lan: &str) -> Result<Reply> {
    let fail = |e: String| Reply::Ok(json!({"success": false, "errors": [e]}));
    if backup.is_empty() || password.is_empty() {
        return Ok(fail(
            "ssh_connection_failed: backup_node_ip and ssh_password are required".into(),
        ));
    }
    let r = runtime()?.block_on(bootstrap::call(
        backup,
        22,
        password,
        &bootstrap::check_request(if lan.is_empty() { "lan" } else { lan }),
    ));
    Ok(match r {
        Ok(_) => Reply::Ok(json!({"success": true, "errors": []})),
        Err(e @ ClusterError::Transport(_)) => fail(format!("ssh_connection_failed: {e}")),
        Err(e) => fail(e.to_string()),
    })
}

// ---------------------------------------------------------------------------------------------
// Changes

/// The static interface holding `ip` (the incumbent's `get_device_from_ip`).
fn iface_with(root: &Path, ip: &str) -> Result<Option<network::Iface>> {
    Ok(network::interfaces(root)?
        .into_iter()
        .find(|i| i.addr.is_some_and(|a| a.addr.to_string() == ip)))
}

fn init_local(ctx: &Ctx, primary: &str, backup: &str, vip: &str, lan: &str) -> Reply {
    if let Some(code) = network_codes(ctx.root, lan).into_iter().next() {
        return Reply::Invalid("lan_network_errors".into(), code);
    }
    if iface_with(ctx.root, primary)
        .ok()
        .flatten()
        .is_none_or(|i| i.device.is_empty())
    {
        return invalid("primary_node_ip", "no_device_with_static_ip_found");
    }
    match actions::init_primary_node(ctx, primary, backup, vip, lan) {
        Ok(_) => success(),
        Err(e) => Reply::Error(e.to_string()),
    }
}

/// init-backup-node: the primary initializes the backup over port 22 with root's password
/// and pins the backup's agent.
fn init_remote(ctx: &Ctx, password: &str) -> Result<Reply> {
    if !matches!(spec(ctx.root)?, Some((Role::Primary, _))) {
        return Ok(invalid(
            "primary_node_ip",
            "no_primary_keepalived_instance_found",
        ));
    }
    let (backup, req) = match bootstrap::init_request(ctx) {
        Ok(r) => r,
        Err(e) => return Ok(Reply::Error(e.to_string())),
    };
    if password.is_empty() {
        return Ok(Reply::Error(
            "ssh_connection_failed: ssh_password is required".into(),
        ));
    }
    let host = backup.to_string();
    let c = match runtime()?.block_on(bootstrap::call(&host, 22, password, &req)) {
        Ok(c) => c,
        Err(e) => return Ok(Reply::Error(format!("ssh_connection_failed: {e}"))),
    };
    Ok(match bootstrap::pin_agent(ctx, backup, &c.answer) {
        Ok(_) => success(),
        Err(e) => Reply::Error(e.to_string()),
    })
}

fn add_lan_interface(ctx: &Ctx, primary: &str, backup: &str, vip: &str) -> Result<Reply> {
    let Some(iface) = iface_with(ctx.root, primary)? else {
        return Ok(invalid(
            "primary_node_ip",
            "no_interface_with_static_ip_found",
        ));
    };
    if iface.device.is_empty() {
        return Ok(invalid("primary_node_ip", "no_device_with_static_ip_found"));
    }
    if iface.device.len() >= 13 {
        return Ok(invalid("primary_node_ip", "device_name_too_long_for_ha"));
    }
    if let Some(code) = dhcp_codes(ctx.root, &iface.name).into_iter().next() {
        return Ok(Reply::Invalid("dhcp_configuration_errors".into(), code));
    }
    let p = peer(ctx.root)?;
    Ok(remote(
        actions::add_lan_interface(
            ctx,
            p.as_ref().map(|p| p as &dyn Peer),
            primary,
            backup,
            vip,
        )
        .map(drop),
        "add_lan_interface",
    ))
}

fn upgrade_remote(ctx: &Ctx, image: &str) -> Result<Reply> {
    // The image path is the router's: under --root.
    let path = ctx.root.join(image.trim_start_matches('/'));
    if image.is_empty() || !path.is_file() {
        return Ok(Reply::Error("image_file_not_found".into()));
    }
    let Some(p) = peer(ctx.root)? else {
        return Ok(invalid("backup_node_ip", "missing_backup_node_ip"));
    };
    Ok(match upgrade::upgrade_remote(ctx, &p, Some(&path)) {
        Ok(_) => Reply::Ok(json!({ "result": "success" })),
        Err(e) => Reply::Error(format!("error_executing_upgrade_on_backup_node: {e}")),
    })
}

// ---------------------------------------------------------------------------------------------
// Commands
