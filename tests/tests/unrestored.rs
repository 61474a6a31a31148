//! "Committed but not restored" is a durable state (issue 14, finding 1): a backup agent
//! killed right after the staging commit, or while the restore waited for the hooks lock,
//! used to leave live on the old generation for good (staging up to date, no journal, the
//! primary's next sync "up to date"). Now the agent completes it at start and before every
//! session, and the primary hears which generation live holds.

use ha_sync_tests::cluster::{now, Keys};
use ha_sync_tests::router_root;
use std::path::Path;
use std::sync::Arc;
use sync_agent::backup;
use sync_core::local::{staging_only, sync_local};
use sync_core::node::Node;
use sync_core::runner::RecordingRunner;
use sync_core::staging::Staging;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A primary and a backup root listing `/etc/app/`, the backup's live tree at generation 1
/// (restored) and its staging committed at generation 2 without a restore: the state a
/// kill -9 between the commit and the restore leaves.
fn committed_not_restored(d: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (d.join("primary"), d.join("backup"));
    for r in [&a, &b] {
        router_root(r, &["/etc/app/"], &[], &[]);
    }
    write(&a, "etc/app/conf", "generation 1\n");
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
    write(&a, "etc/app/conf", "generation 2\n");
    write(&a, "etc/app/new", "added in generation 2\n");
    // The commit lands; the process dies before the restore (staging_only stands for it).
    sync_local(&a, &b, &RecordingRunner::new(), &mut staging_only).unwrap();
    assert_eq!(
        std::fs::read_to_string(b.join("etc/app/conf")).unwrap(),
        "generation 1\n"
    );
    assert!(!b.join("etc/app/new").exists());
    let st = Staging::open(&staging).unwrap();
    assert!(st.unrestored().is_some(), "staging must know live lags");
    (a, b)
}

fn assert_live_at_generation_2(b: &Path) {
    assert_eq!(
        std::fs::read_to_string(b.join("etc/app/conf")).unwrap(),
        "generation 2\n"
    );
    assert_eq!(
        std::fs::read_to_string(b.join("etc/app/new")).unwrap(),
        "added in generation 2\n"
    );
    let st = Staging::open(&Node::new(b).staging_dir()).unwrap();
    assert_eq!(st.restored_root(), st.root());
    assert!(st.unrestored().is_none());
}

#[test]
fn the_agent_completes_an_unrestored_commit_at_start() {
    let d = tempfile::tempdir().unwrap();
    let (_a, b) = committed_not_restored(d.path());
    let keys = Keys::new(&d.path().join("keys"));
    let node = Node::new(&b);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut opts = backup::Options::new(
        &node,
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(RecordingRunner::new()),
    );
    opts.host_key = keys.host_key.clone();
    opts.authorized_keys = keys.authorized.clone();
    let server = rt.block_on(backup::bind(&node, opts)).unwrap();
    assert_live_at_generation_2(&b);
    drop(server);
}

#[test]
fn a_session_restores_before_it_answers_up_to_date() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = committed_not_restored(d.path());
    let keys = Keys::new(&d.path().join("keys"));
    let handler = backup::handler(
        &Node::new(&b),
        &backup::Options::new(
            &Node::new(&b),
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(RecordingRunner::new()),
        ),
    );
    let cfg = sync_agent::transport::ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        keys.host_key.clone(),
        keys.authorized.clone(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = sync_agent::transport::bind(cfg, Arc::new(handler))
                .await
                .unwrap();
            tx.send(server.local_addr().unwrap()).unwrap();
            let _ = server.run().await;
        });
    });
    let addr = rx.recv().unwrap();
    keys.pin("127.0.0.1", addr.port());
    let (_, rep) = now(&a, keys.client(&addr.to_string()), None).unwrap();
    assert!(
        rep.up_to_date,
        "staging already held the primary's generation"
    );
    assert_eq!(
        rep.restored,
        Some(rep.root),
        "the primary hears that live holds its generation"
    );
    assert_live_at_generation_2(&b);
}
