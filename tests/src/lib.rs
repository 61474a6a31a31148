//! Shared helpers for the end-to-end tests: tree snapshots and comparison.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Everything a sync must carry for one path: kind, mode, owner, mtime, content or target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub content: Vec<u8>,
}

/// A tree as a sorted map of relative path -> node (the top directory itself is "").
pub fn snapshot(dir: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    if dir.symlink_metadata().is_err() {
        return out;
    }
    for e in walkdir::WalkDir::new(dir).follow_links(false) {
        let e = e.expect("walk");
        let md = e.path().symlink_metadata().expect("lstat");
        let rel = e
            .path()
            .strip_prefix(dir)
            .expect("below")
            .to_string_lossy()
            .into_owned();
        let (kind, content) = if md.is_dir() {
            ("dir", Vec::new())
        } else if md.file_type().is_symlink() {
            (
                "symlink",
                std::fs::read_link(e.path())
                    .expect("readlink")
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else {
            ("file", std::fs::read(e.path()).expect("read"))
        };
        let node = Node {
            kind,
            // Linux has no symlink modes; their owner and mtime still count.
            mode: if kind == "symlink" {
                0
            } else {
                md.mode() & 0o7777
            },
            uid: md.uid(),
            gid: md.gid(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            content,
        };
        out.insert(rel, node);
    }
    out
}

/// Panics with the first difference between two trees (content and metadata). The mtime
/// of the top directory is not compared: it is the parent of the synced entries, not one.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (mut sa, mut sb) = (snapshot(a), snapshot(b));
    for s in [&mut sa, &mut sb] {
        if let Some(top) = s.get_mut("") {
            top.mtime_ns = 0;
        }
    }
    let keys_a: Vec<&String> = sa.keys().collect();
    let keys_b: Vec<&String> = sb.keys().collect();
    assert_eq!(
        keys_a,
        keys_b,
        "paths differ between {} and {}",
        a.display(),
        b.display()
    );
    for (k, na) in &sa {
        let nb = &sb[k];
        assert_eq!(na.kind, nb.kind, "{k}: kind");
        assert!(na.content == nb.content, "{k}: content differs");
        assert_eq!(
            (na.mode, na.uid, na.gid),
            (nb.mode, nb.uid, nb.gid),
            "{k}: mode/owner"
        );
        assert_eq!(na.mtime_ns, nb.mtime_ns, "{k}: mtime");
    }
}

/// A primary root whose restore list is the directories `dirs` (sync_list) plus `files`
/// (sysupgrade.conf), with `excludes`.
pub fn router_root(root: &Path, dirs: &[&str], files: &[&str], excludes: &[&str]) {
    let mut k = String::from("config peer 'ha_peer'\n");
    for d in dirs {
        k.push_str(&format!("\tlist sync_list '{d}'\n"));
    }
    for x in excludes {
        k.push_str(&format!("\tlist exclude_list '{x}'\n"));
    }
    std::fs::create_dir_all(root.join("etc/config")).expect("mkdir");
    std::fs::write(root.join("etc/config/keepalived"), k).expect("write keepalived");
    let s: String = files.iter().map(|f| format!("{f}\n")).collect();
    std::fs::write(root.join("etc/sysupgrade.conf"), s).expect("write sysupgrade.conf");
}

pub mod cluster;

/// The `ha-sync` binary of this build. Cargo sets `CARGO_BIN_EXE_*` only in the binary's
/// own package, and `cargo test --workspace` does not build `target/<profile>/ha-sync`: it is
/// built here with `cargo build -p sync-cli` into this test's target directory and profile
/// (a no-op when it is up to date). `HA_SYNC_BIN` names another binary.
pub fn ha_sync_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("HA_SYNC_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable");
    // <target>/<profile>/deps/failover-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    let target = profile_dir.parent().expect("target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(p) => p,
    };
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(&cargo);
    // Without the variables cargo set for this test (some build scripts, ring's, watch
    // CARGO_MANIFEST_DIR and CARGO_PKG_*): else each run rebuilds them, and so does the next
    // `cargo test`.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k == "OUT_DIR"
            || [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_",
                "CARGO_CFG_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        {
            cmd.env_remove(&*k);
        }
    }
    let out = cmd
        .args([
            "build",
            "-p",
            "sync-cli",
            "--bin",
            "ha-sync",
            "--profile",
            profile,
        ])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&cargo).display()));
    assert!(
        out.status.success(),
        "cargo build -p sync-cli failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir.join("ha-sync")
}
