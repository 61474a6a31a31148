//! keepalived events on a backup that holds a restored generation: commands in order, UCI
//! files and state, the cron overlay.

mod common;

use common::*;
use restore_hooks::{restore_after_commit, run_hook, Event, VrrpState};
use std::time::{SystemTime, UNIX_EPOCH};
use sync_core::node::Node;
use sync_core::runner::{CmdOutput, RecordingRunner};
use sync_core::uci;

/// A backup with the first generation restored (network records imported).
fn restored_pair() -> Pair {
    let p = Pair::new();
    let (m, c) = p.sync();
    let rep = restore_after_commit(&p.ctx(&RecordingRunner::new()), &m, &c);
    assert!(rep.applied, "{rep:?}");
    p
}

fn runner() -> RecordingRunner {
    let r = RecordingRunner::new();
    r.answer(
        "/usr/sbin/ethtool -P eth2",
        CmdOutput::ok("Permanent address: 00:0d:b9:00:00:02\n"),
    );
    r
}

const CT: &str = "/usr/sbin/conntrackd -C /etc/conntrackd/conntrackd.conf";

fn master_commands() -> Vec<String> {
    let mut v: Vec<String> = ["-c", "-f", "-R", "-B"]
        .iter()
        .map(|f| format!("{CT} {f}"))
        .collect();
    v.extend(
        [
            "/sbin/ifup wan",
            "/sbin/ifup wan6",
            "/sbin/ifup wg1",
            "/sbin/ifup ipsec1",
            "/sbin/ip link set dev eth2 address 02:11:22:33:44:55",
            "/usr/bin/arping -c 1 -U -I eth1 203.0.113.10",
            "/etc/init.d/dnsmasq restart",
            "/etc/init.d/acme restart",
            "/etc/init.d/openvpn restart",
            "/etc/init.d/nginx restart",
        ]
        .map(String::from),
    );
    v
}

fn teardown_commands() -> Vec<String> {
    [
        "/sbin/ifdown wan",
        "/sbin/ifdown wan6",
        "/sbin/ifdown wg1",
        "/sbin/ifdown ipsec1",
        "/usr/sbin/ethtool -P eth2",
        "/sbin/ip link set dev eth2 address 00:0d:b9:00:00:02",
        "/etc/init.d/dnsmasq stop",
        "/etc/init.d/acme stop",
        "/etc/init.d/openvpn stop",
    ]
    .map(String::from)
    .to_vec()
}

const DISABLED_CRON: &str = "#ha-sync-disabled# 0 2 * * * /usr/sbin/send-heartbeat\n# 0 3 * * * /usr/sbin/send-backup\n\
                             30 4 * * * /usr/sbin/logrotate\n#ha-sync-disabled# 0 0 * * * /etc/init.d/acme renew\n";

fn alert(p: &Pair, option: &str) -> Option<String> {
    uci::state_get(&p.backup, "keepalived", "ha_alert", option).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn notify_master_on_the_backup_takes_over() {
    let p = restored_pair();
    let r = runner();
    run_hook(&p.ctx(&r), Event::NotifyBackup).unwrap();
    let r = runner();
    let before = now();
    let out = run_hook(&p.ctx(&r), Event::NotifyMaster).unwrap();
    assert_eq!(
        (out.previous, out.superseded, out.errors.len()),
        (Some(VrrpState::Backup), false, 0),
        "{out:?}"
    );
    assert_eq!(r.lines(), master_commands());
    assert_eq!(Node::new(&p.backup).vrrp_state(), Some(VrrpState::Master));

    let failed: u64 = alert(&p, "primary_failed_at").unwrap().parse().unwrap();
    assert!(failed >= before && failed <= now());
    assert_eq!(alert(&p, "primary_recovered_at"), None);
    let state = read(&p.backup, "var/state/keepalived");
    assert!(state.starts_with("keepalived.ha_alert=state\n"), "{state}");

    // All jobs back, the admin's own comment still a comment.
    assert_eq!(read(&p.backup, "etc/crontabs/root"), PRIMARY_CRONTAB);
    // The network configuration is not edited by the hook (interfaces go up with ifup).
    assert!(read(&p.backup, "etc/config/network").contains("option auto '0'"));
}

#[test]
fn alert_timestamps_are_written_on_transitions_only() {
    let p = restored_pair();
    run_hook(&p.ctx(&runner()), Event::NotifyMaster).unwrap();
    let state = p.backup.join("var/state/keepalived");
    let written = std::fs::metadata(&state).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = run_hook(&p.ctx(&runner()), Event::NotifyMaster).unwrap();
    assert_eq!(out.previous, Some(VrrpState::Master));
    assert_eq!(
        std::fs::metadata(&state).unwrap().modified().unwrap(),
        written,
        "no transition, no write"
    );

    // On the primary, becoming master is the primary coming back.
    write(
        &p.backup,
        "etc/config/keepalived",
        "\nconfig primary 'primary'\n",
    );
    run_hook(&p.ctx(&runner()), Event::NotifyBackup).unwrap();
    let r = runner();
    run_hook(&p.ctx(&r), Event::NotifyMaster).unwrap();
    assert!(alert(&p, "primary_recovered_at").is_some());
    // The primary's interfaces are its own: not brought up after a plain BACKUP.
    assert!(
        r.lines().iter().all(|l| !l.starts_with("/sbin/ifup")),
        "{:?}",
        r.lines()
    );
}

#[test]
fn notify_backup_stops_services_downs_imported_interfaces_and_disables_cron() {
    let p = restored_pair();
    run_hook(&p.ctx(&runner()), Event::NotifyMaster).unwrap();
    assert_eq!(read(&p.backup, "etc/crontabs/root"), PRIMARY_CRONTAB);
    let r = runner();
    let out = run_hook(&p.ctx(&r), Event::NotifyBackup).unwrap();
    assert!(out.errors.is_empty(), "{out:?}");
    let mut want: Vec<String> = ["-s", "-t", "-n"]
        .iter()
        .map(|f| format!("{CT} {f}"))
        .collect();
    want.extend(teardown_commands());
    assert_eq!(r.lines(), want);
    assert_eq!(Node::new(&p.backup).vrrp_state(), Some(VrrpState::Backup));
    assert_eq!(read(&p.backup, "etc/crontabs/root"), DISABLED_CRON);
    // The synced source is never edited.
    assert_eq!(read(&p.staging, "etc/crontabs/root"), PRIMARY_CRONTAB);

    // conntrackd not running: started before asking for a resync.
    let r = runner();
    r.answer(
        format!("{CT} -s"),
        CmdOutput {
            code: Some(1),
            ..CmdOutput::default()
        },
    );
    run_hook(&p.ctx(&r), Event::NotifyBackup).unwrap();
    assert_eq!(
        &r.lines()[..4],
        [
            format!("{CT} -s"),
            "/etc/init.d/conntrackd start".into(),
            format!("{CT} -t"),
            format!("{CT} -n")
        ]
    );
}

#[test]
fn notify_fault_and_stop_tear_down_on_any_role() {
    let p = restored_pair();
    let r = runner();
    run_hook(&p.ctx(&r), Event::NotifyMaster).unwrap();
    let r = runner();
    let out = run_hook(&p.ctx(&r), Event::NotifyFault).unwrap();
    assert!(out.errors.is_empty(), "{out:?}");
    let mut want = vec![format!("{CT} -t")];
    want.extend(teardown_commands());
    assert_eq!(r.lines(), want);
    assert_eq!(Node::new(&p.backup).vrrp_state(), Some(VrrpState::Fault));
    assert_eq!(read(&p.backup, "etc/crontabs/root"), DISABLED_CRON);

    // On the primary too: a node in fault must not hold the WAN.
    write(
        &p.backup,
        "etc/config/keepalived",
        "\nconfig primary 'primary'\n",
    );
    let r = runner();
    run_hook(&p.ctx(&r), Event::NotifyStop).unwrap();
    assert_eq!(r.lines(), teardown_commands());
    assert_eq!(Node::new(&p.backup).vrrp_state(), Some(VrrpState::Stop));
    // ... and what the teardown brought down comes back with the next MASTER.
    let r = runner();
    run_hook(&p.ctx(&r), Event::NotifyMaster).unwrap();
    assert!(r.lines().contains(&"/sbin/ifup wan".to_string()));
}

#[test]
fn a_failing_command_is_reported_and_the_hook_goes_on() {
    let p = restored_pair();
    let r = runner();
    r.answer(
        "/etc/init.d/dnsmasq",
        CmdOutput {
            code: Some(1),
            stderr: b"boom".to_vec(),
            ..CmdOutput::default()
        },
    );
    let out = run_hook(&p.ctx(&r), Event::NotifyMaster).unwrap();
    assert_eq!(out.errors, ["/etc/init.d/dnsmasq restart: exit 1: boom"]);
    assert_eq!(r.lines(), master_commands());
}

#[test]
fn notify_sync_imports_the_records_into_this_nodes_network() {
    let p = restored_pair();
    let net = read(&p.backup, "etc/config/network");
    let want = "
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
\toption gateway '203.0.113.1'
\toption ipaddr '203.0.113.10/24'
\toption ns_label 'WAN'
\toption proto 'static'
\toption auto '0'
\tlist ns_tag 'ha'

config device 'hs_dev'
\toption name 'eth2'
\toption mtu '1500'
\toption ns_macaddr '02:11:22:33:44:55'
\tlist ns_tag 'ha_hotspot'

config device 'vlan100'
\toption ifname 'eth1'
\toption name 'eth1.100'
\toption vid '100'
\tlist ns_tag 'ha'

config interface 'wan6'
\toption device 'eth1'
\toption proto 'dhcpv6'
\toption auto '0'
\tlist ns_tag 'ha'

config interface 'wg1'
\tlist addresses '10.9.9.1/24'
\toption listen_port '51820'
\toption private_key 'aGVsbG8='
\toption proto 'wireguard'
\toption auto '0'
\tlist ns_tag 'ha'

config wireguard_wg1 'wg1_peer1'
\tlist allowed_ips '10.9.9.2/32'
\toption public_key 'cGVlcg=='
\toption route_allowed_ips '1'
\tlist ns_tag 'ha'

config interface 'ipsec1'
\toption ifid '1'
\toption mtu '1438'
\toption proto 'xfrm'
\toption tunlink 'wan'
\toption auto '0'
\tlist ns_tag 'ha'

config route 'ns_r1'
\toption gateway '192.168.100.1'
\toption interface 'lan'
\toption ns_description 'branch office'
\toption target '10.50.0.0/16'
\tlist ns_tag 'ha'

";
    assert_eq!(net, want);

    // WireGuard removed and the hotspot turned off on the primary: their sections go, the
    // node's own device loses the MAC but stays.
    for f in ["wg_interfaces", "wg_peers", "hotspot"] {
        std::fs::remove_file(p.primary.join("etc/ha").join(f)).unwrap();
    }
    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert_eq!(
        rep.changed,
        [
            "/etc/ha/hotspot",
            "/etc/ha/wg_interfaces",
            "/etc/ha/wg_peers"
        ]
    );
    let net = read(&p.backup, "etc/config/network");
    assert!(
        !net.contains("wg1") && !net.contains("ns_macaddr") && !net.contains("ha_hotspot"),
        "{net}"
    );
    assert!(
        net.contains("config device 'hs_dev'\n\toption name 'eth2'\n\toption mtu '1500'\n\n"),
        "{net}"
    );
    assert!(net.contains("config interface 'wan'") && net.contains("config route 'ns_r1'"));
    assert_eq!(r.lines()[0], "/etc/init.d/network reload");
}

#[test]
fn a_later_event_supersedes_one_still_waiting_for_the_lock() {
    let p = restored_pair();
    // Hold the hooks lock as a long restore would.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p.backup.join("var/run/ha-sync/hooks.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor owned by `lock`, open for the whole call.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    let ticket = |n: &str| read(&p.backup, "var/run/ha-sync/event").starts_with(n);
    let wait_for = |n: &str| {
        for _ in 0..500 {
            if p.backup.join("var/run/ha-sync/event").exists() && ticket(n) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("ticket {n} never taken");
    };
    let before = ticket_number(&p);
    std::thread::scope(|s| {
        let backup = s.spawn(|| run_hook(&p.ctx(&runner()), Event::NotifyBackup).unwrap());
        wait_for(&format!("{} ", before + 1));
        let master = s.spawn(|| run_hook(&p.ctx(&runner()), Event::NotifyMaster).unwrap());
        wait_for(&format!("{} ", before + 2));
        drop(lock);
        let (b, m) = (backup.join().unwrap(), master.join().unwrap());
        assert!(b.superseded && !m.superseded, "{b:?} {m:?}");
    });
    assert_eq!(Node::new(&p.backup).vrrp_state(), Some(VrrpState::Master));
    assert_eq!(read(&p.backup, "etc/crontabs/root"), PRIMARY_CRONTAB);
}

fn ticket_number(p: &Pair) -> u64 {
    std::fs::read_to_string(p.backup.join("var/run/ha-sync/event"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn events_parse_as_keepalived_names_them() {
    for e in Event::ALL {
        assert_eq!(e.as_str().parse::<Event>().unwrap(), e);
        assert_eq!(e.to_string(), e.as_str());
    }
    assert_eq!("master".parse::<Event>().unwrap(), Event::NotifyMaster);
    let err = "NOTIFY_REBOOT".parse::<Event>().unwrap_err().to_string();
    assert!(
        err.contains("NOTIFY_REBOOT") && err.contains("NOTIFY_MASTER"),
        "{err}"
    );
}

/// The incumbent's hotplug scripts ha-sync does itself (issue 12, item 3): 500-dhcp-force,
/// 500-nathelpers, the netifyd companions (800-netifyd), 555-dropbear, 900-telegraf, 01-user
/// and ns-ha-enable's final reload_config; each only where the node has what it acts on.
#[test]
fn the_incumbents_other_hooks_are_done_too() {
    let p = restored_pair();
    let b = &p.backup;
    for svc in ["dpi", "ns-flows", "dropbear"] {
        write(b, &format!("etc/init.d/{svc}"), "#!/bin/sh\n");
    }
    write(b, "etc/modules.d/ns-nathelpers", "nf_nat_ftp\n");
    write(b, "usr/sbin/load-kernel-modules", "#!/bin/sh\n");
    write(b, "sbin/reload_config", "#!/bin/sh\n");
    write(b, "etc/keepalived.user", "logger \"$ACTION\"\n");
    write(b, "etc/telegraf.conf.d/ping.conf", "[[inputs.ping]]\n");
    write(b, "etc/telegraf.conf.d/dns.conf", "[[inputs.dns_query]]\n");
    write(b, "etc/telegraf.conf.d/cpu.conf", "[[inputs.cpu]]\n");

    // The backup: probes aside, companions stopped, dropbear reloaded, the user script.
    let r = runner();
    run_hook(&p.ctx(&r), Event::NotifyBackup).unwrap();
    let lines = r.lines();
    for want in [
        "/etc/init.d/dpi stop",
        "/etc/init.d/ns-flows stop",
        "/etc/init.d/dropbear reload",
        "ACTION=NOTIFY_BACKUP /bin/sh /etc/keepalived.user",
    ] {
        assert!(lines.iter().any(|l| l == want), "{want} not in {lines:#?}");
    }
    assert!(!b.join("etc/telegraf.conf.d/ping.conf").exists());
    assert_eq!(
        read(b, "etc/telegraf.conf.d/ping.conf.disabled"),
        "[[inputs.ping]]\n"
    );
    assert_eq!(
        read(b, "etc/telegraf.conf.d/dns.conf.disabled"),
        "[[inputs.dns_query]]\n"
    );
    assert_eq!(read(b, "etc/telegraf.conf.d/cpu.conf"), "[[inputs.cpu]]\n");
    // A backup's dhcp file is the primary's: not edited (it would be drift).
    assert_eq!(
        read(b, "etc/config/dhcp"),
        read(&p.staging, "etc/config/dhcp")
    );

    // Master: modules, companions restarted, probes back, reload_config, the user script.
    let r = runner();
    run_hook(&p.ctx(&r), Event::NotifyMaster).unwrap();
    let lines = r.lines();
    for want in [
        "/usr/sbin/load-kernel-modules",
        "/etc/init.d/dpi restart",
        "/etc/init.d/ns-flows restart",
        "/sbin/reload_config",
        "ACTION=NOTIFY_MASTER /bin/sh /etc/keepalived.user",
    ] {
        assert!(lines.iter().any(|l| l == want), "{want} not in {lines:#?}");
    }
    let at = |l: &str| lines.iter().position(|x| x == l).unwrap();
    assert!(
        at("/sbin/reload_config") > at("/etc/init.d/dpi restart"),
        "reload_config last"
    );
    assert_eq!(
        read(b, "etc/telegraf.conf.d/ping.conf"),
        "[[inputs.ping]]\n"
    );
    assert!(!b.join("etc/telegraf.conf.d/ping.conf.disabled").exists());

    // With the keepalived package's own 01-user and 555-dropbear in the hotplug chain, those
    // run the user script and reload dropbear: not twice.
    write(
        b,
        "etc/hotplug.d/keepalived/01-user",
        "# keepalived package\n",
    );
    write(
        b,
        "etc/hotplug.d/keepalived/555-dropbear",
        "# keepalived package\n",
    );
    let r = runner();
    run_hook(&p.ctx(&r), Event::NotifyBackup).unwrap();
    let lines = r.lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("keepalived.user") || l.contains("dropbear")),
        "{lines:#?}"
    );
}

#[test]
fn the_primary_toggles_dnsmasq_force_with_its_state() {
    let p = restored_pair();
    let r = runner();
    let ctx = restore_hooks::Ctx {
        root: &p.primary,
        staging: &p.staging,
        runner: &r,
    };
    let force = || {
        uci::Package::load(&p.primary.join("etc/config/dhcp"))
            .unwrap()
            .sections_of_kind("dnsmasq")
            .map(|s| s.get("force").unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    run_hook(&ctx, Event::NotifyBackup).unwrap();
    assert_eq!(force(), ["0"]);
    run_hook(&ctx, Event::NotifyMaster).unwrap();
    assert_eq!(force(), ["1"]);
    // Other sections keep their own `force` (the lan pool's, an admin's choice).
    assert!(read(&p.primary, "etc/config/dhcp").contains("config dhcp 'lan'"));
}

/// The lines admins grep for (issue 12, item 5): each imported record in syslog under the
/// incumbent's tag, secrets left out.
#[test]
fn the_import_logs_the_incumbents_lines() {
    let p = Pair::new();
    write(&p.backup, "usr/bin/logger", "#!/bin/sh\n");
    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(rep.applied, "{rep:?}");
    let logged: Vec<String> = r
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("/usr/bin/logger -t ns-ha Importing network configuration: {"))
        .collect();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("\"key\":\"wan\"") && l.contains("\"type\":\"interface\"")),
        "{logged:#?}"
    );
    let wg = logged
        .iter()
        .find(|l| l.contains("\"key\":\"wg1\""))
        .expect("wg1 logged");
    assert!(
        wg.contains("\"private_key\":\"***\"") && !wg.contains("aGVsbG8="),
        "{wg}"
    );
}
