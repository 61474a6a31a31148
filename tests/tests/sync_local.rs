//! The whole protocol in-process between two roots: staging ends equal to the primary's
//! tree in content and metadata, and a second sync moves no file data.

use ha_sync_tests::{assert_same_tree, router_root};
use proptest::prelude::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use sync_core::local::{self, staging_only};
use sync_core::node::Node;
use sync_core::runner::RecordingRunner;

/// One thing to put in a tree.
#[derive(Debug, Clone)]
enum Item {
    File {
        content: Vec<u8>,
        mode: u32,
        mtime: i64,
    },
    Dir {
        mode: u32,
    },
    Link {
        target: String,
    },
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "c d",
    "sub",
    "sub/x",
    "sub/y",
    "sub/deep",
    "sub/deep/z",
    "e.conf",
    "f",
];

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (prop::collection::vec(any::<u8>(), 0..20_000), prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o640]), 1_000_000_000i64..1_900_000_000)
            .prop_map(|(content, mode, mtime)| Item::File { content, mode, mtime }),
        1 => prop::sample::select(vec![0o755u32, 0o700]).prop_map(|mode| Item::Dir { mode }),
        1 => "[a-z./]{1,12}".prop_map(|target| Item::Link { target }),
    ]
}

fn tree() -> impl Strategy<Value = Vec<(usize, Item)>> {
    prop::collection::vec((0..NAMES.len(), item()), 0..12)
}

/// Builds `items` below `dir` (later items over earlier ones; a path below a non-directory
/// is skipped), then fixes directory mtimes.
fn build(dir: &Path, items: &[(usize, Item)]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut dir_modes = Vec::new();
    for (i, it) in items {
        let p = dir.join(NAMES[*i]);
        if let Some(parent) = p.parent() {
            if std::fs::create_dir_all(parent).is_err() {
                continue;
            }
        }
        if p.symlink_metadata().is_ok() {
            if p.symlink_metadata().unwrap().is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
        match it {
            Item::File {
                content,
                mode,
                mtime,
            } => {
                std::fs::write(&p, content).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
                let t = filetime::FileTime::from_unix_time(*mtime, 123);
                filetime::set_file_mtime(&p, t).unwrap();
            }
            Item::Dir { mode } => {
                std::fs::create_dir(&p).unwrap();
                dir_modes.push((p, *mode));
            }
            Item::Link { target } => std::os::unix::fs::symlink(target, &p).unwrap(),
        }
    }
    for (p, mode) in dir_modes {
        if p.is_dir() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
}

fn sync(a: &Path, b: &Path) -> local::LocalSync {
    local::sync_local(a, b, &RecordingRunner::new(), &mut staging_only).expect("sync")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn staging_converges_to_the_primary_whatever_both_held(a_items in tree(), b_items in tree(), a2_items in tree()) {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        router_root(&a, &["/etc/ha"], &[], &[]);
        build(&a.join("etc/ha"), &a_items);
        // The backup's staging holds junk from some earlier life, and no commit.
        build(&Node::new(&b).staging_dir().join("etc/ha"), &b_items);

        let s1 = sync(&a, &b);
        assert_same_tree(&a.join("etc/ha"), &Node::new(&b).staging_dir().join("etc/ha"));
        prop_assert!(s1.primary.commit.is_some());

        let s2 = sync(&a, &b);
        prop_assert!(s2.primary.up_to_date, "second sync should find the roots equal");
        prop_assert_eq!(s2.primary.files_sent, 0);
        prop_assert_eq!(s2.primary.traffic.round_trips, 1);

        // More changes, including type changes over what is there: converges again.
        build(&a.join("etc/ha"), &a2_items);
        let s3 = sync(&a, &b);
        assert_same_tree(&a.join("etc/ha"), &Node::new(&b).staging_dir().join("etc/ha"));
        let s4 = sync(&a, &b);
        prop_assert!(s4.primary.up_to_date);
        let _ = s3;
    }
}

#[test]
fn changes_after_a_commit_travel_as_a_manifest_delta_with_pushed_files() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    router_root(&a, &["/etc/ha"], &[], &[]);
    std::fs::create_dir_all(a.join("etc/ha")).unwrap();
    let big: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("10.{}.{}.{}/32\n", i % 200, i % 251, i % 13).into_bytes())
        .collect();
    std::fs::write(a.join("etc/ha/list"), &big).unwrap();
    std::fs::write(a.join("etc/ha/small"), b"option x '1'\n").unwrap();
    let s1 = sync(&a, &b);
    assert_eq!(s1.primary.form, Some(sync_core::wire::ManifestForm::Full));

    let mut big2 = big.clone();
    big2.extend_from_slice(b"192.0.2.1/32\n");
    big2[1000] = b'9';
    std::fs::write(a.join("etc/ha/list"), &big2).unwrap();
    std::fs::write(a.join("etc/ha/small"), b"option x '2'\n").unwrap();
    let s2 = sync(&a, &b);
    assert_eq!(s2.primary.form, Some(sync_core::wire::ManifestForm::Delta));
    // Both files pushed with the manifest: hello, then push -> commit. Two round trips.
    assert_eq!(s2.primary.traffic.round_trips, 2);
    assert_eq!(s2.primary.files_sent, 2);
    assert!(
        s2.primary.payload_bytes < 2_000,
        "patch + small file: {} bytes",
        s2.primary.payload_bytes
    );
    assert_same_tree(
        &a.join("etc/ha"),
        &Node::new(&b).staging_dir().join("etc/ha"),
    );
}

#[test]
fn a_rebooted_primary_uses_rsync_signatures_for_big_files() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    router_root(&a, &["/etc/ha"], &[], &[]);
    std::fs::create_dir_all(a.join("etc/ha")).unwrap();
    let big: Vec<u8> = (0..100_000u32)
        .flat_map(|i| format!("line {i} of the list\n").into_bytes())
        .collect();
    std::fs::write(a.join("etc/ha/list"), &big).unwrap();
    sync(&a, &b);
    // The primary's RAM state is gone (reboot): no acked manifest, no basis copies.
    std::fs::remove_dir_all(a.join(sync_core::node::STATE_DIR)).unwrap();
    let mut big2 = big.clone();
    big2.extend_from_slice(b"one more line\n");
    std::fs::write(a.join("etc/ha/list"), &big2).unwrap();
    let s = sync(&a, &b);
    assert_eq!(s.primary.form, Some(sync_core::wire::ManifestForm::Full));
    assert_eq!(s.primary.files_sent, 1);
    assert!(
        s.primary.payload_bytes < 5_000,
        "rsync delta: {} bytes",
        s.primary.payload_bytes
    );
    assert_same_tree(
        &a.join("etc/ha"),
        &Node::new(&b).staging_dir().join("etc/ha"),
    );
}

#[test]
fn excluded_files_are_neither_sent_nor_deleted_and_single_files_are_deleted() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    router_root(
        &a,
        &["/etc/ha"],
        &["/etc/single", "/etc/with space"],
        &["/etc/ha/*.tmp", "/etc/ha/private"],
    );
    std::fs::create_dir_all(a.join("etc/ha/private")).unwrap();
    std::fs::write(a.join("etc/ha/keep"), b"k").unwrap();
    std::fs::write(a.join("etc/ha/x.tmp"), b"t").unwrap();
    std::fs::write(a.join("etc/ha/private/secret"), b"s").unwrap();
    std::fs::write(a.join("etc/single"), b"1").unwrap();
    std::fs::write(a.join("etc/with space"), b"2").unwrap();
    sync(&a, &b);
    let st = Node::new(&b).staging_dir();
    assert!(st.join("etc/ha/keep").exists());
    assert!(!st.join("etc/ha/x.tmp").exists() && !st.join("etc/ha/private").exists());
    assert_eq!(std::fs::read(st.join("etc/with space")).unwrap(), b"2");
    let rl = std::fs::read_to_string(st.join("tmp/restore_list")).unwrap();
    assert_eq!(rl, "/etc/ha\n/etc/single\n/etc/with space\n");

    std::fs::remove_file(a.join("etc/single")).unwrap();
    sync(&a, &b);
    assert!(
        !st.join("etc/single").exists(),
        "a single listed file deleted on the primary goes"
    );
    assert_eq!(
        std::fs::read_to_string(st.join("tmp/restore_list")).unwrap(),
        "/etc/ha\n/etc/with space\n"
    );
}

#[test]
fn an_interrupted_sync_is_rescanned_and_converges() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    router_root(&a, &["/etc/ha"], &[], &[]);
    std::fs::create_dir_all(a.join("etc/ha")).unwrap();
    for i in 0..20 {
        std::fs::write(a.join(format!("etc/ha/f{i}")), format!("v1 {i}")).unwrap();
    }
    sync(&a, &b);
    // Simulate a crash mid-sync: some files new, the dirty mark set, the old commit point.
    let st = Node::new(&b).staging_dir();
    std::fs::write(st.join("etc/ha/f3"), b"half-way new").unwrap();
    std::fs::write(st.join(".ha-sync/dirty"), b"").unwrap();
    std::fs::write(st.join("etc/ha/.f4.ha-sync-tmp.1.1"), b"leftover").unwrap();
    let s = sync(&a, &b);
    assert!(
        !s.primary.up_to_date,
        "a dirty staging must not claim its old root"
    );
    assert_same_tree(&a.join("etc/ha"), &st.join("etc/ha"));
    assert!(!st.join(".ha-sync/dirty").exists());
}
