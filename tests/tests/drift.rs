//! The drift check (issue 11, item 5): a hand edit on the backup is found, healed from the
//! generation it restored, kept in the attic and reported (alert, state file); a clean check
//! clears the alert; the master and a node mid-sync are left alone.

use ha_sync_tests::router_root;
use std::path::Path;
use sync_agent::alerts::{self, Alert};
use sync_agent::drift;
use sync_core::attic::Attic;
use sync_core::local::{staging_only, sync_local};
use sync_core::node::{Node, VrrpState};
use sync_core::runner::RecordingRunner;
use sync_core::staging::Staging;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A backup root whose live tree holds the restored generation of `/etc/app/`.
fn restored_backup(d: &Path) -> std::path::PathBuf {
    let (a, b) = (d.join("primary"), d.join("backup"));
    for r in [&a, &b] {
        router_root(r, &["/etc/app/"], &[], &[]);
    }
    write(&a, "etc/app/conf", "from the primary\n");
    write(&a, "etc/app/other", "untouched\n");
    let s = sync_local(&a, &b, &RecordingRunner::new(), &mut staging_only).unwrap();
    let staging = Node::new(&b).staging_dir();
    let ctx = restore_hooks::Ctx {
        root: &b,
        staging: &staging,
        runner: &RecordingRunner::new(),
    };
    let m = Staging::open(&staging)
        .unwrap()
        .committed()
        .unwrap()
        .clone();
    let rep = restore_hooks::restore_after_commit(&ctx, &m, &s.backup.commit.unwrap());
    assert!(rep.applied && rep.errors.is_empty(), "{rep:?}");
    Node::new(&b).set_vrrp_state(VrrpState::Backup).unwrap();
    b
}

#[test]
fn a_hand_edit_on_the_backup_is_found_healed_kept_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let b = restored_backup(d.path());
    let node = Node::new(&b);
    let r = RecordingRunner::new();

    let clean = drift::check(&node, &r).expect("a backup is checked");
    assert!(clean.paths.is_empty(), "{clean:?}");
    let thorough = drift::check_thorough(&node, &r).expect("checked");
    assert!(
        thorough.paths.is_empty(),
        "reading every file finds nothing: {thorough:?}"
    );
    assert!(!alerts::is_raised(&b, Alert::Drift));

    // An admin edits a listed file by hand and drops a file into the mirrored directory.
    write(&b, "etc/app/conf", "edited on the backup\n");
    write(&b, "etc/app/stray", "not on the primary\n");
    let found = drift::check(&node, &r).expect("checked");
    assert_eq!(
        found.paths,
        ["/etc/app/conf", "/etc/app/stray"],
        "{found:?}"
    );
    assert!(found.errors.is_empty(), "{found:?}");
    // Healed from the generation...
    assert_eq!(
        std::fs::read_to_string(b.join("etc/app/conf")).unwrap(),
        "from the primary\n"
    );
    assert!(!b.join("etc/app/stray").exists());
    // ...what it replaced kept...
    let mut kept: Vec<String> = Attic::new(&node)
        .list(None)
        .unwrap()
        .into_iter()
        .map(|k| k.path)
        .collect();
    kept.sort();
    assert_eq!(kept, ["etc/app/conf", "etc/app/stray"]);
    // ...and reported: the alert, and the record `ha-sync status` reads.
    assert!(alerts::is_raised(&b, Alert::Drift));
    assert_eq!(drift::last(&node).unwrap().paths, found.paths);
    let st = sync_agent::status::collect(&b, None);
    assert_eq!(st.to_json()["drift"]["paths"][0], "/etc/app/conf");
    assert!(
        st.render().contains("Drift: 2 path(s) differed"),
        "{}",
        st.render()
    );

    // The next clean check clears the alert (a second later: transitions are per second).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(drift::check(&node, &r).unwrap().paths.is_empty());
    assert!(!alerts::is_raised(&b, Alert::Drift));
}

#[test]
fn the_master_and_a_node_mid_sync_are_not_checked() {
    let d = tempfile::tempdir().unwrap();
    let b = restored_backup(d.path());
    let node = Node::new(&b);
    let r = RecordingRunner::new();
    write(&b, "etc/app/conf", "the acting master's own change\n");

    node.set_vrrp_state(VrrpState::Master).unwrap();
    assert_eq!(drift::check(&node, &r), None);
    assert_eq!(
        std::fs::read_to_string(b.join("etc/app/conf")).unwrap(),
        "the acting master's own change\n",
        "a master's live tree is its own"
    );

    node.set_vrrp_state(VrrpState::Backup).unwrap();
    let dirty = node.staging_dir().join(".ha-sync/dirty");
    std::fs::write(&dirty, "").unwrap();
    assert_eq!(drift::check(&node, &r), None, "a sync in progress");
    std::fs::remove_file(&dirty).unwrap();
    assert_eq!(drift::check(&node, &r).unwrap().paths, ["/etc/app/conf"]);
}
