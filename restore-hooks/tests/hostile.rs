//! A staging tree or manifest made to reach outside the restore list: refused, and nothing is
//! written outside (nor read from outside into live).

mod common;

use common::*;
use restore_hooks::{restore_after_commit, run_hook, Event};
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use sync_core::manifest::{Entry, Hash, Kind, ListItem, Manifest};
use sync_core::path::RelPath;
use sync_core::runner::RecordingRunner;
use sync_core::testing::{RawEntry, RawItem, RawKind, RawManifest};
use sync_core::wire::Commit;

/// A directory beside the backup root, with something to steal in it.
fn outside(p: &Pair) -> PathBuf {
    let o = p.tmp.path().join("outside");
    write(&o, "secret", "SECRET\n");
    write(&o, "vpn/server.conf", "EVIL\n");
    write(&o, "crontabs/root", "outside cron\n");
    o
}

fn no_secret_in(dir: &std::path::Path) {
    for (path, (_, _, _, _, _, content)) in snapshot(dir) {
        let text = String::from_utf8_lossy(&content);
        assert!(
            !text.contains("SECRET") && !text.contains("EVIL"),
            "{path} holds outside content"
        );
    }
}

#[test]
fn symlinks_planted_in_staging_are_never_followed() {
    let p = Pair::new();
    let o = outside(&p);
    let (m, c) = p.sync();
    let before_outside = snapshot(&o);
    // After the commit, someone swaps staged entries for links out of the tree.
    std::fs::remove_file(p.staging.join("etc/config/firewall")).unwrap();
    symlink(o.join("secret"), p.staging.join("etc/config/firewall")).unwrap();
    std::fs::remove_dir_all(p.staging.join("etc/openvpn")).unwrap();
    symlink(o.join("vpn"), p.staging.join("etc/openvpn")).unwrap();

    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(!rep.applied, "{rep:?}");
    let failed: Vec<&str> = rep.errors.iter().map(|(p, _)| p.as_str()).collect();
    for want in [
        "/etc/config/firewall",
        "/etc/openvpn/server.conf",
        "/etc/openvpn/ccd/client1",
    ] {
        assert!(
            failed.contains(&want),
            "{want} not refused: {:?}",
            rep.errors
        );
    }
    assert_eq!(
        read(&p.backup, "etc/config/firewall"),
        "\nconfig defaults\n\toption input 'ACCEPT'\n"
    );
    no_secret_in(&p.backup);
    assert_eq!(snapshot(&o), before_outside);
    // What could be restored was: the rest of the generation is live.
    assert_eq!(
        read(&p.backup, "etc/config/dhcp"),
        read(&p.primary, "etc/config/dhcp")
    );
}

#[test]
fn symlinks_in_live_are_replaced_or_refused_never_followed() {
    let p = Pair::new();
    let o = outside(&p);
    std::fs::remove_dir_all(p.backup.join("etc/openvpn")).unwrap();
    symlink(o.join("vpn"), p.backup.join("etc/openvpn")).unwrap();
    symlink(o.join("crontabs"), p.backup.join("etc/crontabs")).unwrap();
    let before_outside = snapshot(&o);

    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert_eq!(
        snapshot(&o),
        before_outside,
        "nothing written through a live symlink"
    );
    // A listed directory that is a symlink is the generation's to replace...
    assert!(p
        .backup
        .join("etc/openvpn")
        .symlink_metadata()
        .unwrap()
        .is_dir());
    assert_eq!(
        read(&p.backup, "etc/openvpn/server.conf"),
        read(&p.primary, "etc/openvpn/server.conf")
    );
    // ... a symlinked directory above a listed file is not: that file is refused.
    assert_eq!(rep.errors.len(), 1, "{rep:?}");
    assert_eq!(rep.errors[0].0, "/etc/crontabs/root");
    assert!(
        rep.errors[0].1.contains("without following a symlink"),
        "{rep:?}"
    );
    assert!(p
        .backup
        .join("etc/crontabs")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A manifest listing the directory `list` with one file `file`, paths unchecked.
fn raw(list: &str, file: &str) -> Vec<u8> {
    RawManifest {
        list: vec![RawItem {
            path: list.into(),
            dir: true,
        }],
        excludes: vec![],
        entries: vec![
            RawEntry::new(list, RawKind::Dir),
            RawEntry::new(
                file,
                RawKind::File {
                    size: 6,
                    hash: Hash::of(b"pwned\n"),
                },
            ),
        ],
    }
    .encode()
}

#[test]
fn dot_dot_in_the_manifest_or_the_restore_list_is_refused() {
    let p = Pair::new();
    let o = outside(&p);
    p.sync();
    // The look-alike encodes real manifests: a clean one decodes.
    assert!(Manifest::decode(&raw("etc/x", "etc/x/y")).is_ok());
    let evil = raw("../outside", "../outside/pwned");
    assert!(Manifest::decode(&evil).is_err());
    std::fs::write(p.staging.join(".ha-sync/manifest"), &evil).unwrap();
    write(
        &p.staging,
        "tmp/restore_list",
        "/etc/../../outside/pwned\n/../outside\n",
    );
    // Where the hostile path points from staging: a naive restore would copy it out.
    write(&p.staging, "../outside/pwned", "pwned\n");
    let before_live = snapshot(&p.backup);
    let before_outside = snapshot(&o);

    let r = RecordingRunner::new();
    let out = run_hook(&p.ctx(&r), Event::NotifySync).unwrap();
    let rep = out.restore.unwrap();
    assert!(!rep.applied && rep.refused.is_some(), "{rep:?}");
    assert!(r.lines().is_empty());
    assert_eq!(snapshot(&o), before_outside);
    assert!(!o.join("pwned").exists());
    assert_eq!(snapshot(&p.backup), before_live);
}

#[test]
fn a_manifest_that_does_not_validate_is_refused_before_anything_is_written() {
    let p = Pair::new();
    let o = outside(&p);
    p.sync();
    let rel = |s: &str| RelPath::new(s).unwrap();
    let entry = |path: &str, kind: Kind| Entry {
        path: rel(path),
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime_ns: 1,
    };
    // A symlink out of the tree, then a file "below" it: writing it would follow the link.
    let m = Manifest {
        list: vec![ListItem {
            path: rel("etc/ha"),
            dir: true,
        }],
        excludes: vec![],
        entries: vec![
            entry("etc/ha", Kind::Dir),
            entry(
                "etc/ha/l",
                Kind::Symlink {
                    target: o.display().to_string(),
                },
            ),
            entry(
                "etc/ha/l/pwned",
                Kind::File {
                    size: 0,
                    hash: Hash::of(b""),
                },
            ),
        ],
    };
    let before = snapshot(&p.backup);
    let r = RecordingRunner::new();
    let rep = restore_after_commit(
        &p.ctx(&r),
        &m,
        &Commit {
            root: m.root_hash(),
            ..Commit::default()
        },
    );
    assert!(
        rep.refused.as_deref().unwrap().contains("manifest refused"),
        "{rep:?}"
    );
    assert_eq!(snapshot(&p.backup), before);
    assert!(!o.join("pwned").exists());
    // An entry outside the restore list.
    let m = Manifest {
        list: vec![ListItem {
            path: rel("etc/ha"),
            dir: true,
        }],
        excludes: vec![],
        entries: vec![entry(
            "etc/shadow",
            Kind::File {
                size: 0,
                hash: Hash::of(b""),
            },
        )],
    };
    let rep = restore_after_commit(&p.ctx(&r), &m, &Commit::default());
    assert!(
        rep.refused.is_some() && !p.backup.join("etc/shadow").exists(),
        "{rep:?}"
    );
    assert!(r.lines().is_empty());
}

/// Issue 14, finding 3: a hostile primary (or a careless `sync_list`) names the backup's own
/// staging state or its keys. The manifest is refused, naming the entry and the rule.
#[test]
fn a_manifest_naming_the_agents_state_or_keys_is_refused_by_rule() {
    for (list, file) in [
        (
            "usr/share/keepalived/rsync/.ha-sync",
            "usr/share/keepalived/rsync/.ha-sync/root",
        ),
        ("etc/ha-sync", "etc/ha-sync/id_ed25519"),
        ("etc/keepalived/keys", "etc/keepalived/keys/id_rsa"),
    ] {
        let e = Manifest::decode(&raw(list, file)).expect_err(file);
        let msg = e.to_string();
        // The first entry that breaks the rule is named (the directory, before its file).
        assert!(
            msg.contains(list) && msg.contains("never synced") && msg.contains("built-in rule"),
            "{file}: {msg}"
        );
    }
}

/// A directory listed above the staging tree (`/usr/share/keepalived`, where keepalived's own
/// scripts live) is mirrored, but the staging tree below it is neither overwritten nor deleted:
/// the committed generation stays readable and the next sync still finds it.
#[test]
fn a_mirrored_directory_above_staging_leaves_the_staging_tree_alone() {
    let p = Pair::new();
    first_sync_and_restore(&p);
    let committed_root = std::fs::read(p.staging.join(".ha-sync/root")).unwrap();
    // The admin adds the directory above the staging tree; the primary has a notify script
    // there and, planted, a forged staging root.
    let kc = p.primary.join("etc/config/keepalived");
    let text = std::fs::read_to_string(&kc).unwrap().replace(
        "\tlist sync_list '/etc/ha'\n",
        "\tlist sync_list '/etc/ha'\n\tlist sync_list '/usr/share/keepalived'\n",
    );
    std::fs::write(&kc, text).unwrap();
    write(&p.primary, "usr/share/keepalived/notify.sh", "#!/bin/sh\n");
    write(
        &p.primary,
        "usr/share/keepalived/rsync/.ha-sync/root",
        "forged\n",
    );
    // The backup has a stray file there too: mirroring deletes it.
    write(&p.backup, "usr/share/keepalived/stray", "old\n");

    let (m, c) = p.sync();
    assert!(m
        .get(&RelPath::new("usr/share/keepalived/notify.sh").unwrap())
        .is_some());
    assert!(
        m.entries
            .iter()
            .all(|e| !e.path.as_str().starts_with("usr/share/keepalived/rsync")),
        "the staging tree is never sent"
    );
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(rep.applied && rep.errors.is_empty(), "{rep:?}");
    assert_eq!(
        read(&p.backup, "usr/share/keepalived/notify.sh"),
        "#!/bin/sh\n"
    );
    assert!(!p.backup.join("usr/share/keepalived/stray").exists());
    // Staging state intact: the committed manifest is the generation just restored.
    let staged = sync_core::staging::Staging::open(&p.staging).unwrap();
    assert_eq!(
        staged.committed().map(Manifest::root_hash),
        Some(m.root_hash())
    );
    assert_ne!(
        std::fs::read(p.staging.join(".ha-sync/root")).unwrap(),
        b"forged\n".to_vec()
    );
    assert_ne!(committed_root, b"forged\n".to_vec());
}

fn first_sync_and_restore(p: &Pair) {
    let (m, c) = p.sync();
    let r = RecordingRunner::new();
    let rep = restore_after_commit(&p.ctx(&r), &m, &c);
    assert!(rep.applied, "{rep:?}");
}

/// Issue 14, finding 7: a FIFO at a listed live path (root on the backup can make one) used to
/// hold the restore in open() forever, with the session slot and the hooks lock. Now it is
/// replaced like anything else of the wrong kind; the test fails (instead of hanging) if the
/// restore does not return within a minute.
#[test]
fn a_fifo_at_a_listed_live_path_does_not_hang_the_restore() {
    let p = Pair::new();
    first_sync_and_restore(&p);
    for rel in ["etc/openvpn/server.conf", "etc/config/system"] {
        let live = p.backup.join(rel);
        std::fs::remove_file(&live).unwrap();
        let c = std::ffi::CString::new(live.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C path.
        assert_eq!(
            unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
            0,
            "mkfifo {rel}"
        );
    }
    // The primary changes the FIFO'd file, so the restore must write it.
    write(&p.primary, "etc/openvpn/server.conf", "port 1195\n");
    let (m, c) = p.sync();
    let (tx, rx) = std::sync::mpsc::channel();
    let backup = p.backup.clone();
    let staging = p.staging.clone();
    std::thread::spawn(move || {
        let r = RecordingRunner::new();
        let ctx = restore_hooks::Ctx {
            root: &backup,
            staging: &staging,
            runner: &r,
        };
        tx.send(restore_after_commit(&ctx, &m, &c)).ok();
    });
    let rep = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the restore hung on a FIFO");
    assert!(rep.errors.is_empty(), "{rep:?}");
    assert_eq!(read(&p.backup, "etc/openvpn/server.conf"), "port 1195\n");
    let ft = std::fs::symlink_metadata(p.backup.join("etc/openvpn/server.conf"))
        .unwrap()
        .file_type();
    assert!(ft.is_file(), "the FIFO was replaced by the file");
}
