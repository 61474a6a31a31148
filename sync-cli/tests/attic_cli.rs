//! `ha-sync attic` as an admin runs it: list what restores replaced, put one version back.

use std::path::Path;
use std::process::Command;
use sync_core::attic::{Attic, Reason};
use sync_core::fsx::Dir;
use sync_core::node::Node;
use sync_core::path::RelPath;

const HA_SYNC: &str = env!("CARGO_BIN_EXE_ha-sync");

fn ha_sync(root: &Path, args: &[&str]) -> String {
    let out = Command::new(HA_SYNC)
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .expect("run ha-sync");
    assert!(
        out.status.success(),
        "ha-sync {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn lists_and_restores_kept_versions() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let node = Node::new(root);
    assert!(ha_sync(root, &["attic"]).contains("the attic is empty"));

    let cfg = root.join("etc/config");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("firewall"), "the admin's rules\n").unwrap();
    let d = Dir::open(&cfg, false).unwrap();
    let fw = RelPath::new("etc/config/firewall").unwrap();
    Attic::new(&node)
        .keep(&fw, &d, "firewall", "c0ffee00aa", Reason::Restore)
        .unwrap();
    std::fs::write(cfg.join("firewall"), "the primary's rules\n").unwrap();

    let text = ha_sync(root, &["attic"]);
    assert!(
        text.contains("/etc/config/firewall")
            && text.contains("c0ffee00aa")
            && text.contains("restore"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ha_sync(root, &["attic", "/etc/config/firewall", "--json"])).unwrap();
    assert_eq!(json[0]["path"], "etc/config/firewall");
    assert_eq!(json[0]["kind"], "file");

    let out = Command::new(HA_SYNC)
        .args([
            "attic",
            "restore",
            "/etc/config/firewall",
            "c0ffee",
            "--root",
        ])
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(cfg.join("firewall")).unwrap(),
        "the admin's rules\n"
    );
    // The primary's version it replaced is in the attic now.
    let all = Attic::new(&node).list(Some(&fw)).unwrap();
    assert_eq!(all.len(), 2);

    // A generation that replaced nothing: a clear error naming the path.
    let out = Command::new(HA_SYNC)
        .args(["attic", "restore", "/etc/config/firewall", "ffff", "--root"])
        .arg(root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/etc/config/firewall") && err.contains("ffff"),
        "{err}"
    );
}
