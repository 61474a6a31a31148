use super::*;
use std::os::unix::fs::{symlink, PermissionsExt};

fn rel(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn live(root: &Path, file: &str, text: &str) -> Dir {
    let p = root.join(file);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    Dir::open(p.parent().unwrap(), false).unwrap()
}

#[test]
fn keeps_files_and_symlinks_with_their_metadata_and_lists_them() {
    let t = tempfile::tempdir().unwrap();
    let attic = Attic::at(t.path().join("attic"), 20, 1 << 20);
    let d = live(t.path(), "root/etc/config/firewall", "old rules\n");
    std::fs::set_permissions(
        t.path().join("root/etc/config/firewall"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let k = attic
        .keep(
            &rel("etc/config/firewall"),
            &d,
            "firewall",
            "aa11",
            Reason::Restore,
        )
        .unwrap()
        .expect("a file is kept");
    assert_eq!(k.kind, KeptKind::File { size: 10 });
    assert_eq!(k.mode & 0o7777, 0o640);
    symlink("firewall", t.path().join("root/etc/config/link")).unwrap();
    attic
        .keep(&rel("etc/config/link"), &d, "link", "aa11", Reason::Restore)
        .unwrap();
    // Nothing there, or a directory: nothing kept.
    assert!(attic
        .keep(&rel("etc/config/none"), &d, "none", "aa11", Reason::Restore)
        .unwrap()
        .is_none());
    let all = attic.list(None).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[1].kind,
        KeptKind::Symlink {
            target: "firewall".into()
        }
    );
    assert_eq!(attic.list(Some(&rel("etc/config/firewall"))).unwrap(), [k]);
}

#[test]
fn a_kept_version_goes_back_and_what_it_replaces_is_kept() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let node = Node::new(&root);
    let attic = Attic::new(&node);
    let d = live(&root, "etc/config/dhcp", "mine\n");
    attic
        .keep(&rel("etc/config/dhcp"), &d, "dhcp", "gen1", Reason::Restore)
        .unwrap();
    std::fs::write(root.join("etc/config/dhcp"), "primary's\n").unwrap();
    let back = attic
        .restore(&node, &rel("etc/config/dhcp"), Some("gen"))
        .unwrap();
    assert_eq!(back.generation, "gen1");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/config/dhcp")).unwrap(),
        "mine\n"
    );
    let all = attic.list(Some(&rel("etc/config/dhcp"))).unwrap();
    assert_eq!(all.len(), 2, "the primary's version was kept too: {all:?}");
    assert_eq!(all[1].reason, Reason::Manual);
    let e = attic
        .restore(&node, &rel("etc/config/dhcp"), Some("nope"))
        .unwrap_err();
    assert!(e.to_string().contains("/etc/config/dhcp"), "{e}");
}

#[test]
fn bounded_by_generations_and_bytes_oldest_first() {
    let t = tempfile::tempdir().unwrap();
    let attic = Attic::at(t.path().join("attic"), 3, 100);
    let d = live(t.path(), "root/etc/a", "");
    for g in 0..6 {
        std::fs::write(t.path().join("root/etc/a"), format!("version {g}\n")).unwrap();
        attic
            .keep(&rel("etc/a"), &d, "a", &format!("gen{g}"), Reason::Restore)
            .unwrap();
    }
    let gens: Vec<String> = attic
        .list(None)
        .unwrap()
        .into_iter()
        .map(|k| k.generation)
        .collect();
    assert_eq!(gens, ["gen3", "gen4", "gen5"]);
    // Copies of pruned versions are gone from disk too.
    let files = std::fs::read_dir(t.path().join("attic/v")).unwrap().count();
    assert_eq!(files, 3);
    // Bytes: 60-byte versions, 100 bytes allowed: only the newest stays.
    let big = "x".repeat(59) + "\n";
    for g in 6..8 {
        std::fs::write(t.path().join("root/etc/a"), &big).unwrap();
        attic
            .keep(&rel("etc/a"), &d, "a", &format!("gen{g}"), Reason::Restore)
            .unwrap();
    }
    let left = attic.list(None).unwrap();
    assert_eq!(left.last().unwrap().generation, "gen7");
    assert!(left.iter().map(Kept::bytes).sum::<u64>() <= 100, "{left:?}");
    // One version larger than the whole attic is refused, naming it.
    std::fs::write(t.path().join("root/etc/a"), "y".repeat(200)).unwrap();
    let e = attic
        .keep(&rel("etc/a"), &d, "a", "gen9", Reason::Restore)
        .unwrap_err();
    assert!(e.to_string().contains("/etc/a"), "{e}");
}

#[test]
fn a_torn_index_line_is_ignored() {
    let t = tempfile::tempdir().unwrap();
    let attic = Attic::at(t.path().join("attic"), 20, 1 << 20);
    let d = live(t.path(), "root/etc/a", "one\n");
    attic
        .keep(&rel("etc/a"), &d, "a", "g1", Reason::Restore)
        .unwrap();
    let idx = t.path().join("attic/index");
    let mut text = std::fs::read(&idx).unwrap();
    text.extend_from_slice(b"{\"seq\":2,\"path\":\"etc/a\",\"gen");
    std::fs::write(&idx, text).unwrap();
    assert_eq!(attic.list(None).unwrap().len(), 1);
}
