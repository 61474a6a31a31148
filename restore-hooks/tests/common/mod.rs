//! Fixtures: a primary and a backup root that look like NethSecurity nodes, and the sync
//! between them (the real protocol, in-process) to fill the backup's staging tree.
#![allow(dead_code)]

use restore_hooks::Ctx;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use sync_core::local::{staging_only, sync_local};
use sync_core::manifest::Manifest;
use sync_core::node::Node;
use sync_core::runner::RecordingRunner;
use sync_core::staging::Staging;
use sync_core::wire::Commit;

pub const WAN_INTERFACES: &str = r#"{"wan": {"device": "eth1", "proto": "static", "ipaddr": "203.0.113.10/24", "gateway": "203.0.113.1", "ns_label": "WAN"}, "wan6": {"device": "eth1", "proto": "dhcpv6"}}"#;
pub const WAN_DEVICES: &str =
    r#"[{"type": "device", "key": "vlan100", "name": "eth1.100", "vid": "100", "ifname": "eth1"}]"#;
pub const WG_INTERFACES: &str = r#"{"wg1": {"proto": "wireguard", "private_key": "aGVsbG8=", "listen_port": "51820", "addresses": ["10.9.9.1/24"]}}"#;
pub const WG_PEERS: &str = r#"{"wg1_peer1": {"public_key": "cGVlcg==", "allowed_ips": ["10.9.9.2/32"], "route_allowed_ips": "1"}}"#;
pub const IPSEC_INTERFACES: &str =
    r#"{"ipsec1": {"proto": "xfrm", "ifid": "1", "tunlink": "wan", "mtu": 1438}}"#;
pub const ROUTES: &str = r#"{"ns_r1": {"target": "10.50.0.0/16", "gateway": "192.168.100.1", "interface": "lan", "ns_description": "branch office"}}"#;
pub const HOTSPOT: &str = r#"{"device": "eth2", "mac_address": "02:11:22:33:44:55"}"#;

pub const PRIMARY_CRONTAB: &str = "\
0 2 * * * /usr/sbin/send-heartbeat
# 0 3 * * * /usr/sbin/send-backup
30 4 * * * /usr/sbin/logrotate
0 0 * * * /etc/init.d/acme renew
";

pub fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
}

pub fn chmod(root: &Path, rel: &str, mode: u32) {
    std::fs::set_permissions(root.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Sets an mtime in the past, as files on a router that nobody touched for a while.
pub fn age(root: &Path, rel: &str, secs: i64) {
    let t = filetime::FileTime::from_unix_time(secs, 0);
    filetime::set_symlink_file_times(root.join(rel), t, t).unwrap();
}

pub fn primary_root(root: &Path) {
    write(
        root,
        "etc/config/keepalived",
        "\nconfig peer 'ha_peer'\n\toption address '192.168.100.239'\n\toption ssh_port '65022'\n\
         \toption sync_mode 'send'\n\tlist sync_list '/etc/ha'\n\tlist sync_list '/etc/openvpn'\n\
         \tlist exclude_list '/etc/config/network'\n\tlist exclude_list '/etc/openvpn/*.local'\n\n\
         config primary 'primary'\n\toption priority '100'\n",
    );
    write(
        root,
        "etc/sysupgrade.conf",
        "/etc/config/firewall\n/etc/config/dhcp\n/etc/config/system\n/etc/crontabs/root\n\
         /etc/config/network\n/etc/dropbear/authorized_keys\n/etc/backup.pass\n",
    );
    write(
        root,
        "etc/config/firewall",
        "\nconfig defaults\n\toption input 'REJECT'\n\toption output 'ACCEPT'\n\n\
         config zone 'ns_lan'\n\toption name 'lan'\n\tlist network 'lan'\n\n\
         config zone 'ns_wan'\n\toption name 'wan'\n\tlist network 'wan'\n\tlist network 'wan6'\n\
         \toption masq '1'\n\n\
         config redirect 'ns_web'\n\toption name 'web server'\n\toption src 'wan'\n\
         \toption src_dport '443'\n\toption dest_ip '192.168.100.20'\n",
    );
    write(
        root,
        "etc/config/dhcp",
        // force: the primary's NOTIFY_MASTER set it (500-dhcp-force), as on a running cluster.
        "\nconfig dnsmasq\n\toption domainneeded '1'\n\toption localise_queries '1'\n\toption force '1'\n\n\
         config dhcp 'lan'\n\toption interface 'lan'\n\toption start '100'\n\toption limit '150'\n\
         \toption force '1'\n\tlist dhcp_option '3,192.168.100.240'\n",
    );
    write(
        root,
        "etc/config/system",
        "\nconfig system\n\toption hostname 'fw-primary'\n\toption zonename 'Europe/Rome'\n\
         \toption timezone 'CET-1CEST,M3.5.0,M10.5.0/3'\n\toption log_size '64'\n\n\
         config timeserver 'ntp'\n\tlist server '0.openwrt.pool.ntp.org'\n",
    );
    write(
        root,
        "etc/config/network",
        "\nconfig interface 'lan'\n\toption device 'br-lan'\n\toption proto 'static'\n\
         \toption ipaddr '192.168.100.238'\n\toption netmask '255.255.255.0'\n",
    );
    write(root, "etc/crontabs/root", PRIMARY_CRONTAB);
    write(
        root,
        "etc/dropbear/authorized_keys",
        "ssh-ed25519 AAAAprimary admin@primary\n",
    );
    write(root, "etc/backup.pass", "s3cret\n");
    chmod(root, "etc/backup.pass", 0o600);
    write(root, "etc/ha/wan_interfaces", WAN_INTERFACES);
    write(root, "etc/ha/wan_devices", WAN_DEVICES);
    write(root, "etc/ha/wg_interfaces", WG_INTERFACES);
    write(root, "etc/ha/wg_peers", WG_PEERS);
    write(root, "etc/ha/ipsec_interfaces", IPSEC_INTERFACES);
    write(root, "etc/ha/routes", ROUTES);
    write(root, "etc/ha/hotspot", HOTSPOT);
    write(
        root,
        "etc/openvpn/server.conf",
        "port 1194\nproto udp\ndev tun\n",
    );
    chmod(root, "etc/openvpn/server.conf", 0o600);
    write(
        root,
        "etc/openvpn/ccd/client1",
        "ifconfig-push 10.8.0.10 255.255.255.0\n",
    );
    write(
        root,
        "etc/openvpn/primary.local",
        "primary only, excluded\n",
    );
    std::os::unix::fs::symlink("server.conf", root.join("etc/openvpn/current")).unwrap();
    for rel in [
        "etc/config/firewall",
        "etc/config/dhcp",
        "etc/config/system",
        "etc/crontabs/root",
        "etc/backup.pass",
        "etc/openvpn/server.conf",
        "etc/openvpn/ccd/client1",
        "etc/openvpn/current",
    ] {
        age(root, rel, 1_700_000_000);
    }
}

pub const BACKUP_NETWORK: &str = "\
config interface 'loopback'
\toption device 'lo'
\toption proto 'static'
\toption ipaddr '127.0.0.1'

config device 'lan_dev'
\toption name 'br-lan'
\toption type 'bridge'
\tlist ports 'eth0'

config interface 'lan'
\toption device 'br-lan'
\toption proto 'static'
\toption ipaddr '192.168.100.239'
\toption netmask '255.255.255.0'

config interface 'wan'
\toption device 'eth1'
\toption proto 'dhcp'

config device 'hs_dev'
\toption name 'eth2'
\toption mtu '1500'
";

pub const INIT_SCRIPTS: &[&str] = &[
    "firewall",
    "dnsmasq",
    "system",
    "network",
    "openvpn",
    "nginx",
    "conntrackd",
    "acme",
    "cron",
    "snmpd",
];

pub fn backup_root(root: &Path) {
    write(
        root,
        "etc/config/keepalived",
        "\nconfig peer 'ha_peer'\n\toption address '192.168.100.238'\n\toption sync_mode 'receive'\n\n\
         config backup 'backup'\n\toption priority '50'\n",
    );
    // keepalived's NOTIFY_BACKUP has been seen since boot: a backup whose VRRP state is
    // unknown does not restore (tests of that case remove this record).
    write(root, "var/run/ha-sync/vrrp_state", "backup\n");
    write(root, "etc/config/network", BACKUP_NETWORK);
    write(
        root,
        "etc/config/system",
        "\nconfig system\n\toption hostname 'fw-backup'\n\toption zonename 'UTC'\n",
    );
    write(
        root,
        "etc/config/firewall",
        "\nconfig defaults\n\toption input 'ACCEPT'\n",
    );
    write(
        root,
        "etc/dropbear/authorized_keys",
        "ssh-ed25519 AAAAbackup admin@backup\n",
    );
    write(
        root,
        "etc/dropbear/dropbear_ed25519_host_key",
        "backup host key\n",
    );
    write(
        root,
        "etc/openvpn/old.conf",
        "deleted on the primary long ago\n",
    );
    write(root, "etc/openvpn/backup.local", "excluded: stays\n");
    write(
        root,
        "etc/conntrackd/conntrackd.conf",
        "Sync { Mode FTFW { } }\n",
    );
    for s in INIT_SCRIPTS {
        write(
            root,
            &format!("etc/init.d/{s}"),
            "#!/bin/sh /etc/rc.common\n",
        );
        chmod(root, &format!("etc/init.d/{s}"), 0o755);
    }
    write(root, "sbin/hotplug-call", "#!/bin/sh\n");
    chmod(root, "sbin/hotplug-call", 0o755);
    write(
        root,
        "usr/lib/opkg/status",
        "Package: dnsmasq\nVersion: 2.90-1\nConffiles:\n /etc/config/dhcp 0123456789abcdef0123456789abcdef\n\
         Status: install user installed\n\nPackage: firewall4\nConffiles:\n \
         /etc/config/firewall 0123456789abcdef0123456789abcdef\n\n",
    );
    write(
        root,
        "rom/etc/config/dhcp",
        "\nconfig dnsmasq\n\toption domainneeded '1'\n",
    );
}

/// A primary and a backup root under one temporary directory.
pub struct Pair {
    pub tmp: tempfile::TempDir,
    pub primary: PathBuf,
    pub backup: PathBuf,
    pub staging: PathBuf,
}

impl Pair {
    pub fn new() -> Pair {
        let tmp = tempfile::tempdir().unwrap();
        let primary = tmp.path().join("primary");
        let backup = tmp.path().join("backup");
        primary_root(&primary);
        backup_root(&backup);
        let staging = Node::new(&backup).staging_dir();
        Pair {
            tmp,
            primary,
            backup,
            staging,
        }
    }

    pub fn ctx<'a>(&'a self, runner: &'a RecordingRunner) -> Ctx<'a> {
        Ctx {
            root: &self.backup,
            staging: &self.staging,
            runner,
        }
    }

    /// One sync primary -> backup staging (no restore); the committed generation.
    pub fn sync(&self) -> (Manifest, Commit) {
        sync_into(&self.primary, &self.backup)
    }
}

pub fn sync_into(primary: &Path, backup: &Path) -> (Manifest, Commit) {
    let mut commit = None;
    let mut keep = |m: &Manifest, c: &Commit| {
        commit = Some(c.clone());
        staging_only(m, c)
    };
    let r = sync_local(primary, backup, &RecordingRunner::new(), &mut keep).expect("sync");
    drop(r);
    let m = Staging::open(&Node::new(backup).staging_dir())
        .unwrap()
        .committed()
        .expect("committed")
        .clone();
    let c = commit.unwrap_or(Commit {
        root: m.root_hash(),
        ..Commit::default()
    });
    (m, c)
}

/// Everything below `dir` except ha-sync's own volatile state (`var/run`, which the hooks
/// lock creates, and so the mtimes of `var` and of the top) and the staging tree: path ->
/// (kind, mode, inode, mtime, ctime, content). Equal snapshots mean nothing was written, not
/// even metadata.
pub type Snap = BTreeMap<String, (char, u32, u64, i64, i64, Vec<u8>)>;

pub fn snapshot(dir: &Path) -> Snap {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir).follow_links(false) {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel.is_empty()
            || rel == "var"
            || rel.starts_with("var/run")
            || rel.starts_with("usr/share/keepalived")
        {
            continue;
        }
        let md = e.path().symlink_metadata().unwrap();
        let (kind, content) = if md.is_dir() {
            ('d', Vec::new())
        } else if md.file_type().is_symlink() {
            (
                'l',
                std::fs::read_link(e.path())
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else {
            ('f', std::fs::read(e.path()).unwrap())
        };
        let ctime = md.ctime() * 1_000_000_000 + md.ctime_nsec();
        let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        out.insert(
            rel,
            (kind, md.mode() & 0o7777, md.ino(), mtime, ctime, content),
        );
    }
    out
}

/// (mode, mtime) of a path, not following a symlink.
pub fn meta(root: &Path, rel: &str) -> (u32, i64) {
    let md = root.join(rel).symlink_metadata().unwrap();
    (
        md.mode() & 0o7777,
        md.mtime() * 1_000_000_000 + md.mtime_nsec(),
    )
}

pub fn lines(r: &RecordingRunner) -> Vec<String> {
    r.lines()
}
