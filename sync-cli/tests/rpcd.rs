//! `ha-sync rpcd`, the `/usr/libexec/rpcd/ns.ha` of NethSecurity's web UI, on temporary roots.
//! Expected outputs are written from the incumbent's python `ns.ha` (NethServer/nethsecurity,
//! `packages/ns-api/files/ns.ha`; error shapes from python-nethsec's `nethsec.utils`); each
//! comment names the function a fixture comes from. Commands run only from under the root,
//! and none exists there, so nothing of the test machine is started or stopped.

use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const HA_SYNC: &str = env!("CARGO_BIN_EXE_ha-sync");

const NETWORK: &str = "
config interface 'loopback'
	option device 'lo'
	option proto 'static'
	option ipaddr '127.0.0.1'
	option netmask '255.0.0.0'

config interface 'lan'
	option device 'br-lan'
	option proto 'static'
	option ipaddr '192.168.100.238'
	option netmask '255.255.255.0'

config interface 'wan'
	option device 'eth1'
	option proto 'dhcp'

config interface 'lan2'
	option device 'eth2'
	option proto 'static'
	option ipaddr '192.168.200.185/24'

config interface 'alias'
	option device '@lan'
	option proto 'static'
	option ipaddr '10.1.1.1/24'

config interface 'long'
	option device 'eth1.100-longname'
	option proto 'static'
	option ipaddr '10.2.2.1/24'

config interface 'dmz'
	option device 'eth3'
	option proto 'static'
	option ipaddr '10.3.3.1/24'
";

const DHCP: &str = "
config dhcp 'lan'
	option interface 'lan'
	option dhcpv4 'server'
	list dhcp_option 'option:router,192.168.100.240'
	list dhcp_option 'option:dns-server,192.168.100.240'

config dhcp 'lan2'
	option interface 'lan2'
	option dhcpv4 'server'
	option force '1'
	list dhcp_option '3,192.168.200.190'
	list dhcp_option '6,192.168.200.190'

config dhcp 'dmz'
	option interface 'dmz'
	option dhcpv4 'server'
";

const FIREWALL: &str = "
config zone
	option name 'lan'
	list network 'lan'
";

fn root() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let etc = d.path().join("etc/config");
    fs::create_dir_all(&etc).unwrap();
    fs::write(etc.join("network"), NETWORK).unwrap();
    fs::write(etc.join("dhcp"), DHCP).unwrap();
    fs::write(etc.join("firewall"), FIREWALL).unwrap();
    fs::write(etc.join("keepalived"), "config globals 'globals'\n").unwrap();
    d
}

struct Out {
    code: Option<i32>,
    json: Value,
    stderr: String,
}

fn rpcd(root: &Path, args: &[&str], input: &str) -> Out {
    let mut child = Command::new(HA_SYNC)
        .arg("rpcd")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"))
    };
    Out {
        code: out.status.code(),
        json,
        stderr,
    }
}

fn call(root: &Path, method: &str, input: Value) -> Out {
    rpcd(root, &["call", method], &input.to_string())
}

/// `utils.validation_error(parameter, message)` for an `ns.ha` `ValidationError`, with the
/// last line of the incumbent's traceback on stderr and exit status 1.
fn assert_invalid(out: &Out, parameter: &str, message: &str) {
    assert_eq!(
        out.json,
        json!({"validation": {"errors": [{"parameter": parameter, "message": message, "value": ""}]}}),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "nethsec.utils.ValidationError: ('{parameter}', '{message}')"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(out.code, Some(1));
}

fn assert_ok(out: &Out, expected: Value) {
    assert_eq!(out.json, expected, "{}", out.stderr);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

fn error_of(out: &Out) -> String {
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {}", out.json))
        .to_string()
}

/// A primary initialized on `lan` (ns.ha `init_local`, role primary).
fn init(root: &Path) {
    let out = call(
        root,
        "init-local",
        json!({"role": "primary", "primary_node_ip": "192.168.100.238",
               "backup_node_ip": "192.168.100.239", "virtual_ip": "192.168.100.240/24",
               "lan_interface": "lan", "pubkey": "", "password": ""}),
    );
    assert_ok(&out, json!({"success": true}));
}

#[test]
fn list_prints_the_incumbents_method_table() {
    let d = root();
    let out = rpcd(d.path(), &["list"], "");
    // ns.ha, `if cmd == 'list'`.
    let expected = json!({
        "init-local": {
            "role": "primary", "primary_node_ip": "100.100.100.1",
            "backup_node_ip": "100.100.100.2", "virtual_ip": "192.168.100.253",
            "pubkey": "ssh-rsa AAAAB....", "password": "xxxxxxxx", "lan_interface": "lan"
        },
        "init-remote": {"ssh_password": "Nethesis,1234", "lan_interface": "lan"},
        "check-remote": {
            "backup_node_ip": "100.100.100.2", "ssh_password": "Nethesis,1234",
            "lan_interface": "lan"
        },
        "validate-requirements": {"role": "primary", "lan_interface": "lan"},
        "add-lan-interface": {
            "role": "primary", "primary_node_ip": "100.100.200.1",
            "backup_node_ip": "100.100.200.2", "virtual_ip": "192.168.200.250/24"
        },
        "remove-interface": {"role": "primary", "interface": "lan2"},
        "add-vip": {"role": "primary", "interface": "lan", "virtual_ip": "1.2.3.5/24"},
        "remove-vip": {"role": "primary", "interface": "lan", "virtual_ip": "1.2.3.5/24"},
        "status": {},
        "list-interfaces": {},
        "list-vips": {},
        "reset": {"role": "primary", "pubkey": "ssh-rsa AAAAB...."},
        "upgrade-remote": {"image": "/tmp/upgrade.img.gz"},
        "disable": {"role": "primary"},
        "enable": {"role": "primary"}
    });
    assert_ok(&out, expected);
}

/// The incumbent's keys of `status()`; ha-sync adds its own (daemon, sync, ...).
fn incumbent_status(v: &Value) -> Value {
    let keys = [
        "role",
        "state",
        "status",
        "last_sync_status",
        "last_sync_time",
        "lock_status",
        "lock_timeout",
        "virtual_ips",
        "keepalived_stats",
    ];
    Value::Object(
        keys.iter()
            .map(|k| {
                let v = v.get(*k).unwrap_or_else(|| panic!("status lacks {k}: {v}"));
                (k.to_string(), v.clone())
            })
            .collect(),
    )
}

#[test]
fn status_of_an_unconfigured_and_a_configured_node() {
    let d = root();
    let out = rpcd(d.path(), &["call", "status"], "");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // ns.ha status(): no keepalived.primary/backup section; get_lock_status() without
    // ns_lock_timeout; no ipaddress sections.
    assert_eq!(
        incumbent_status(&out.json),
        json!({"role": "unknown", "state": "unknown", "status": "disabled",
               "last_sync_status": "", "last_sync_time": "", "lock_status": "disabled",
               "lock_timeout": "", "virtual_ips": {}, "keepalived_stats": {}})
    );

    init(d.path());
    let out = rpcd(d.path(), &["call", "status"], "");
    let st = incumbent_status(&out.json);
    // ns.ha status() after init_local(role primary): role from the `primary` section,
    // virtual_ips = get_all_by_type(keepalived, ipaddress), keyed by section.
    assert_eq!(st["role"], "primary");
    assert_eq!(st["status"], "enabled");
    assert_eq!(st["lock_status"], "disabled");
    let vip = &st["virtual_ips"]["lan_ipaddress"];
    assert_eq!(vip["name"], "lan_ha");
    assert_eq!(vip["address"], "192.168.100.240/24");
    assert_eq!(vip["device"], "br-lan");
    assert_eq!(vip["label_suffix"], "ha");
    assert_eq!(vip["ns_link"], "network/lan");
}

#[test]
fn status_reports_the_lock_timeout() {
    let d = root();
    fs::write(
        d.path().join("etc/config/keepalived"),
        "config globals 'globals'\n\toption ns_lock_timeout '30'\n",
    )
    .unwrap();
    let out = rpcd(d.path(), &["call", "status"], "");
    // ns.ha get_lock_status(): a positive number of seconds.
    let st = incumbent_status(&out.json);
    assert_eq!(st["lock_status"], "enabled");
    assert_eq!(st["lock_timeout"], "30");
}

#[test]
fn list_interfaces_and_vips() {
    let d = root();
    // ns.ha list_interfaces(): no loopback, no alias (`@lan`), ha_configured from
    // `<name>_ipaddress`, virtual_ip its address or "".
    let iface = |name: &str, device: &str, ha: bool, vip: &str| json!({"device": device, "name": name, "ha_configured": ha, "virtual_ip": vip});
    let out = rpcd(d.path(), &["call", "list-interfaces"], "");
    assert_ok(
        &out,
        json!({"interfaces": [
            iface("lan", "br-lan", false, ""), iface("wan", "eth1", false, ""),
            iface("lan2", "eth2", false, ""), iface("long", "eth1.100-longname", false, ""),
            iface("dmz", "eth3", false, ""),
        ]}),
    );
    // ns.ha list_vips() on an unconfigured node.
    assert_ok(
        &rpcd(d.path(), &["call", "list-vips"], ""),
        json!({"vips": []}),
    );

    init(d.path());
    let out = rpcd(d.path(), &["call", "list-interfaces"], "");
    assert_eq!(
        out.json["interfaces"][0],
        iface("lan", "br-lan", true, "192.168.100.240/24")
    );
    // ns.ha add_vip() then list_vips(): `<if>_<ip>_ipaddress`, interface from ns_link.
    let add = call(
        d.path(),
        "add-vip",
        json!({"role": "primary", "interface": "lan", "virtual_ip": "192.168.100.66/24"}),
    );
    assert_ok(&add, json!({"success": true}));
    assert_ok(
        &rpcd(d.path(), &["call", "list-vips"], ""),
        json!({"vips": [{"interface": "lan", "ipaddr": "192.168.100.66/24"}]}),
    );
    let ka = fs::read_to_string(d.path().join("etc/config/keepalived")).unwrap();
    assert!(ka.contains("lan_192_168_100_66_24_ipaddress"), "{ka}");
    // ns.ha remove_vip().
    let rm = call(
        d.path(),
        "remove-vip",
        json!({"role": "primary", "interface": "lan", "virtual_ip": "192.168.100.66/24"}),
    );
    assert_ok(&rm, json!({"success": true}));
    assert_ok(
        &rpcd(d.path(), &["call", "list-vips"], ""),
        json!({"vips": []}),
    );
}

#[test]
fn validate_requirements_gives_the_incumbents_codes() {
    let d = root();
    let v = |role: &str, lan: &str| {
        call(
            d.path(),
            "validate-requirements",
            json!({"role": role, "lan_interface": lan}),
        )
    };
    // ns.ha validate_requirements(): validate_network + validate_dhcp (primary only).
    assert_ok(&v("primary", "lan"), json!({"success": true, "errors": []}));
    assert_ok(
        &v("primary", "lan2"),
        json!({"success": true, "errors": []}),
    );
    assert_ok(
        &v("primary", "wan"),
        json!({"success": false, "errors": ["lan_network_not_static"]}),
    );
    // validate_network(): uci.get of a missing section raises, proto stays "".
    assert_ok(
        &v("primary", "nope"),
        json!({"success": false, "errors": ["lan_network_not_found", "lan_network_not_static"]}),
    );
    assert_ok(
        &v("backup", "long"),
        json!({"success": false, "errors": ["lan_device_network_too_long"]}),
    );
    // validate_dhcp(): neither option:router nor option:dns.
    assert_ok(
        &v("primary", "dmz"),
        json!({"success": false, "errors": ["dhcp_router_option_not_found", "dhcp_dns_option_not_found"]}),
    );
    // The backup is not checked for DHCP.
    assert_ok(&v("backup", "dmz"), json!({"success": true, "errors": []}));

    // validate_dhcp() once keepalived is configured: the router must be the VIP.
    init(d.path());
    fs::write(
        d.path().join("etc/config/dhcp"),
        DHCP.replace(
            "option:router,192.168.100.240",
            "option:router,192.168.100.238",
        ),
    )
    .unwrap();
    assert_ok(
        &v("primary", "lan"),
        json!({"success": false, "errors": ["dhcp_router_option_does_not_match_vip: lan"]}),
    );
}

#[test]
fn init_local_validation_errors() {
    let d = root();
    let init = |lan: &str, primary: &str| {
        call(
            d.path(),
            "init-local",
            json!({"role": "primary", "primary_node_ip": primary,
                   "backup_node_ip": "192.168.100.239", "virtual_ip": "192.168.100.240/24",
                   "lan_interface": lan}),
        )
    };
    // ns.ha init_local(): ValidationError("lan_network_errors", validate_network()[0]).
    assert_invalid(
        &init("wan", "192.168.100.238"),
        "lan_network_errors",
        "lan_network_not_static",
    );
    assert_invalid(
        &init("nope", "192.168.100.238"),
        "lan_network_errors",
        "lan_network_not_found",
    );
    // init_local(): get_device_from_ip() found nothing.
    assert_invalid(
        &init("lan", "192.168.100.1"),
        "primary_node_ip",
        "no_device_with_static_ip_found",
    );
    // Nothing was written.
    let ka = fs::read_to_string(d.path().join("etc/config/keepalived")).unwrap();
    assert_eq!(ka, "config globals 'globals'\n");
    // The backup is initialized from the primary (init-remote), not by a call on it.
    let out = call(
        d.path(),
        "init-local",
        json!({"role": "backup", "lan_interface": "lan"}),
    );
    assert!(error_of(&out).contains("not supported"), "{}", out.json);
}

#[test]
fn add_and_remove_lan_interface() {
    let d = root();
    init(d.path());
    let add = |primary: &str, backup: &str, vip: &str| {
        call(
            d.path(),
            "add-lan-interface",
            json!({"role": "primary", "primary_node_ip": primary, "backup_node_ip": backup,
                   "virtual_ip": vip}),
        )
    };
    // ns.ha add_lan_interface(): get_device_from_ip() found no interface.
    assert_invalid(
        &add("10.9.9.9", "10.9.9.8", "10.9.9.10/24"),
        "primary_node_ip",
        "no_interface_with_static_ip_found",
    );
    // add_lan_interface(): `len(device) >= 13`.
    assert_invalid(
        &add("10.2.2.1", "10.2.2.2", "10.2.2.3/24"),
        "primary_node_ip",
        "device_name_too_long_for_ha",
    );
    // add_lan_interface(): ValidationError("dhcp_configuration_errors", validate_dhcp()[0]).
    assert_invalid(
        &add("10.3.3.1", "10.3.3.2", "10.3.3.3/24"),
        "dhcp_configuration_errors",
        "dhcp_router_option_not_found",
    );
    // add_lan_interface() on the primary (no backup yet): {"success": True}.
    assert_ok(
        &add("192.168.200.185", "192.168.200.186", "192.168.200.190/24"),
        json!({"success": true}),
    );
    let out = rpcd(d.path(), &["call", "list-interfaces"], "");
    assert_eq!(out.json["interfaces"][2]["ha_configured"], true);
    assert_eq!(
        out.json["interfaces"][2]["virtual_ip"],
        "192.168.200.190/24"
    );

    // remove_interface(), add_vip(), remove_vip(): the interface must be HA-configured.
    let rm = |i: &str| {
        call(
            d.path(),
            "remove-interface",
            json!({"role": "primary", "interface": i}),
        )
    };
    assert_invalid(&rm("wan"), "interface", "interface_not_configured_for_ha");
    for m in ["add-vip", "remove-vip"] {
        let out = call(
            d.path(),
            m,
            json!({"role": "primary", "interface": "dmz", "virtual_ip": "10.3.3.9/24"}),
        );
        assert_invalid(&out, "interface", "interface_not_configured_for_ha");
    }
    assert_ok(&rm("lan2"), json!({"success": true}));
    let out = rpcd(d.path(), &["call", "list-interfaces"], "");
    assert_eq!(out.json["interfaces"][2]["ha_configured"], false);
}

#[test]
fn enable_disable_reset() {
    let d = root();
    // Before init: the action's refusal, as generic_error's {"error": ...}.
    let out = call(d.path(), "enable", json!({"role": "primary"}));
    assert!(error_of(&out).contains("not configured"), "{}", out.json);

    init(d.path());
    // ns.ha enable()/disable(): {"success": True} (no backup initialized yet).
    for m in ["disable", "enable"] {
        assert_ok(
            &call(d.path(), m, json!({"role": "primary"})),
            json!({"success": true}),
        );
    }
    // ns.ha reset() on the primary.
    assert_ok(
        &call(
            d.path(),
            "reset",
            json!({"role": "primary", "pubkey": "ssh-rsa AAAAB...."}),
        ),
        json!({"success": true}),
    );
    let st = rpcd(d.path(), &["call", "status"], "");
    assert_eq!(st.json["status"], "disabled");
    assert!(!d.path().join("etc/conntrackd/conntrackd.conf").exists());
    // The backup's half (its agent's code): reset of an unconfigured node succeeds.
    assert_ok(
        &call(d.path(), "reset", json!({"role": "backup", "pubkey": ""})),
        json!({"success": true}),
    );
}

#[test]
fn remote_methods_without_a_backup() {
    let d = root();
    // ns.ha init_remote(): no keepalived.primary section.
    assert_invalid(
        &call(
            d.path(),
            "init-remote",
            json!({"ssh_password": "x", "lan_interface": "lan"}),
        ),
        "primary_node_ip",
        "no_primary_keepalived_instance_found",
    );
    // ns.ha check_remote(): {"success": False, "errors": ['ssh_connection_failed: ...']}.
    let out = call(
        d.path(),
        "check-remote",
        json!({"backup_node_ip": "", "ssh_password": "", "lan_interface": "lan"}),
    );
    assert_eq!(out.json["success"], false);
    let errors = out.json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert!(errors[0]
        .as_str()
        .unwrap()
        .starts_with("ssh_connection_failed: "));
    // ns.ha upgrade_remote(): generic_error("image_file_not_found").
    assert_ok(
        &call(
            d.path(),
            "upgrade-remote",
            json!({"image": "/tmp/none.img"}),
        ),
        json!({"error": "image_file_not_found"}),
    );
    // execute_remote_command(): ValidationError('backup_node_ip', 'missing_backup_node_ip').
    fs::create_dir_all(d.path().join("tmp")).unwrap();
    fs::write(d.path().join("tmp/up.img"), b"image").unwrap();
    assert_invalid(
        &call(d.path(), "upgrade-remote", json!({"image": "/tmp/up.img"})),
        "backup_node_ip",
        "missing_backup_node_ip",
    );
}

#[test]
fn unknown_method_and_bad_input_fail_without_output() {
    let d = root();
    let out = rpcd(d.path(), &["call", "nope"], "{}");
    assert_eq!(out.code, Some(1));
    assert_eq!(out.json, Value::Null);
    let out = rpcd(d.path(), &["call", "enable"], "not json");
    assert_eq!(out.code, Some(1));
    assert_eq!(out.json, Value::Null);
}
