//! `ha-sync now` obeys the daemon's rule (issue 11, item 6): only the primary in VRRP state
//! master sends. A sync by hand from a primary that is fault or backup, or from the backup,
//! would push a stale tree over the node that is running.

use ha_sync_tests::cluster::{now, spawn_backup, Keys};
use std::path::Path;
use sync_agent::agent::NowError;
use sync_core::node::{Node, VrrpState};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn node_with_role(root: &Path, role: &str) {
    write(
        root,
        "etc/config/keepalived",
        &format!("config {role} '{role}'\n\nconfig peer 'ha_peer'\n\tlist sync_list '/etc/app/'\n"),
    );
    write(root, "etc/app/conf", "made on this node\n");
}

#[test]
fn now_refuses_unless_this_node_is_the_master_primary() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    std::fs::create_dir_all(&b).unwrap();
    let keys = Keys::new(&d.path().join("keys"));
    let addr = spawn_backup(&b, &keys, "127.0.0.1:0", None);
    keys.pin("127.0.0.1", addr.port());
    let staged = Node::new(&b).staging_dir().join("etc/app/conf");
    let client = || keys.client(&addr.to_string());

    node_with_role(&a, "primary");
    let n = Node::new(&a);
    for (state, word) in [
        (Some(VrrpState::Fault), "fault"),
        (Some(VrrpState::Backup), "backup"),
        (None, "unknown"),
    ] {
        match state {
            Some(s) => n.set_vrrp_state(s).unwrap(),
            None => {
                let _ = std::fs::remove_file(n.vrrp_state_file());
            }
        }
        match now(&a, client(), None) {
            Err(NowError::Refused(why)) => assert!(why.contains(word), "{word}: {why}"),
            other => panic!("a primary in state {word} sent: {:?}", other.map(|r| r.1)),
        }
        assert!(!staged.exists(), "nothing reached the backup");
    }

    node_with_role(&a, "backup");
    n.set_vrrp_state(VrrpState::Master).unwrap();
    assert!(matches!(now(&a, client(), None), Err(NowError::Refused(_))));
    assert!(!staged.exists());

    assert_eq!(
        sync_core::uci::state_get(&a, "keepalived", "ha_peer", "last_sync_status").unwrap(),
        None,
        "a refused sync records nothing"
    );
    node_with_role(&a, "primary");
    let (_, rep) = now(&a, client(), None).expect("the master primary sends");
    assert!(rep.commit.is_some());
    assert_eq!(
        std::fs::read_to_string(&staged).unwrap(),
        "made on this node\n"
    );
    // A sync by hand is recorded as the daemon records its own (issue 12): `ns-ha-config
    // status` reads it from /var/state/keepalived. Refused attempts above recorded nothing.
    let st = |o| sync_core::uci::state_get(&a, "keepalived", "ha_peer", o).unwrap();
    assert_eq!(st("last_sync_status").as_deref(), Some("Successful"));
    assert!(st("last_sync_time").is_some());
}
