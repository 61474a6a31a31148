//! The ns-ha-config actions on temporary roots with a recording runner: resulting UCI and
//! files on both nodes (the backup reached through a peer that runs its half in-process),
//! every refusal, and the outputs of show-config, status and the keepalived.conf renderer.

use std::fs;
use std::path::{Path, PathBuf};

use ha_cluster::actions;
use ha_cluster::keepalived::{self, Notify, RenderOptions};
use ha_cluster::request::{
    ClusterAnswer, ClusterRequest, ImageHeader, Peer, RemoteAction, UploadAnswer, MAX_IMAGE,
};
use ha_cluster::{upgrade, ClusterError, Ctx};
use sync_core::runner::{CmdOutput, RecordingRunner};
use sync_core::uci::Package;

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

config interface 'guest'
	option device 'br-guestnetwork'
	option proto 'static'
	option ipaddr '10.9.9.1'
	option netmask '255.255.255.0'
";

const DHCP: &str = "
config dhcp 'lan'
	option interface 'lan'
	option start '100'
	list dhcp_option '3,192.168.100.240'
	list dhcp_option '6,192.168.100.240'

config dhcp 'lan2'
	option interface 'lan2'
	option force '1'
	list dhcp_option '3,192.168.200.190'
	list dhcp_option 'option:dns-server,1.1.1.1'

config dhcp 'wan'
	option interface 'wan'
	option ignore '1'
";

struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    runner: RecordingRunner,
}

impl Node {
    fn new(network: &str, dhcp: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("etc/config")).expect("mkdir");
        fs::write(root.join("etc/config/network"), network).expect("network");
        fs::write(root.join("etc/config/dhcp"), dhcp).expect("dhcp");
        Node {
            _dir: dir,
            root,
            runner: RecordingRunner::new(),
        }
    }

    fn primary() -> Node {
        Node::new(NETWORK, DHCP)
    }

    /// The backup: same devices, its own addresses.
    fn backup() -> Node {
        let net = NETWORK
            .replace("192.168.100.238", "192.168.100.239")
            .replace("192.168.200.185", "192.168.200.186");
        Node::new(&net, DHCP)
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            root: &self.root,
            runner: &self.runner,
        }
    }

    fn uci(&self) -> Package {
        Package::load(&self.root.join("etc/config/keepalived")).expect("keepalived uci")
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn init(&self) {
        actions::init_primary_node(
            &self.ctx(),
            "192.168.100.238",
            "192.168.100.239",
            "192.168.100.240/24",
            "lan",
        )
        .expect("init-primary-node");
    }
}

/// The backup as the primary's actions see it: its half of each remote action runs here.
struct LocalPeer<'a> {
    node: &'a Node,
    calls: std::cell::RefCell<Vec<RemoteAction>>,
}

impl<'a> LocalPeer<'a> {
    fn new(node: &'a Node) -> Self {
        LocalPeer {
            node,
            calls: Default::default(),
        }
    }
}

impl Peer for LocalPeer<'_> {
    fn call(&self, req: &ClusterRequest) -> Result<ClusterAnswer, ClusterError> {
        let action = req.action();
        self.calls.borrow_mut().push(action);
        // As over SSH: the request and the answer travel as JSON text.
        let req =
            ClusterRequest::from_wire(action, &req.to_wire().expect("encode")).expect("decode");
        let answer =
            actions::serve(&self.node.ctx(), req).map_err(|e| ClusterError::Peer(e.to_string()))?;
        Ok(ClusterAnswer::from_wire(action, &answer.to_wire().expect("encode")).expect("decode"))
    }

    fn send_image(&self, header: &ImageHeader, image: &Path) -> Result<UploadAnswer, ClusterError> {
        // As over SSH: a header line, then the image.
        let mut wire = header.to_line().expect("header");
        wire.extend(fs::read(image).expect("image"));
        let got = upgrade::receive_image(&self.node.ctx(), &mut wire.as_slice())
            .map_err(|e| ClusterError::Peer(e.to_string()))?;
        Ok(UploadAnswer {
            result: "installing".into(),
            image: got.display().to_string(),
        })
    }
}

fn get<'a>(pkg: &'a Package, section: &str, option: &str) -> &'a str {
    pkg.get(section, option)
        .unwrap_or_else(|| panic!("keepalived.{section}.{option} missing"))
}

fn err_text<T: std::fmt::Debug>(r: Result<T, ClusterError>) -> String {
    r.expect_err("must be refused").to_string()
}

#[test]
fn init_primary_writes_keepalived_conntrackd_and_the_cluster_key() {
    let p = Node::primary();
    p.init();
    let k = p.uci();
    let inst = k.section("primary").expect("keepalived.primary");
    assert_eq!(inst.kind, "vrrp_instance");
    assert_eq!(get(&k, "primary", "state"), "MASTER");
    assert_eq!(get(&k, "primary", "interface"), "br-lan");
    assert_eq!(get(&k, "primary", "virtual_router_id"), "100");
    assert_eq!(get(&k, "primary", "priority"), "100");
    assert_eq!(get(&k, "primary", "advert_int"), "1");
    assert_eq!(get(&k, "primary", "auth_type"), "PASS");
    let pass = get(&k, "primary", "auth_pass");
    assert!(
        pass.len() == 8 && pass.bytes().all(|b| b.is_ascii_hexdigit()),
        "{pass}"
    );
    assert_eq!(get(&k, "primary", "unicast_src_ip"), "192.168.100.238");
    assert_eq!(k.get_list("primary", "unicast_peer"), vec!["ha_peer"]);
    assert_eq!(k.get_list("primary", "virtual_ipaddress"), vec!["lan_ha"]);
    // the main LAN is the instance's own interface: keepalived tracks it by itself
    assert!(k.get_list("primary", "track_interface").is_empty());
    // One track_script: the catch-up gate (issue 11), never sync health; a failing sync must
    // not move the VIPs, only a reachable master peer holding unpulled changes holds the
    // returning primary back, for a bounded time.
    assert_eq!(
        k.get_list("primary", "track_script"),
        vec!["ha_catchup_track"]
    );
    assert_eq!(get(&k, "ha_catchup_track", "value"), "ha_catchup");
    assert_eq!(
        get(&k, "ha_catchup", "script"),
        "/usr/sbin/ha-sync caught-up"
    );
    assert_eq!(get(&k, "ha_catchup", "weight"), "-60");
    assert_eq!(get(&k, "ha_catchup", "init_fail"), "1");
    assert_eq!(k.sections_of_kind("track_script").count(), 1);

    assert_eq!(k.section("ha_peer").expect("peer").kind, "peer");
    assert_eq!(get(&k, "ha_peer", "address"), "192.168.100.239");
    assert_eq!(get(&k, "ha_peer", "ssh_port"), "65022");
    assert_eq!(get(&k, "ha_peer", "sync_mode"), "send");
    assert_eq!(get(&k, "ha_peer", "ssh_key"), "/etc/ha-sync/id_ed25519");
    assert_eq!(
        k.get_list("ha_peer", "sync_list"),
        keepalived::DEFAULT_SYNC_LIST.to_vec()
    );
    assert_eq!(
        k.get_list("ha_peer", "exclude_list"),
        keepalived::DEFAULT_EXCLUDE_LIST.to_vec()
    );

    let vip = k.section("lan_ipaddress").expect("lan_ipaddress");
    assert_eq!(vip.kind, "ipaddress");
    assert_eq!(vip.get("name"), Some("lan_ha"));
    assert_eq!(vip.get("address"), Some("192.168.100.240/24"));
    assert_eq!(vip.get("device"), Some("br-lan"));
    assert_eq!(vip.get("label_suffix"), Some("ha"));
    assert_eq!(vip.get("ns_link"), Some("network/lan"));
    assert_eq!(k.sections_of_kind("track_interface").count(), 0);
    assert!(k.section("globals").is_some());

    let ct = p.read("etc/conntrackd/conntrackd.conf");
    for line in [
        "Mode FTFW",
        "IPv4_address 192.168.100.238",
        "IPv4_Destination_Address 192.168.100.239",
        "Port 3780",
        "Interface br-lan",
    ] {
        assert!(ct.contains(line), "{line} in\n{ct}");
    }
    let ignore = ct
        .split("Address Ignore {")
        .nth(1)
        .and_then(|s| s.split('}').next())
        .expect("ignore block");
    let ignored: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix("IPv4_address "))
        .collect();
    assert_eq!(
        ignored,
        vec![
            "127.0.0.1",
            "192.168.100.238",
            "192.168.100.239",
            "192.168.100.240"
        ]
    );

    assert!(p.root.join("etc/ha-sync/id_ed25519").is_file());
    assert!(p.root.join("etc/ha-sync/id_ed25519.pub").is_file());
    assert_eq!(
        p.runner.lines(),
        vec![
            "/etc/init.d/keepalived enable",
            "/etc/init.d/keepalived restart",
            "/etc/init.d/conntrackd enable",
            "/etc/init.d/conntrackd restart",
        ]
    );
    // the network configuration is never touched
    assert_eq!(p.read("etc/config/network"), NETWORK);
    // role as the sync and the hooks see it
    assert_eq!(
        sync_core::node::Node::new(&p.root).role(),
        Some(restore_hooks::Role::Primary)
    );
}

#[test]
fn backup_gets_the_same_cluster_with_its_own_role_and_the_password_is_kept() {
    let p = Node::primary();
    let b = Node::backup();
    p.init();
    let pass = get(&p.uci(), "primary", "auth_pass").to_string();
    let peer = LocalPeer::new(&b);
    actions::add_lan_interface(
        &p.ctx(),
        Some(&peer),
        "192.168.200.185",
        "192.168.200.186",
        "192.168.200.190/24",
    )
    .expect("add-lan-interface");
    actions::add_vip(&p.ctx(), Some(&peer), "lan", "192.168.100.66/24").expect("add-vip");
    assert_eq!(
        *peer.calls.borrow(),
        vec![
            RemoteAction::Validate,
            RemoteAction::Configure,
            RemoteAction::Configure
        ]
    );

    for (node, section, prio, src, peer_addr, mode) in [
        (
            &p,
            "primary",
            "100",
            "192.168.100.238",
            "192.168.100.239",
            "send",
        ),
        (
            &b,
            "backup",
            "50",
            "192.168.100.239",
            "192.168.100.238",
            "receive",
        ),
    ] {
        let k = node.uci();
        assert_eq!(get(&k, section, "priority"), prio);
        assert_eq!(get(&k, section, "unicast_src_ip"), src);
        assert_eq!(get(&k, "ha_peer", "address"), peer_addr);
        assert_eq!(get(&k, "ha_peer", "sync_mode"), mode);
        assert_eq!(get(&k, section, "auth_pass"), pass, "password kept");
        assert_eq!(
            k.get_list(section, "virtual_ipaddress"),
            vec!["lan_ha", "lan2_ha", "lan_192_168_100_66_24_ha"]
        );
        assert_eq!(k.get_list(section, "track_interface"), vec!["lan2_track"]);
        let track = k.section("lan2_track").expect("lan2_track");
        assert_eq!(track.kind, "track_interface");
        assert_eq!(track.get("value"), Some("eth2"));
        let extra = k
            .section("lan_192_168_100_66_24_ipaddress")
            .expect("extra vip section");
        assert_eq!(extra.get("address"), Some("192.168.100.66/24"));
        assert_eq!(extra.get("device"), Some("br-lan"));
        assert_eq!(extra.get("ns_link"), Some("network/lan"));
        let lan2 = k.section("lan2_ipaddress").expect("lan2 vip");
        assert_eq!(lan2.get("device"), Some("eth2"));
        assert_eq!(lan2.get("address"), Some("192.168.200.190/24"));
    }
    assert_eq!(get(&b.uci(), "backup", "state"), "BACKUP");
    assert!(b.uci().section("primary").is_none());
    assert_eq!(
        sync_core::node::Node::new(&b.root).role(),
        Some(restore_hooks::Role::Backup)
    );
    let ct = b.read("etc/conntrackd/conntrackd.conf");
    assert!(ct.contains("IPv4_address 192.168.100.239\n"), "{ct}");
    assert!(ct.contains("IPv4_Destination_Address 192.168.100.238\n"));
    for a in [
        "192.168.200.185",
        "192.168.200.186",
        "192.168.200.190",
        "192.168.100.66",
    ] {
        assert!(ct.contains(&format!("IPv4_address {a}\n")), "{a} ignored");
    }
    // the primary reloads keepalived (keeps its VIPs) instead of restarting it
    assert!(p
        .runner
        .lines()
        .contains(&"/etc/init.d/keepalived reload".to_string()));

    // removing the VIP and the interface, on both nodes
    actions::remove_vip(&p.ctx(), Some(&peer), "lan", "192.168.100.66/24").expect("remove-vip");
    actions::remove_interface(&p.ctx(), Some(&peer), "lan2").expect("remove-interface");
    for (node, section) in [(&p, "primary"), (&b, "backup")] {
        let k = node.uci();
        assert_eq!(k.get_list(section, "virtual_ipaddress"), vec!["lan_ha"]);
        assert!(k.get_list(section, "track_interface").is_empty());
        assert!(k.section("lan2_ipaddress").is_none());
        assert!(k.section("lan2_track").is_none());
        assert!(k.section("lan_192_168_100_66_24_ipaddress").is_none());
        assert_eq!(get(&k, section, "auth_pass"), pass);
    }
    // the primary keeps serving lan2 on the virtual IP (the clients' gateway), the backup
    // drops its copy of lan2; both reload their network, other interfaces untouched
    let pnet = Package::load(&p.root.join("etc/config/network")).expect("network");
    assert_eq!(pnet.get("lan2", "ipaddr"), Some("192.168.200.190/24"));
    assert_eq!(pnet.get("lan", "ipaddr"), Some("192.168.100.238"));
    let bnet = Package::load(&b.root.join("etc/config/network")).expect("network");
    assert!(bnet.section("lan2").is_none());
    assert_eq!(bnet.get("lan", "ipaddr"), Some("192.168.100.239"));
    for node in [&p, &b] {
        assert!(node
            .runner
            .lines()
            .contains(&"/etc/init.d/network reload".to_string()));
    }
}

#[test]
fn removing_an_interface_drops_its_extra_vips() {
    let p = Node::primary();
    p.init();
    actions::add_lan_interface(
        &p.ctx(),
        None,
        "192.168.200.185",
        "192.168.200.186",
        "192.168.200.190/24",
    )
    .expect("add");
    actions::add_vip(&p.ctx(), None, "lan2", "192.168.200.191/24").expect("vip");
    actions::remove_interface(&p.ctx(), None, "lan2").expect("remove");
    let k = p.uci();
    assert_eq!(k.get_list("primary", "virtual_ipaddress"), vec!["lan_ha"]);
    assert_eq!(k.sections_of_kind("ipaddress").count(), 1);
}

#[test]
fn removed_interface_keeps_the_vip_in_every_address_form() {
    // address + netmask, and a list of addresses: only the node's own address is replaced
    for (form, expect) in [
        (
            "\toption ipaddr '192.168.200.185'\n\toption netmask '255.255.255.0'\n",
            vec!["192.168.200.190"],
        ),
        (
            "\tlist ipaddr '192.168.200.185/24'\n\tlist ipaddr '10.9.9.1/16'\n",
            vec!["192.168.200.190/24", "10.9.9.1/16"],
        ),
    ] {
        let net = NETWORK.replace("\toption ipaddr '192.168.200.185/24'\n", form);
        assert_ne!(net, NETWORK, "fixture changed");
        let p = Node::new(&net, DHCP);
        p.init();
        actions::add_lan_interface(
            &p.ctx(),
            None,
            "192.168.200.185",
            "192.168.200.186",
            "192.168.200.190/24",
        )
        .expect("add");
        actions::remove_interface(&p.ctx(), None, "lan2").expect("remove");
        let n = Package::load(&p.root.join("etc/config/network")).expect("network");
        assert_eq!(n.get_list("lan2", "ipaddr"), expect, "{form}");
    }
}

#[test]
fn refusals_say_what_to_change() {
    // non-static LAN
    let p = Node::primary();
    let e = err_text(actions::check_primary_node(&p.ctx(), "wan"));
    assert!(e.contains("interface wan uses proto dhcp"), "{e}");
    assert!(e.contains("network.wan.proto=static"), "{e}");
    let e = err_text(actions::init_primary_node(
        &p.ctx(),
        "192.168.100.238",
        "192.168.100.239",
        "192.168.100.240/24",
        "wan",
    ));
    assert!(e.contains("proto dhcp"), "{e}");
    // unknown interface
    let e = err_text(actions::check_primary_node(&p.ctx(), "lan9"));
    assert!(e.contains("no interface \"lan9\""), "{e}");
    assert!(e.contains("lan, wan, lan2, guest"), "{e}");

    // missing DHCP options 3 and 6
    let no_opts = Node::new(NETWORK, "config dhcp 'lan'\n\toption interface 'lan'\n");
    let e = err_text(actions::check_primary_node(&no_opts.ctx(), "lan"));
    assert!(e.contains("DHCP option 3 (router) is not set"), "{e}");
    assert!(e.contains("DHCP option 6 (DNS server) is not set"), "{e}");
    assert!(
        e.contains("dhcp_option '3,<virtual IP>' to dhcp.lan"),
        "{e}"
    );
    let e = err_text(actions::init_primary_node(
        &no_opts.ctx(),
        "192.168.100.238",
        "192.168.100.239",
        "192.168.100.240/24",
        "lan",
    ));
    assert!(e.contains("dhcp_option '3,192.168.100.240'"), "{e}");
    // option 3 pointing at the node itself, or not at the VIP
    let own = Node::new(
        NETWORK,
        "config dhcp 'lan'\n\toption interface 'lan'\n\tlist dhcp_option '3,192.168.100.238'\n\tlist dhcp_option '6,1.1.1.1'\n",
    );
    let e = err_text(actions::check_primary_node(&own.ctx(), "lan"));
    assert!(e.contains("this node's own address"), "{e}");
    let e = err_text(actions::init_primary_node(
        &own.ctx(),
        "192.168.100.238",
        "192.168.100.239",
        "192.168.100.241/24",
        "lan",
    ));
    assert!(
        e.contains("set it to the virtual IP ('3,192.168.100.241'"),
        "{e}"
    );
    // no DHCP server (ignore=1) means no DHCP requirement
    let ignored = Node::new(
        NETWORK,
        "config dhcp 'lan'\n\toption interface 'lan'\n\toption ignore '1'\n",
    );
    actions::check_primary_node(&ignored.ctx(), "lan").expect("no DHCP server: fine");

    // bad CIDR
    for bad in [
        "192.168.100.240",
        "192.168.100.240/33",
        "192.168.100/24",
        "vip/24",
    ] {
        let e = err_text(actions::init_primary_node(
            &p.ctx(),
            "192.168.100.238",
            "192.168.100.239",
            bad,
            "lan",
        ));
        assert!(e.contains(&format!("invalid virtual IP {bad:?}")), "{e}");
        assert!(e.contains("CIDR"), "{e}");
    }
    // VIP outside the subnet
    let e = err_text(actions::init_primary_node(
        &p.ctx(),
        "192.168.100.238",
        "192.168.100.239",
        "192.168.101.240/24",
        "lan",
    ));
    assert!(
        e.contains("virtual IP 192.168.101.240/24 is not in the subnet of lan (192.168.100.0/24)"),
        "{e}"
    );
    // wrong own address, backup outside the subnet
    let e = err_text(actions::init_primary_node(
        &p.ctx(),
        "192.168.100.237",
        "10.0.0.2",
        "192.168.100.240/24",
        "lan",
    ));
    assert!(
        e.contains("192.168.100.237 is not this node's address on lan"),
        "{e}"
    );
    assert!(
        e.contains("backup address 10.0.0.2 is not in the subnet"),
        "{e}"
    );
    assert!(
        !p.root.join("etc/config/keepalived").exists(),
        "nothing written"
    );
    assert!(p.runner.lines().is_empty(), "nothing run");

    // not configured
    let e = err_text(actions::add_vip(&p.ctx(), None, "lan", "192.168.100.66/24"));
    assert!(e.contains("HA is not configured on this node"), "{e}");
    assert!(e.contains("init-primary-node"), "{e}");
    let e = err_text(actions::reset(&p.ctx(), None));
    assert!(e.contains("not configured"), "{e}");
    let e = err_text(actions::enable(&p.ctx(), None));
    assert!(e.contains("not configured"), "{e}");

    p.init();
    // already configured
    let e = err_text(actions::init_primary_node(
        &p.ctx(),
        "192.168.100.238",
        "192.168.100.239",
        "192.168.100.240/24",
        "lan",
    ));
    assert!(
        e.contains("already configured on this node (role primary)"),
        "{e}"
    );
    assert!(e.contains("reset"), "{e}");
    let e = err_text(actions::add_lan_interface(
        &p.ctx(),
        None,
        "192.168.100.238",
        "192.168.100.239",
        "192.168.100.241/24",
    ));
    assert!(
        e.contains("interface lan is already an HA interface"),
        "{e}"
    );
    actions::add_vip(&p.ctx(), None, "lan", "192.168.100.66/24").expect("vip");
    let e = err_text(actions::add_vip(&p.ctx(), None, "lan", "192.168.100.66/24"));
    assert!(e.contains("192.168.100.66 is already configured"), "{e}");
    let e = err_text(actions::add_vip(
        &p.ctx(),
        None,
        "lan",
        "192.168.100.240/24",
    ));
    assert!(e.contains("already configured"), "{e}");

    // VIPs: outside the subnet, on a node address, bad CIDR, not an HA interface
    let e = err_text(actions::add_vip(&p.ctx(), None, "lan", "192.168.7.66/24"));
    assert!(e.contains("not in the subnet of lan"), "{e}");
    let e = err_text(actions::add_vip(
        &p.ctx(),
        None,
        "lan",
        "192.168.100.239/24",
    ));
    assert!(e.contains("node's own address"), "{e}");
    let e = err_text(actions::add_vip(&p.ctx(), None, "lan", "192.168.100.67"));
    assert!(e.contains("invalid virtual IP"), "{e}");
    let e = err_text(actions::add_vip(
        &p.ctx(),
        None,
        "lan2",
        "192.168.200.66/24",
    ));
    assert!(
        e.contains("interface lan2 is not an HA interface (HA interfaces: lan)"),
        "{e}"
    );
    let e = err_text(actions::add_vip(
        &p.ctx(),
        None,
        "nope",
        "192.168.200.66/24",
    ));
    assert!(e.contains("no interface \"nope\""), "{e}");
    let e = err_text(actions::remove_vip(
        &p.ctx(),
        None,
        "lan",
        "192.168.100.99/24",
    ));
    assert!(
        e.contains(
            "no extra virtual IP 192.168.100.99/24 on lan (configured: 192.168.100.66/24 on lan)"
        ),
        "{e}"
    );
    let e = err_text(actions::remove_interface(&p.ctx(), None, "lan2"));
    assert!(e.contains("lan2 is not an HA interface"), "{e}");
    let e = err_text(actions::remove_interface(&p.ctx(), None, "nope"));
    assert!(e.contains("no interface \"nope\""), "{e}");
    let e = err_text(actions::remove_interface(&p.ctx(), None, "lan"));
    assert!(e.contains("main LAN"), "{e}");

    // add-lan-interface: no interface with that address, non-static, force start, label
    let e = err_text(actions::add_lan_interface(
        &p.ctx(),
        None,
        "192.168.50.1",
        "192.168.50.2",
        "192.168.50.3/24",
    ));
    assert!(
        e.contains("no interface of this node has the static address 192.168.50.1"),
        "{e}"
    );
    let e = err_text(actions::add_lan_interface(
        &p.ctx(),
        None,
        "10.9.9.1",
        "10.9.9.2",
        "10.9.9.3/24",
    ));
    assert!(
        e.contains(
            "device br-guestnetwork is too long for the virtual IP label br-guestnetwork:ha"
        ),
        "{e}"
    );
    let unforced = Node::new(NETWORK, &DHCP.replace("\toption force '1'\n", ""));
    unforced.init();
    let e = err_text(actions::add_lan_interface(
        &unforced.ctx(),
        None,
        "192.168.200.185",
        "192.168.200.186",
        "192.168.200.190/24",
    ));
    assert!(
        e.contains("without the force start option: set dhcp.lan2.force=1"),
        "{e}"
    );
}

#[test]
fn backup_refusals_come_back_through_the_peer() {
    let p = Node::primary();
    p.init();
    // the backup's lan2 is DHCP: refused there, nothing changed on the primary
    let b = Node::new(
        &NETWORK
            .replace("192.168.100.238", "192.168.100.239")
            .replace(
                "option proto 'static'\n\toption ipaddr '192.168.200.185/24'",
                "option proto 'dhcp'",
            ),
        DHCP,
    );
    let before = p.read("etc/config/keepalived");
    let e = err_text(actions::add_lan_interface(
        &p.ctx(),
        Some(&LocalPeer::new(&b)),
        "192.168.200.185",
        "192.168.200.186",
        "192.168.200.190/24",
    ));
    assert!(e.starts_with("backup node: "), "{e}");
    assert!(e.contains("interface lan2 uses proto dhcp"), "{e}");
    assert_eq!(p.read("etc/config/keepalived"), before);
    // a node configured as primary takes no orders
    let e = err_text(actions::serve(&p.ctx(), ClusterRequest::Disable));
    assert!(e.contains("configured as the primary"), "{e}");
    // changes are made on the primary
    let b2 = Node::backup();
    actions::serve(
        &b2.ctx(),
        ClusterRequest::Configure {
            spec: keepalived::read(&p.uci()).expect("read").expect("spec").1,
            start: true,
            removed: Vec::new(),
        },
    )
    .expect("configure");
    let e = err_text(actions::add_vip(
        &b2.ctx(),
        None,
        "lan",
        "192.168.100.66/24",
    ));
    assert!(e.contains("this node is the backup"), "{e}");
}

#[test]
fn show_config_has_the_spec_layout() {
    let p = Node::primary();
    assert_eq!(
        actions::show_config(&p.ctx()).expect("show"),
        "Current configuration\n\nInterfaces:\n  None\n\nAliases:\n  None\n\n\
         -----------------------------------------------------------------\n\n\
         Not configured\n\nInterfaces:\n  Interface: lan, Device: br-lan \n  \
         Interface: wan, Device: eth1 \n  Interface: lan2, Device: eth2 \n  \
         Interface: guest, Device: br-guestnetwork \n"
    );
    p.init();
    actions::add_vip(&p.ctx(), None, "lan", "192.168.100.66/24").expect("vip");
    assert_eq!(
        actions::show_config(&p.ctx()).expect("show"),
        "Current configuration\n\n\
         Interfaces:\n  Interface: lan, Device: br-lan, Virtual IP: 192.168.100.240/24\n\n\
         Aliases:\n  Interface: lan, Virtual Alias IP: 192.168.100.66/24\n\n\
         -----------------------------------------------------------------\n\n\
         Not configured\n\nInterfaces:\n  Interface: wan, Device: eth1 \n  \
         Interface: lan2, Device: eth2 \n  Interface: guest, Device: br-guestnetwork \n"
    );
}

#[test]
fn status_has_the_spec_layout() {
    let p = Node::primary();
    assert_eq!(actions::status(&p.ctx()), "Status: disabled\n");
    p.init();
    let state = p.root.join("var/run/ha-sync");
    fs::create_dir_all(&state).expect("mkdir");
    fs::write(state.join("vrrp_state"), "master\n").expect("state");
    sync_core::uci::state_set(
        &p.root,
        "keepalived",
        "ha_peer",
        "last_sync_status",
        "Successful",
    )
    .expect("state");
    sync_core::uci::state_set(
        &p.root,
        "keepalived",
        "ha_peer",
        "last_sync_time",
        "1749453675",
    )
    .expect("state");
    let out = actions::status(&p.ctx());
    let expected_head = format!(
        "Status: enabled\nRole: primary\nCurrent State: master\nLast Sync Status: Successful\n\
         Last Sync Time: {}\n\nVirtual IPs:\n  lan_ipaddress: 192.168.100.240/24 (br-lan)\n\n\
         Keepalived Statistics:\n",
        sync_agent::status::format_time(1749453675)
    );
    assert!(out.starts_with(&expected_head), "{out}");

    // keepalived disabled at boot: the cluster is disabled
    p.runner.answer(
        "/etc/init.d/keepalived enabled",
        CmdOutput {
            code: Some(1),
            ..Default::default()
        },
    );
    assert!(actions::status(&p.ctx()).starts_with("Status: disabled\n"));
}

#[test]
fn enable_disable_and_reset_run_on_both_nodes_in_order() {
    let p = Node::primary();
    let b = Node::backup();
    p.init();
    let peer = LocalPeer::new(&b);
    actions::serve(
        &b.ctx(),
        ClusterRequest::Configure {
            spec: keepalived::read(&p.uci()).expect("read").expect("spec").1,
            start: true,
            removed: Vec::new(),
        },
    )
    .expect("configure backup");
    fs::create_dir_all(b.root.join("usr/share/keepalived/rsync/etc")).expect("staging");
    fs::write(b.root.join("etc/ha-sync-keep"), "").ok();
    sync_agent::transport::generate_keypair(&b.root.join("etc/ha-sync/host_key")).expect("key");
    fs::write(b.root.join("etc/ha-sync/authorized_keys"), "").expect("ak");
    p.runner.clear();
    b.runner.clear();

    actions::disable(&p.ctx(), Some(&peer)).expect("disable");
    let stop = vec![
        "/etc/init.d/keepalived stop",
        "/etc/init.d/keepalived disable",
        "/etc/init.d/conntrackd stop",
        "/etc/init.d/conntrackd disable",
    ];
    assert_eq!(b.runner.lines(), stop);
    assert_eq!(p.runner.lines(), stop);
    assert_eq!(*peer.calls.borrow(), vec![RemoteAction::Disable]);

    // The incumbent's disable leaves `globals.enabled '0'`, which keeps keepalived's init
    // script from starting it: enable sets it back on both nodes.
    for node in [&p, &b] {
        let mut k = node.uci();
        k.ensure_section("globals", "globals")
            .unwrap()
            .set("enabled", "0")
            .unwrap();
        k.write_atomic(&node.root.join("etc/config/keepalived"))
            .unwrap();
    }
    p.runner.clear();
    b.runner.clear();
    actions::enable(&p.ctx(), Some(&peer)).expect("enable");
    for node in [&p, &b] {
        assert_eq!(node.uci().get("globals", "enabled"), Some("1"));
    }
    let start = vec![
        "/etc/init.d/keepalived enable",
        "/etc/init.d/keepalived restart",
        "/etc/init.d/conntrackd enable",
        "/etc/init.d/conntrackd restart",
    ];
    assert_eq!(p.runner.lines(), start);
    assert_eq!(b.runner.lines(), start);

    // The backup's overlay disabled a job; the admin commented one out himself.
    let crontab = b.root.join("etc/crontabs/root");
    fs::create_dir_all(crontab.parent().unwrap()).expect("crontabs");
    fs::write(
        &crontab,
        format!(
            "{}0 2 * * * /usr/sbin/send-heartbeat\n# 0 3 * * * /usr/sbin/send-backup\n",
            restore_hooks::cron::MARKER
        ),
    )
    .expect("crontab");
    let r = actions::reset(&p.ctx(), Some(&peer)).expect("reset");
    assert!(r.peer_error.is_none());
    // Out of the cluster the node runs its jobs again; the admin's own comment stays.
    assert_eq!(
        fs::read_to_string(&crontab).unwrap(),
        "0 2 * * * /usr/sbin/send-heartbeat\n# 0 3 * * * /usr/sbin/send-backup\n"
    );
    for node in [&p, &b] {
        let k = node.uci();
        assert!(keepalived::role_of(&k).is_none());
        assert_eq!(k.sections.len(), 1, "only globals left: {k:?}");
        assert!(!node.root.join("etc/conntrackd/conntrackd.conf").exists());
        assert!(!node.root.join("etc/ha-sync/id_ed25519").exists());
        assert!(!node.root.join("etc/ha-sync/host_key").exists());
        assert!(!node.root.join("etc/ha-sync/authorized_keys").exists());
        assert!(!node.root.join("usr/share/keepalived/rsync").exists());
        assert!(node
            .runner
            .lines()
            .ends_with(&stop.iter().map(|s| s.to_string()).collect::<Vec<_>>()));
    }
    // the network is left as it is
    assert_eq!(p.read("etc/config/network"), NETWORK);
    assert!(b.root.join("etc/config/network").is_file());
    // a peer that cannot be reached does not stop the local reset
    p.init();
    struct Down;
    impl Peer for Down {
        fn call(&self, _: &ClusterRequest) -> Result<ClusterAnswer, ClusterError> {
            Err(ClusterError::Peer("connection refused".into()))
        }
        fn send_image(&self, _: &ImageHeader, _: &Path) -> Result<UploadAnswer, ClusterError> {
            Err(ClusterError::Peer("connection refused".into()))
        }
    }
    let r = actions::reset(&p.ctx(), Some(&Down)).expect("reset");
    assert!(r
        .peer_error
        .expect("peer error")
        .contains("connection refused"));
    assert!(keepalived::role_of(&p.uci()).is_none());
}

#[test]
fn renders_keepalived_conf_from_the_uci() {
    let p = Node::primary();
    p.init();
    actions::add_vip(&p.ctx(), None, "lan", "192.168.100.66/24").expect("vip");
    let pass = get(&p.uci(), "primary", "auth_pass").to_string();
    let conf = actions::render_config(&p.ctx(), &RenderOptions::default()).expect("render");
    let expected = format!(
        "! Configuration file for keepalived, written by ha-sync
global_defs {{
\tscript_user root
\tenable_script_security
}}

vrrp_script ha_catchup {{
\tscript \"/usr/sbin/ha-sync caught-up\"
\tinterval 5
\ttimeout 10
\tweight -60
\tfall 1
\trise 1
\tinit_fail
}}

vrrp_instance ha {{
\tstate MASTER
\tinterface br-lan
\tunicast_src_ip 192.168.100.238
\tvirtual_router_id 100
\tpriority 100
\tadvert_int 1
\tauthentication {{
\t\tauth_type PASS
\t\tauth_pass {pass}
\t}}
\tunicast_peer {{
\t\t192.168.100.239
\t}}
\tvirtual_ipaddress {{
\t\t192.168.100.240/24 dev br-lan label br-lan:ha
\t\t192.168.100.66/24 dev br-lan label br-lan:ha
\t}}
\ttrack_script {{
\t\tha_catchup weight -60
\t}}
\tnotify_backup \"/usr/sbin/ha-sync hook NOTIFY_BACKUP\"
\tnotify_master \"/usr/sbin/ha-sync hook NOTIFY_MASTER\"
\tnotify_fault \"/usr/sbin/ha-sync hook NOTIFY_FAULT\"
\tnotify_stop \"/usr/sbin/ha-sync hook NOTIFY_STOP\"
}}
"
    );
    assert_eq!(conf, expected);
    let hotplug = actions::render_config(
        &p.ctx(),
        &RenderOptions {
            notify: Notify::Hotplug,
            router_id: Some("fw1".into()),
        },
    )
    .expect("render");
    assert!(hotplug.contains("\trouter_id fw1\n"));
    assert!(hotplug.contains(
        "\tnotify_master \"/bin/busybox env -i ACTION=NOTIFY_MASTER TYPE=INSTANCE NAME=ha /sbin/hotplug-call keepalived\"\n"
    ));
}

/// Parses the rendered configuration with the real keepalived, when it is installed.
#[test]
fn rendered_conf_passes_keepalived_config_test() {
    if !Path::new("/usr/sbin/keepalived").exists() {
        eprintln!("SKIP: /usr/sbin/keepalived not installed (.ci/run installs it)");
        return;
    }
    let p = Node::primary();
    p.init();
    let conf = actions::render_config(&p.ctx(), &RenderOptions::default()).expect("render");
    let path = p.root.join("keepalived.conf");
    fs::write(&path, conf).expect("write");
    let out = std::process::Command::new("/usr/sbin/keepalived")
        .args(["-t", "-f"])
        .arg(&path)
        .output()
        .expect("keepalived -t");
    let log = String::from_utf8_lossy(&out.stderr);
    // The devices do not exist on this host: keepalived -t reports them (exit 5), but any
    // syntax error would be named as such.
    assert!(
        !log.contains("Unknown keyword") && !log.contains("syntax"),
        "{log}"
    );
}

/// A firmware image stand-in: random bytes, as incompressible as a real one.
fn image_file(dir: &std::path::Path, len: usize) -> (PathBuf, Vec<u8>) {
    let mut data = vec![0u8; len];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let path = dir.join("nethsecurity-upgrade.img.gz");
    fs::write(&path, &data).expect("image");
    (path, data)
}

#[test]
fn upgrade_remote_sends_the_image_and_the_backup_tests_it() {
    let p = Node::primary();
    let b = Node::backup();
    b.runner.provide(upgrade::SYSUPGRADE);
    let (image, data) = image_file(&p.root, 3 << 20);
    let r = upgrade::upgrade_remote(&p.ctx(), &LocalPeer::new(&b), Some(&image)).expect("upgrade");
    assert!(!r.downloaded);
    assert_eq!(r.header.size, data.len() as u64);
    assert_eq!(r.header.blake3, blake3::hash(&data).to_hex().to_string());
    assert_eq!(
        fs::read(b.root.join(upgrade::IMAGE_PATH)).expect("received"),
        data
    );
    // checked with the router's own tool, on the router's path (the root stripped)
    assert_eq!(
        b.runner.lines(),
        vec!["/sbin/sysupgrade -T /tmp/ha-sync-upgrade.img"]
    );
    assert!(p.runner.lines().is_empty(), "{:?}", p.runner.lines());
}

#[test]
fn upgrade_remote_refusals_leave_no_image_behind() {
    let p = Node::primary();
    let b = Node::backup();
    let (image, data) = image_file(&p.root, 64 << 10);
    let received = b.root.join(upgrade::IMAGE_PATH);
    let no_part = |b: &Node| {
        let tmp = fs::read_dir(b.root.join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(tmp, 0, "something left in the backup's /tmp");
    };

    // not an OpenWrt node: no sysupgrade
    let e = err_text(upgrade::upgrade_remote(
        &p.ctx(),
        &LocalPeer::new(&b),
        Some(&image),
    ));
    assert!(
        e.contains("/sbin/sysupgrade not found on the backup"),
        "{e}"
    );
    no_part(&b);

    // the image fails sysupgrade's own test: its words come back, nothing is installed
    b.runner.provide(upgrade::SYSUPGRADE);
    b.runner.answer(
        "/sbin/sysupgrade -T",
        CmdOutput {
            code: Some(1),
            stdout: Vec::new(),
            stderr: b"Image metadata not present\nImage check failed.".to_vec(),
        },
    );
    let e = err_text(upgrade::upgrade_remote(
        &p.ctx(),
        &LocalPeer::new(&b),
        Some(&image),
    ));
    assert!(e.contains("Image check failed"), "{e}");
    assert!(!received.exists());
    no_part(&b);

    // damaged or cut uploads, straight into the backup's receiver
    let header = ImageHeader::of(&image).expect("header");
    let wire = |h: &ImageHeader, body: &[u8]| {
        let mut w = serde_json::to_vec(h).expect("json");
        w.push(b'\n');
        w.extend_from_slice(body);
        w
    };
    let mut flipped = data.clone();
    flipped[1000] ^= 1;
    let e = upgrade::receive_image(&b.ctx(), &mut wire(&header, &flipped).as_slice())
        .expect_err("damaged")
        .to_string();
    assert!(e.contains("damaged in transit"), "{e}");
    let e = upgrade::receive_image(&b.ctx(), &mut wire(&header, &data[..5000]).as_slice())
        .expect_err("cut")
        .to_string();
    assert!(e.contains("upload cut short: 5000 of 65536 bytes"), "{e}");
    let huge = ImageHeader {
        size: MAX_IMAGE + 1,
        ..header.clone()
    };
    let e = upgrade::receive_image(&b.ctx(), &mut wire(&huge, b"").as_slice())
        .expect_err("huge")
        .to_string();
    assert!(e.contains("refused"), "{e}");
    let e = upgrade::receive_image(&b.ctx(), &mut &b"no header at all"[..])
        .expect_err("no header")
        .to_string();
    assert!(e.contains("header"), "{e}");
    assert!(!received.exists());
    no_part(&b);

    // the image must be a file
    let e = err_text(upgrade::upgrade_remote(
        &p.ctx(),
        &LocalPeer::new(&b),
        Some(&p.root),
    ));
    assert!(e.contains("is not a regular file"), "{e}");
}

#[test]
fn upgrade_remote_without_an_image_downloads_the_latest() {
    let p = Node::primary();
    let b = Node::backup();
    b.runner.provide(upgrade::SYSUPGRADE);
    // no downloader here (a Debian test bed, or an OpenWrt without NethSecurity)
    let e = err_text(upgrade::upgrade_remote(&p.ctx(), &LocalPeer::new(&b), None));
    assert!(
        e.contains("ns-download") && e.contains("give the image file"),
        "{e}"
    );

    let (image, data) = image_file(&p.root, 10_000);
    p.runner.provide(upgrade::DOWNLOADER);
    p.runner.answer(
        "ns-download",
        CmdOutput::ok(format!("Downloading...\n{}\n", image.display())),
    );
    let r = upgrade::upgrade_remote(&p.ctx(), &LocalPeer::new(&b), None).expect("upgrade");
    assert!(r.downloaded);
    assert_eq!(r.image, image);
    assert_eq!(p.runner.lines(), vec!["ns-download -f -l"]);
    assert_eq!(
        fs::read(b.root.join(upgrade::IMAGE_PATH)).expect("received"),
        data
    );

    // a downloader that fails says so
    p.runner.answer(
        "ns-download",
        CmdOutput {
            code: Some(2),
            stdout: Vec::new(),
            stderr: b"cannot reach the update server".to_vec(),
        },
    );
    let e = err_text(upgrade::upgrade_remote(&p.ctx(), &LocalPeer::new(&b), None));
    assert!(e.contains("cannot reach the update server"), "{e}");
}

/// The default `sync_list` takes dnsmasq's lease file from `dhcp.ns_dnsmasq.leasefile`, as the
/// incumbent's init does (issue 12, item 5); init also sets `globals.enabled`.
#[test]
fn init_takes_the_lease_file_from_dnsmasq_and_enables_keepalived() {
    let p = Node::primary();
    fs::write(
        p.root.join("etc/config/dhcp"),
        "\nconfig dnsmasq 'ns_dnsmasq'\n\toption leasefile '/var/lib/misc/dhcp.leases'\n",
    )
    .expect("dhcp");
    p.init();
    let k = p.uci();
    let list = k.get_list("ha_peer", "sync_list");
    assert!(
        list.contains(&"/var/lib/misc/dhcp.leases".to_string()),
        "{list:?}"
    );
    assert!(!list.contains(&"/tmp/dhcp.leases".to_string()), "{list:?}");
    assert_eq!(k.get("globals", "enabled"), Some("1"));
}

/// A cluster change keeps the options it does not own (issue 12): the spec's debugging step
/// sets `keepalived.primary.debug`, and an add-vip afterwards must not drop it.
#[test]
fn a_cluster_change_keeps_options_it_does_not_own() {
    let p = Node::primary();
    p.init();
    let mut k = p.uci();
    k.set("primary", "debug", "1").unwrap();
    k.set("ha_peer", "ns_note", "set by hand").unwrap();
    k.write_atomic(&p.root.join("etc/config/keepalived"))
        .unwrap();
    actions::add_vip(&p.ctx(), None, "lan", "192.168.100.66/24").expect("add-vip");
    let k = p.uci();
    assert_eq!(k.get("primary", "debug"), Some("1"));
    assert_eq!(k.get("ha_peer", "ns_note"), Some("set by hand"));
}
