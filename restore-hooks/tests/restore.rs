//! Staging -> live on realistic roots: what is written, what is deleted, what stays, what runs.

mod common;

use common::*;
use restore_hooks::{restore_after_commit, run_hook, Event};
use std::path::Path;
use sync_core::runner::RecordingRunner;

fn hotplug_line(p: &Pair, rep: &sync_core::wire::RestoreReport) -> String {
    format!(
        "ACTION=NOTIFY_SYNC HA_SYNC_CHANGED={} HA_SYNC_GENERATION={} /sbin/hotplug-call keepalived",
        p.backup.join("var/run/ha-sync/changed").display(),
        rep.root.to_hex()
    )
}

fn first_restore(p: &Pair) -> sync_core::wire::RestoreReport {
    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(
        rep.applied && rep.refused.is_none() && rep.errors.is_empty(),
        "{rep:?}"
    );
    rep
}

#[test]
fn first_restore_writes_the_generation_and_keeps_this_nodes_identity() {
    let p = Pair::new();
    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(
        rep.applied && rep.refused.is_none() && rep.errors.is_empty(),
        "{rep:?}"
    );
    assert_eq!(rep.root, m.root_hash());

    // Plain files: content, mode and mtime of the primary.
    for rel in [
        "etc/config/firewall",
        "etc/config/dhcp",
        "etc/backup.pass",
        "etc/openvpn/server.conf",
        "etc/ha/routes",
    ] {
        assert_eq!(read(&p.backup, rel), read(&p.primary, rel), "{rel}");
        assert_eq!(
            meta(&p.backup, rel),
            meta(&p.primary, rel),
            "{rel}: mode/mtime"
        );
    }
    assert_eq!(meta(&p.backup, "etc/backup.pass").0, 0o600);
    assert_eq!(
        std::fs::read_link(p.backup.join("etc/openvpn/current")).unwrap(),
        Path::new("server.conf")
    );
    assert_eq!(
        meta(&p.backup, "etc/openvpn/current").1,
        meta(&p.primary, "etc/openvpn/current").1
    );

    // The listed directory is mirrored; the excluded file stays.
    assert!(!p.backup.join("etc/openvpn/old.conf").exists());
    assert_eq!(
        read(&p.backup, "etc/openvpn/backup.local"),
        "excluded: stays\n"
    );
    assert!(!p.backup.join("etc/openvpn/primary.local").exists());

    // Identity: the primary's system file with this node's hostname; own keys kept.
    let system = read(&p.backup, "etc/config/system");
    assert!(system.contains("option hostname 'fw-backup'"), "{system}");
    assert!(
        system.contains("option zonename 'Europe/Rome'")
            && system.contains("0.openwrt.pool.ntp.org")
    );
    assert_eq!(
        read(&p.backup, "etc/dropbear/authorized_keys"),
        "ssh-ed25519 AAAAbackup admin@backup\n"
    );

    // Cron: the live crontab is the overlay, the synced source stays the primary's.
    let cron = read(&p.backup, "etc/crontabs/root");
    assert_eq!(
        cron,
        "#ha-sync-disabled# 0 2 * * * /usr/sbin/send-heartbeat\n# 0 3 * * * /usr/sbin/send-backup\n\
         30 4 * * * /usr/sbin/logrotate\n#ha-sync-disabled# 0 0 * * * /etc/init.d/acme renew\n"
    );
    assert_eq!(read(&p.staging, "etc/crontabs/root"), PRIMARY_CRONTAB);
    assert_eq!(read(&p.backup, "etc/crontabs/cron.update"), "root\n");

    let changed: Vec<&str> = rep.changed.iter().map(String::as_str).collect();
    assert_eq!(
        changed,
        [
            "/etc/backup.pass",
            "/etc/config/dhcp",
            "/etc/config/firewall",
            "/etc/config/system",
            "/etc/crontabs/root",
            "/etc/ha",
            "/etc/ha/hotspot",
            "/etc/ha/ipsec_interfaces",
            "/etc/ha/routes",
            "/etc/ha/wan_devices",
            "/etc/ha/wan_interfaces",
            "/etc/ha/wg_interfaces",
            "/etc/ha/wg_peers",
            "/etc/openvpn/ccd",
            "/etc/openvpn/ccd/client1",
            "/etc/openvpn/current",
            "/etc/openvpn/old.conf",
            "/etc/openvpn/server.conf",
        ]
    );
    // NOTIFY_SYNC: network (the import changed it), the services of the changed files that
    // run on a backup (dnsmasq and openvpn are kept stopped), then the hotplug scripts.
    assert_eq!(
        r.lines(),
        [
            "/etc/init.d/network reload".to_string(),
            "/etc/init.d/firewall reload".to_string(),
            "/etc/init.d/system reload".to_string(),
            hotplug_line(&p, &rep),
        ]
    );
    let hotplug = r.calls().pop().unwrap();
    assert!(hotplug.clear_env, "run as keepalived does, env -i");
    let listed = read(&p.backup, "var/run/ha-sync/changed");
    assert_eq!(listed.lines().collect::<Vec<_>>(), changed);

    // The commit point of the restore: journal gone, generation recorded.
    let state = p.staging.join(".ha-sync");
    assert!(!state.join("restore-journal").exists());
    assert!(state.join("restored").exists());
}

#[test]
fn a_restore_with_nothing_to_do_writes_nothing_and_runs_nothing() {
    let p = Pair::new();
    first_restore(&p);
    let before = snapshot(&p.backup);
    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(
        rep.applied && rep.changed.is_empty() && rep.errors.is_empty(),
        "{rep:?}"
    );
    assert!(r.lines().is_empty(), "{:?}", r.lines());
    assert_eq!(
        snapshot(&p.backup),
        before,
        "inode, mtime and ctime of every path unchanged"
    );

    // The same through `ha-sync hook NOTIFY_SYNC`.
    let out = run_hook(&p.ctx(&r), Event::NotifySync).unwrap();
    let rep = out.restore.unwrap();
    assert!(rep.applied && rep.changed.is_empty(), "{rep:?}");
    assert!(r.lines().is_empty(), "{:?}", r.lines());
    assert_eq!(snapshot(&p.backup), before);
    assert!(!p.staging.join(".ha-sync/restore-journal").exists());
}

#[test]
fn a_primary_change_moves_only_what_changed_and_deletes_what_the_primary_deleted() {
    let p = Pair::new();
    first_restore(&p);
    let pr = &p.primary;
    write(
        pr,
        "etc/config/firewall",
        &(read(pr, "etc/config/firewall") + "\nconfig rule\n\toption name 'ssh'\n"),
    );
    std::fs::remove_file(pr.join("etc/backup.pass")).unwrap(); // single listed file
    std::fs::remove_file(pr.join("etc/openvpn/ccd/client1")).unwrap(); // inside a listed dir
    chmod(pr, "etc/openvpn/server.conf", 0o640);
    write(
        pr,
        "etc/openvpn/ta.key",
        "-----BEGIN OpenVPN Static key V1-----\n",
    );

    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(rep.applied && rep.errors.is_empty(), "{rep:?}");
    assert_eq!(
        rep.changed,
        [
            "/etc/backup.pass",
            "/etc/config/firewall",
            "/etc/openvpn/ccd/client1",
            "/etc/openvpn/server.conf",
            "/etc/openvpn/ta.key"
        ]
    );
    assert!(!p.backup.join("etc/backup.pass").exists());
    assert!(!p.backup.join("etc/openvpn/ccd/client1").exists());
    assert!(p.backup.join("etc/openvpn/ccd").is_dir());
    assert_eq!(
        meta(&p.backup, "etc/openvpn/server.conf"),
        meta(pr, "etc/openvpn/server.conf")
    );
    assert_eq!(
        read(&p.backup, "etc/config/firewall"),
        read(pr, "etc/config/firewall")
    );
    assert_eq!(
        read(&p.backup, "etc/openvpn/backup.local"),
        "excluded: stays\n"
    );
    // The records did not change: no network reload; openvpn stays stopped on a backup.
    assert_eq!(
        r.lines(),
        [
            "/etc/init.d/firewall reload".to_string(),
            hotplug_line(&p, &rep)
        ]
    );
}

#[test]
fn a_local_edit_on_the_backup_is_repaired_by_the_notify_sync_hook() {
    let p = Pair::new();
    first_restore(&p);
    write(
        &p.backup,
        "etc/config/firewall",
        "\nconfig defaults\n\toption input 'ACCEPT'\n",
    );
    chmod(&p.backup, "etc/ha/routes", 0o666);
    let r = RecordingRunner::new();
    let out = run_hook(&p.ctx(&r), Event::NotifySync).unwrap();
    let rep = out.restore.unwrap();
    assert_eq!(rep.changed, ["/etc/config/firewall", "/etc/ha/routes"]);
    assert_eq!(
        read(&p.backup, "etc/config/firewall"),
        read(&p.primary, "etc/config/firewall")
    );
    assert_eq!(
        meta(&p.backup, "etc/ha/routes"),
        meta(&p.primary, "etc/ha/routes")
    );
    assert_eq!(
        r.lines(),
        [
            "/etc/init.d/firewall reload".to_string(),
            hotplug_line(&p, &rep)
        ]
    );
}

/// Issue 11, bug 3: a configured backup that has seen no keepalived event since boot may be
/// about to be master: it asks keepalived's dump, and without one it leaves the generation
/// staged (restored at its first NOTIFY_BACKUP, or by the next session).
#[test]
fn a_backup_whose_vrrp_state_is_unknown_asks_keepalived_before_restoring() {
    let p = Pair::new();
    std::fs::remove_file(p.backup.join("var/run/ha-sync/vrrp_state")).unwrap();
    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    let why = rep.refused.clone().unwrap_or_default();
    assert!(why.contains("VRRP state unknown"), "{rep:?}");
    assert!(
        !p.backup.join("etc/config/dhcp").exists(),
        "nothing restored"
    );

    // keepalived's JSON dump says master: still refused.
    let dump = |state: u8| {
        write(
            &p.backup,
            "tmp/keepalived.json",
            &format!("[{{\"data\": {{\"iname\": \"ha\", \"state\": {state}}}, \"stats\": {{}}}}]"),
        )
    };
    dump(2);
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(rep.refused.unwrap_or_default().contains("VRRP master"));
    // It says backup: the restore goes ahead.
    dump(1);
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(rep.applied, "{rep:?}");
    assert_eq!(
        read(&p.backup, "etc/config/dhcp"),
        read(&p.primary, "etc/config/dhcp")
    );
}

/// Issue 11, item 4: what a restore replaces or deletes is kept in the attic first, tagged with
/// the generation that replaced it, and can be put back.
#[test]
fn what_a_restore_replaces_or_deletes_is_kept_in_the_attic() {
    let p = Pair::new();
    first_restore(&p);
    // The admin edits a file on the backup and adds one in a mirrored directory.
    write(&p.backup, "etc/config/firewall", "\nconfig rule 'mine'\n");
    write(&p.backup, "etc/openvpn/mine.conf", "port 1999\n");
    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(rep.applied, "{rep:?}");
    assert!(!p.backup.join("etc/openvpn/mine.conf").exists());
    let node = sync_core::node::Node::new(&p.backup);
    let attic = sync_core::attic::Attic::new(&node);
    let kept = attic.list(None).unwrap();
    let paths: Vec<&str> = kept.iter().map(|k| k.path.as_str()).collect();
    assert!(paths.contains(&"etc/config/firewall"), "{kept:?}");
    assert!(paths.contains(&"etc/openvpn/mine.conf"), "{kept:?}");
    assert!(kept.iter().all(|k| k.generation == m.root_hash().to_hex()));
    // Put the admin's rule back.
    let fw = sync_core::path::RelPath::new("etc/config/firewall").unwrap();
    attic.restore(&node, &fw, None).unwrap();
    assert_eq!(
        read(&p.backup, "etc/config/firewall"),
        "\nconfig rule 'mine'\n"
    );
}

/// The restore trusts its live stat cache only while a file is as it left it: an edit in place
/// that keeps the size and puts the mtime back (what `touch -r` does) still moves the ctime, and
/// the next restore of the same generation repairs it.
#[test]
fn an_edit_that_keeps_size_and_mtime_is_still_seen_by_the_next_restore() {
    let p = Pair::new();
    first_restore(&p);
    assert!(
        p.backup.join("var/run/ha-sync/live-stat").exists(),
        "the first restore remembers what it verified"
    );
    let rel = "etc/config/dhcp";
    let live = p.backup.join(rel);
    let before = std::fs::metadata(&live).unwrap();
    let mut forged = std::fs::read(&live).unwrap();
    forged[0] ^= 0x20;
    std::fs::write(&live, &forged).unwrap();
    filetime::set_file_mtime(
        &live,
        filetime::FileTime::from_last_modification_time(&before),
    )
    .unwrap();
    assert_eq!(std::fs::metadata(&live).unwrap().len(), before.len());

    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(rep.applied, "{rep:?}");
    assert_eq!(rep.changed, ["/etc/config/dhcp"]);
    assert_eq!(read(&p.backup, rel), read(&p.primary, rel));
}

#[test]
fn a_conffile_back_at_its_default_gets_the_rom_copy_instead_of_being_deleted() {
    let p = Pair::new();
    first_restore(&p);
    // The primary's dhcp went back to the package default: sysupgrade -l stops listing it.
    let conf = read(&p.primary, "etc/sysupgrade.conf").replace("/etc/config/dhcp\n", "");
    write(&p.primary, "etc/sysupgrade.conf", &conf);
    let (m, c) = p.sync();
    assert!(m.list.iter().all(|l| l.path.as_str() != "etc/config/dhcp"));
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert_eq!(rep.changed, ["/etc/config/dhcp"], "{rep:?}");
    assert_eq!(
        read(&p.backup, "etc/config/dhcp"),
        read(&p.backup, "rom/etc/config/dhcp")
    );
}

#[test]
fn restores_are_refused_on_the_master_and_on_the_primary() {
    let p = Pair::new();
    first_restore(&p);
    let r = RecordingRunner::new();
    run_hook(&p.ctx(&r), Event::NotifyMaster).unwrap();
    write(
        &p.primary,
        "etc/config/firewall",
        "\nconfig defaults\n\toption input 'DROP'\n",
    );
    let before = snapshot(&p.backup);
    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(!rep.applied && rep.changed.is_empty(), "{rep:?}");
    assert!(
        rep.refused.as_deref().unwrap().contains("VRRP master"),
        "{rep:?}"
    );
    assert_eq!(rep.root, m.root_hash());
    assert!(r.lines().is_empty());
    assert_eq!(snapshot(&p.backup), before);
    let out = run_hook(&p.ctx(&r), Event::NotifySync).unwrap();
    assert!(out.restore.unwrap().refused.is_some());
    assert!(r.lines().is_empty());

    // Back to backup: the generation refused while master lands with NOTIFY_BACKUP itself
    // (the primary's next sync finds staging up to date and sends nothing), and a later
    // restore of it has nothing left to do.
    let out = run_hook(&p.ctx(&r), Event::NotifyBackup).unwrap();
    let rep = out
        .restore
        .expect("NOTIFY_BACKUP restores the committed generation");
    assert!(
        rep.applied && rep.changed == ["/etc/config/firewall"],
        "{rep:?}"
    );
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(rep.applied && rep.changed.is_empty(), "{rep:?}");

    // A node configured as primary never restores.
    write(
        &p.backup,
        "etc/config/keepalived",
        "\nconfig primary 'primary'\n",
    );
    write(
        &p.primary,
        "etc/config/firewall",
        "\nconfig defaults\n\toption input 'REJECT'\n",
    );
    let (m, c) = p.sync();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(
        rep.refused.as_deref().unwrap().contains("primary"),
        "{rep:?}"
    );
    assert!(read(&p.backup, "etc/config/firewall").contains("DROP"));
}

#[test]
fn per_node_paths_stay_even_when_the_primary_sends_them() {
    let p = Pair::new();
    // No exclusions at all, and the whole dropbear directory on the list.
    write(
        &p.primary,
        "etc/config/keepalived",
        "\nconfig peer 'ha_peer'\n\tlist sync_list '/etc/ha'\n\tlist sync_list '/etc/dropbear'\n\tlist sync_list '/etc/ha-sync'\n\n\
         config primary 'primary'\n",
    );
    write(
        &p.primary,
        "etc/dropbear/dropbear_ed25519_host_key",
        "primary host key\n",
    );
    write(&p.primary, "etc/ha-sync/host_key", "primary ha-sync key\n");
    write(&p.backup, "etc/ha-sync/host_key", "backup ha-sync key\n");
    let (m, c) = p.sync();
    let listed: Vec<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
    // Per-node files travel (the backup keeps its own); keys never leave the primary at all.
    assert!(listed.contains(&"etc/config/network"), "{listed:?}");
    assert!(
        listed.iter().all(
            |p| p != &"etc/dropbear/dropbear_ed25519_host_key" && !p.starts_with("etc/ha-sync")
        ),
        "{listed:?}"
    );
    let net_before = read(&p.backup, "etc/config/network");
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(rep.applied, "{rep:?}");
    assert!(rep.changed.iter().all(|c| !c.starts_with("/etc/dropbear")
        && !c.starts_with("/etc/ha-sync")
        && c != "/etc/config/network"));
    assert_eq!(
        read(&p.backup, "etc/dropbear/dropbear_ed25519_host_key"),
        "backup host key\n"
    );
    assert_eq!(
        read(&p.backup, "etc/dropbear/authorized_keys"),
        "ssh-ed25519 AAAAbackup admin@backup\n"
    );
    assert_eq!(
        read(&p.backup, "etc/ha-sync/host_key"),
        "backup ha-sync key\n"
    );
    // The management address is the backup's: the import changed only the ha sections.
    let net = read(&p.backup, "etc/config/network");
    assert!(
        net.contains("option ipaddr '192.168.100.239'") && !net.contains("192.168.100.238"),
        "{net}"
    );
    assert_ne!(net, net_before);
    assert!(read(&p.backup, "etc/config/system").contains("'fw-backup'"));
}

#[test]
fn what_is_in_the_way_of_another_kind_is_replaced() {
    let p = Pair::new();
    // Live holds a file where the generation has a directory, a directory where it has a
    // symlink, and a symlink where it has a file.
    write(&p.backup, "etc/openvpn/ccd", "a file, not a directory\n");
    write(
        &p.backup,
        "etc/openvpn/current/inner",
        "a directory, not a symlink\n",
    );
    std::os::unix::fs::symlink("/etc/shadow", p.backup.join("etc/openvpn/server.conf")).unwrap();
    first_restore(&p);
    assert!(p.backup.join("etc/openvpn/ccd").is_dir());
    assert_eq!(
        read(&p.backup, "etc/openvpn/ccd/client1"),
        read(&p.primary, "etc/openvpn/ccd/client1")
    );
    assert!(p
        .backup
        .join("etc/openvpn/current")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    let sc = p
        .backup
        .join("etc/openvpn/server.conf")
        .symlink_metadata()
        .unwrap();
    assert!(sc.is_file());
    assert_eq!(
        read(&p.backup, "etc/openvpn/server.conf"),
        read(&p.primary, "etc/openvpn/server.conf")
    );
}
