//! Failback's pull on realistic roots (issue 11, item 2), without the network: the backup's
//! offer after it was master, the primary applying it (each kind of change, merge, conflict),
//! the backup's restore held until the primary took its changes, and a hostile offer.

mod common;

use common::*;
use restore_hooks::authority::{self, apply_offer, offer, taken};
use restore_hooks::{restore_after_commit, run_hook, Ctx, Event};
use std::os::unix::fs::symlink;
use sync_core::attic::{Attic, Reason};
use sync_core::node::Node;
use sync_core::pull::{Offer, Taken, PULL_VERSION};
use sync_core::runner::RecordingRunner;

/// A pair whose backup restored the primary's generation and then became master.
fn acting_backup() -> Pair {
    let p = Pair::new();
    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    assert!(restore_after_commit(&p.ctx(&r), &m, &c).applied);
    run_hook(&p.ctx(&r), Event::NotifyMaster).unwrap();
    p
}

fn primary_ctx<'a>(p: &'a Pair, r: &'a RecordingRunner) -> Ctx<'a> {
    Ctx {
        root: &p.primary,
        staging: &p.staging,
        runner: r,
    }
}

/// A whole pull, as the agents run it: the backup's offer, applied on the primary, taken.
fn pull(p: &Pair, r: &RecordingRunner) {
    let o = offer(&p.ctx(r)).unwrap();
    apply_offer(&primary_ctx(p, r), &o).unwrap();
    taken(
        &p.ctx(r),
        &Taken {
            version: PULL_VERSION,
            live_root: o.live_root,
        },
    )
    .unwrap();
}

fn paths(o: &Offer) -> Vec<String> {
    o.changes.iter().map(|c| c.path.to_abs()).collect()
}

#[test]
fn a_backup_that_was_not_master_offers_nothing() {
    let p = Pair::new();
    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    assert!(restore_after_commit(&p.ctx(&r), &m, &c).applied);
    write(
        &p.backup,
        "etc/openvpn/hand-edit.conf",
        "drift, not the admin's work\n",
    );
    let o = offer(&p.ctx(&r)).unwrap();
    assert_eq!(o.authority_since, None);
    assert!(o.changes.is_empty());
}

#[test]
fn every_kind_of_change_on_the_acting_backup_reaches_the_primary() {
    let p = acting_backup();
    let r = RecordingRunner::new();
    assert!(authority::authority(&Node::new(&p.backup)).is_some());
    // Nothing changed yet: an empty offer, and its identity stays out (hostname, network).
    assert_eq!(paths(&offer(&p.ctx(&r)).unwrap()), Vec::<String>::new());

    write(&p.backup, "etc/openvpn/new.conf", "new on the backup\n");
    write(&p.backup, "etc/backup.pass", "changed on the backup\n");
    chmod(&p.backup, "etc/backup.pass", 0o600);
    std::fs::remove_file(p.backup.join("etc/ha/routes")).unwrap();
    symlink("server.conf", p.backup.join("etc/openvpn/link")).unwrap();
    std::fs::create_dir_all(p.backup.join("etc/openvpn/tls")).unwrap();
    write(
        &p.backup,
        "etc/config/network",
        "\nconfig interface 'lan'\n",
    );
    let o = offer(&p.ctx(&r)).unwrap();
    assert_eq!(
        paths(&o),
        [
            "/etc/backup.pass",
            "/etc/ha/routes",
            "/etc/openvpn/link",
            "/etc/openvpn/new.conf",
            "/etc/openvpn/tls",
        ],
        "per-node paths never offered"
    );
    // The acting backup's status lists the same paths.
    assert_eq!(authority::changes_since_takeover(&p.ctx(&r)), paths(&o));
    let o = Offer::decode(&o.encode()).unwrap();
    let out = apply_offer(&primary_ctx(&p, &r), &o).unwrap();
    assert!(out.errors.is_empty() && out.conflicts.is_empty(), "{out:?}");
    assert_eq!(
        read(&p.primary, "etc/openvpn/new.conf"),
        "new on the backup\n"
    );
    assert_eq!(
        read(&p.primary, "etc/backup.pass"),
        "changed on the backup\n"
    );
    assert_eq!(meta(&p.primary, "etc/backup.pass").0 & 0o7777, 0o600);
    assert!(!p.primary.join("etc/ha/routes").exists());
    assert_eq!(
        std::fs::read_link(p.primary.join("etc/openvpn/link")).unwrap(),
        std::path::Path::new("server.conf")
    );
    assert!(p.primary.join("etc/openvpn/tls").is_dir());
    assert_ne!(
        read(&p.primary, "etc/config/network"),
        "\nconfig interface 'lan'\n"
    );
    // What the pull replaced or deleted on the primary is in its attic.
    let kept: Vec<(String, Reason)> = Attic::new(&Node::new(&p.primary))
        .list(None)
        .unwrap()
        .into_iter()
        .map(|k| (k.path, k.reason))
        .collect();
    assert_eq!(
        kept,
        [
            ("etc/backup.pass".to_string(), Reason::Pull),
            ("etc/ha/routes".to_string(), Reason::Pull)
        ]
    );
    // The same offer again changes nothing.
    let again = apply_offer(&primary_ctx(&p, &r), &o).unwrap();
    assert_eq!(again.changed(), 0, "{again:?}");
}

#[test]
fn a_uci_file_changed_on_both_merges_and_a_real_conflict_goes_to_the_authority() {
    let p = acting_backup();
    let r = RecordingRunner::new();
    let fw = "etc/config/firewall";
    // The backup adds a redirect option and changes the lan zone's name; the primary changes
    // the wan zone and the lan zone's name too (differently).
    let b = read(&p.backup, fw)
        .replace("option name 'lan'", "option name 'inside'")
        .replace("option src_dport '443'", "option src_dport '8443'");
    write(&p.backup, fw, &b);
    let a = read(&p.primary, fw)
        .replace("option name 'lan'", "option name 'trusted'")
        .replace("option masq '1'", "option masq '0'");
    write(&p.primary, fw, &a);
    // And a plain file both changed.
    write(&p.backup, "etc/backup.pass", "backup's\n");
    write(&p.primary, "etc/backup.pass", "primary's\n");

    let o = offer(&p.ctx(&r)).unwrap();
    let out = apply_offer(&primary_ctx(&p, &r), &o).unwrap();
    assert_eq!(out.merged, ["etc/config/firewall"], "{out:?}");
    let merged = read(&p.primary, fw);
    assert!(merged.contains("option name 'inside'"), "{merged}");
    assert!(merged.contains("option src_dport '8443'"), "{merged}");
    assert!(merged.contains("option masq '0'"), "{merged}");
    assert_eq!(read(&p.primary, "etc/backup.pass"), "backup's\n");
    let conflicts: Vec<(String, Option<String>, String, String)> =
        authority::conflicts(&Node::new(&p.primary))
            .into_iter()
            .map(|c| (c.path, c.option, c.primary, c.backup))
            .collect();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert_eq!(conflicts[0].0, "etc/backup.pass");
    assert_eq!(
        conflicts[1],
        (
            "etc/config/firewall".into(),
            Some("name".into()),
            "'trusted'".into(),
            "'inside'".into()
        )
    );

    // Resolved for the primary: its value back in the merged file, the rest of the merge kept.
    let n = authority::resolve(
        &Node::new(&p.primary),
        &sync_core::path::RelPath::new(fw).unwrap(),
        true,
    )
    .unwrap();
    assert_eq!(n, 1);
    let back = read(&p.primary, fw);
    assert!(
        back.contains("option name 'trusted'") && back.contains("'8443'"),
        "{back}"
    );
    // The whole-file conflict, for the primary: its version from the attic.
    authority::resolve(
        &Node::new(&p.primary),
        &sync_core::path::RelPath::new("etc/backup.pass").unwrap(),
        true,
    )
    .unwrap();
    assert_eq!(read(&p.primary, "etc/backup.pass"), "primary's\n");
    assert!(authority::conflicts(&Node::new(&p.primary)).is_empty());
}

#[test]
fn the_backups_restore_waits_until_the_primary_took_its_changes() {
    let p = acting_backup();
    let r = RecordingRunner::new();
    write(&p.backup, "etc/openvpn/new.conf", "new on the backup\n");
    // Back to backup before any pull: NOTIFY_BACKUP's restore is held, the change stays.
    let out = run_hook(&p.ctx(&r), Event::NotifyBackup).unwrap();
    let why = out.restore.unwrap().refused.unwrap();
    assert!(why.contains("/etc/openvpn/new.conf"), "{why}");
    assert_eq!(
        read(&p.backup, "etc/openvpn/new.conf"),
        "new on the backup\n"
    );

    // The primary pulls, takes it, pushes: the restore proceeds and the mark goes.
    pull(&p, &r);
    let (m, c) = p.sync();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(rep.applied, "{rep:?}");
    assert_eq!(
        read(&p.backup, "etc/openvpn/new.conf"),
        "new on the backup\n"
    );
    assert!(authority::authority(&Node::new(&p.backup)).is_none());
}

#[test]
fn an_edit_after_the_pull_holds_the_restore_again() {
    let p = acting_backup();
    let r = RecordingRunner::new();
    write(&p.backup, "etc/openvpn/a.conf", "first\n");
    pull(&p, &r);
    write(&p.backup, "etc/openvpn/b.conf", "after the pull\n");
    run_hook(&p.ctx(&r), Event::NotifyBackup).unwrap();
    let (m, c) = p.sync();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(!rep.applied, "{rep:?}");
    assert!(rep.refused.unwrap().contains("/etc/openvpn/b.conf"));
    assert_eq!(read(&p.backup, "etc/openvpn/b.conf"), "after the pull\n");
}

#[test]
fn an_offer_outside_the_primarys_list_is_refused_path_by_path() {
    let p = acting_backup();
    let r = RecordingRunner::new();
    write(&p.backup, "etc/openvpn/new.conf", "fine\n");
    let mut o = offer(&p.ctx(&r)).unwrap();
    let mut evil = o.changes[0].clone();
    for path in [
        "etc/shadow",
        "etc/ha-sync/authorized_keys",
        "etc/config/network",
    ] {
        evil.path = sync_core::path::RelPath::new(path).unwrap();
        for e in [&mut evil.live].into_iter().flatten() {
            e.path = evil.path.clone();
        }
        o.changes.push(evil.clone());
    }
    let out = apply_offer(&primary_ctx(&p, &r), &o).unwrap();
    assert_eq!(out.taken, ["etc/openvpn/new.conf"]);
    assert!(out.errors.is_empty(), "{out:?}");
    let refused: Vec<&str> = out.skipped.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        refused,
        [
            "/etc/shadow",
            "/etc/ha-sync/authorized_keys",
            "/etc/config/network"
        ]
    );
    assert!(!p.primary.join("etc/shadow").exists());
    assert!(!p.primary.join("etc/ha-sync/authorized_keys").exists());
}
