//! For tests and fuzzing only: a manifest in its wire shape with unchecked string paths, so
//! a test can play a hostile peer that sends what `RelPath` would never let through; and the
//! small builders (entries, a manifest of `/etc`, a file under a root) the tests share.

use crate::manifest::Hash;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct RawItem {
    pub path: String,
    pub dir: bool,
}

/// Same variants, in the same order, as `manifest::Kind`.
#[derive(Debug, Clone, Serialize)]
pub enum RawKind {
    File { size: u64, hash: Hash },
    Dir,
    Symlink { target: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct RawEntry {
    pub path: String,
    pub kind: RawKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
}

impl RawEntry {
    /// An entry owned by root with mtime 1 and the usual mode for its kind.
    pub fn new(path: &str, kind: RawKind) -> RawEntry {
        let mode = match kind {
            RawKind::File { .. } => 0o644,
            RawKind::Dir => 0o755,
            RawKind::Symlink { .. } => 0o777,
        };
        RawEntry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RawManifest {
    pub list: Vec<RawItem>,
    pub excludes: Vec<String>,
    pub entries: Vec<RawEntry>,
}

impl RawManifest {
    /// postcard bytes, as `Manifest::encode` would write them for the same content.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serializes to memory")
    }
}

/// A regular file entry holding `content` (mode 0644, root's, mtime 1).
pub fn file(p: &str, content: &[u8]) -> crate::manifest::Entry {
    crate::manifest::Entry {
        path: crate::path::RelPath::new(p).expect("a valid test path"),
        kind: crate::manifest::Kind::File {
            size: content.len() as u64,
            hash: Hash::of(content),
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 1,
    }
}

/// A directory entry (mode 0755).
pub fn dir(p: &str) -> crate::manifest::Entry {
    crate::manifest::Entry {
        kind: crate::manifest::Kind::Dir,
        mode: 0o755,
        ..file(p, b"")
    }
}

/// A manifest of `entries` whose restore list is the directory `/etc`.
pub fn manifest(entries: Vec<crate::manifest::Entry>) -> crate::manifest::Manifest {
    crate::manifest::Manifest {
        list: vec![crate::manifest::ListItem {
            path: crate::path::RelPath::new("etc").expect("a valid test path"),
            dir: true,
        }],
        excludes: vec![],
        entries,
    }
}

/// Writes `text` at `rel` below `root`, creating the directories on the way.
pub fn write(root: &std::path::Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("a path below the root")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, Kind, ListItem, Manifest};
    use crate::path::RelPath;

    #[test]
    fn raw_and_checked_manifests_encode_alike() {
        let h = Hash::of(b"x");
        let raw = RawManifest {
            list: vec![RawItem {
                path: "etc".into(),
                dir: true,
            }],
            excludes: vec!["/etc/x".into()],
            entries: vec![
                RawEntry::new("etc", RawKind::Dir),
                RawEntry::new("etc/f", RawKind::File { size: 1, hash: h }),
                RawEntry::new("etc/l", RawKind::Symlink { target: "f".into() }),
            ],
        };
        let e = |p: &str, kind, mode| Entry {
            path: RelPath::new(p).unwrap(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
        };
        let m = Manifest {
            list: vec![ListItem {
                path: RelPath::new("etc").unwrap(),
                dir: true,
            }],
            excludes: vec!["/etc/x".into()],
            entries: vec![
                e("etc", Kind::Dir, 0o755),
                e("etc/f", Kind::File { size: 1, hash: h }, 0o644),
                e("etc/l", Kind::Symlink { target: "f".into() }, 0o777),
            ],
        };
        assert_eq!(raw.encode(), m.encode());
    }
}
