//! `/etc/ha` exported on the primary from its UCI, then imported on a backup (issue 12, item 1):
//! every WAN kind (static v4/v6, DHCP, PPPoE, over a physical port, a VLAN, a bond, a bridge),
//! WireGuard with an anonymous peer, IPsec, OpenVPN, routes, the hotspot.

mod common;

use common::*;
use restore_hooks::export::{export, records};
use restore_hooks::records::import;
use serde_json::Value;
use std::path::Path;
use sync_core::uci::Package;

const NETWORK: &str = "
config interface 'loopback'
\toption device 'lo'
\toption proto 'static'

config interface 'wan'
\toption device 'eth1.100'
\toption proto 'static'
\toption ipaddr '203.0.113.10/24'
\toption gateway '203.0.113.1'

config device 'vlan100'
\toption type '8021q'
\toption ifname 'bond-bond1'
\toption vid '100'
\toption name 'eth1.100'

config interface 'bond1'
\toption proto 'bonding'
\tlist slaves 'eth3'
\tlist slaves 'eth4'
\toption bonding_policy 'active-backup'

config interface 'wan6'
\toption device 'eth1'
\toption proto 'static'
\toption ip6addr '2001:db8::10/64'

config interface 'wan2'
\toption device 'br-wan'
\toption proto 'dhcp'

config device
\toption type 'bridge'
\toption name 'br-wan'
\tlist ports 'eth5'
\tlist ports 'eth6'

config interface 'wan3'
\toption device 'eth7.20'
\toption proto 'pppoe'
\toption username 'isp'
\toption password 'secret'

config interface 'wan_alias'
\toption device '@wan'
\toption proto 'static'
\toption ipaddr '203.0.113.11/24'

config interface 'lan'
\toption device 'br-lan'
\toption proto 'static'
\toption ipaddr '192.168.1.1/24'

config interface 'wg1'
\toption proto 'wireguard'
\toption private_key 'aGVsbG8='
\tlist addresses '10.9.9.1/24'

config wireguard_wg1
\toption public_key 'cGVlcg=='
\tlist allowed_ips '10.9.9.2/32'

config interface 'ipsec1'
\toption proto 'xfrm'
\toption ifid '1'

config interface 'tunrw'
\toption device 'tunrw'
\toption proto 'none'

config route 'ns_r1'
\toption target '10.50.0.0/16'
\toption gateway '192.168.1.254'
\toption interface 'lan'

config route6
\toption target '2001:db8:1::/48'
\toption interface 'wan6'
";

const FIREWALL: &str = "
config zone 'ns_wan'
\toption name 'wan'
\tlist network 'wan'
\tlist network 'wan6'
\tlist network 'wan2'
\tlist network 'wan3'
\tlist network 'wan_alias'
";

fn primary(root: &Path) {
    write(
        root,
        "etc/config/keepalived",
        "\nconfig peer 'ha_peer'\n\tlist sync_list '/etc/ha'\n\nconfig primary 'primary'\n\toption priority '100'\n",
    );
    write(root, "etc/config/network", NETWORK);
    write(root, "etc/config/firewall", FIREWALL);
    write(
        root,
        "etc/config/dedalo",
        "\nconfig dedalo 'config'\n\toption disabled '0'\n\toption interface 'eth2'\n",
    );
    write(root, "sys/class/net/eth2/address", "02:11:22:33:44:55\n");
}

fn json(root: &Path, name: &str) -> Value {
    serde_json::from_str(&read(root, &format!("etc/ha/{name}"))).unwrap()
}

#[test]
fn the_primary_exports_every_record_kind_and_the_backup_imports_them() {
    let t = tempfile::tempdir().unwrap();
    let (p, b) = (t.path().join("p"), t.path().join("b"));
    primary(&p);
    let done = export(&p).unwrap().expect("the primary exports");
    assert_eq!(done.written.len(), 8, "{done:?}");

    let wan = json(&p, "wan_interfaces");
    for i in ["wan", "wan6", "wan2", "wan3", "wan_alias"] {
        assert!(wan.get(i).is_some(), "{i}: {wan}");
    }
    assert_eq!(wan["wan"]["ipaddr"], "203.0.113.10/24");
    assert_eq!(wan["wan6"]["ip6addr"], "2001:db8::10/64");
    assert_eq!(wan["wan3"]["proto"], "pppoe");
    // Devices: the VLAN, the bond under it (as its interface), the bridge; no alias, no port
    // without a section of its own.
    let devs = json(&p, "wan_devices");
    let keys: Vec<&str> = devs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["vlan100", "bond1", "br_wan"], "{devs}");
    assert_eq!(devs[1]["type"], "interface");
    assert_eq!(devs[2]["ports"], serde_json::json!(["eth5", "eth6"]));
    assert_eq!(json(&p, "wg_interfaces")["wg1"]["proto"], "wireguard");
    assert_eq!(
        json(&p, "wg_peers")["wg1_peer0"]["allowed_ips"],
        serde_json::json!(["10.9.9.2/32"])
    );
    assert_eq!(json(&p, "ipsec_interfaces")["ipsec1"]["ifid"], "1");
    assert!(json(&p, "tun_interfaces").get("tunrw").is_some());
    let routes = json(&p, "routes");
    assert_eq!(routes["ns_r1"]["target"], "10.50.0.0/16");
    assert_eq!(routes["route1"]["target"], "2001:db8:1::/48");
    assert_eq!(
        json(&p, "hotspot"),
        serde_json::json!({"device": "eth2", "mac_address": "02:11:22:33:44:55"})
    );

    // Unchanged UCI: nothing written (an unchanged export triggers no sync).
    let again = export(&p).unwrap().unwrap();
    assert!(
        again.written.is_empty() && again.removed.is_empty(),
        "{again:?}"
    );
    // Dedalo off: the hotspot record goes.
    write(
        &p,
        "etc/config/dedalo",
        "\nconfig dedalo 'config'\n\toption disabled '1'\n",
    );
    assert_eq!(export(&p).unwrap().unwrap().removed, ["hotspot"]);

    // The backup: the records arrive (as the sync mirrors /etc/ha), the import takes them.
    backup_root(&b);
    std::fs::remove_dir_all(b.join("etc/ha")).ok();
    for (name, _) in records(&p).unwrap() {
        write(
            &b,
            &format!("etc/ha/{name}"),
            &read(&p, &format!("etc/ha/{name}")),
        );
    }
    import(&b).unwrap();
    let net = Package::load(&b.join("etc/config/network")).unwrap();
    for i in ["wan", "wan6", "wan2", "wan3", "wg1", "ipsec1", "tunrw"] {
        let s = net.section(i).unwrap_or_else(|| panic!("{i} imported"));
        assert_eq!(s.get("auto"), Some("0"), "{i} imported down");
        assert!(
            s.get_list("ns_tag").contains(&"ha".to_string()),
            "{i} tagged"
        );
    }
    assert_eq!(net.get("vlan100", "name"), Some("eth1.100"));
    assert_eq!(net.get("br_wan", "type"), Some("bridge"));
    assert_eq!(net.get("bond1", "proto"), Some("bonding"));
    assert_eq!(net.get("ns_r1", "target"), Some("10.50.0.0/16"));
    assert!(
        net.sections.iter().any(|s| s.kind == "wireguard_wg1"),
        "the peer comes back as wireguard_wg1"
    );
}

#[test]
fn a_backup_that_is_not_master_exports_nothing() {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("b");
    backup_root(&b);
    write(&b, "etc/config/network", NETWORK);
    write(&b, "etc/config/firewall", FIREWALL);
    std::fs::remove_dir_all(b.join("etc/ha")).ok();
    assert_eq!(export(&b).unwrap(), None);
    assert!(!b.join("etc/ha").exists());
    // During a failover it is the master: it exports, as the incumbent does.
    write(&b, "var/run/ha-sync/vrrp_state", "master\n");
    assert!(export(&b).unwrap().is_some());
    assert!(b.join("etc/ha/wan_interfaces").exists());
}
