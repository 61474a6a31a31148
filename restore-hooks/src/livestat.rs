//! What the restore last verified of each live file: its stat and its content hash.
//!
//! Without it every restore hashes every listed live file to learn whether it already holds
//! the generation's content: O(bytes of the tree) for a one-line edit (issue 13). With it, a
//! live file whose inode, size, mtime and ctime are what the restore saw when it last wrote or
//! hashed it is known to hold that hash, and costs one `lstat`. ctime cannot be set from user
//! space: any write to the file (an admin's edit, a package upgrade) moves it, and the file is
//! hashed again. The cache lives in the state directory (RAM on a router): after a reboot the
//! first restore hashes everything once, as before.
//!
//! Directories are remembered too, by inode, mtime and ctime only: a name created, removed
//! or renamed in a directory moves both, so a mirrored directory whose stat is what the last
//! complete restore left holds no name the restore has to delete, and is not listed again.
//!
//! The file is a plain binary list, rewritten whole at the end of a restore that changed it;
//! a missing, truncated or foreign file is an empty cache, never an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use sync_core::fsx::{self, Durability, FileType, Stat};
use sync_core::manifest::Hash;

/// Name in the state directory.
pub(crate) const FILE: &str = "live-stat";
const MAGIC: &[u8; 8] = b"hslive2\n";
/// More entries than any restore list holds (`limits::MAX_ENTRIES`) means a foreign file.
const MAX_RECORDS: usize = sync_core::limits::MAX_ENTRIES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    hash: Hash,
}

impl Rec {
    fn of(s: &Stat, hash: Hash) -> Rec {
        Rec {
            dev: s.dev,
            ino: s.ino,
            size: s.size,
            mtime_ns: s.mtime_ns,
            ctime_ns: s.ctime_ns,
            hash,
        }
    }

    fn matches(&self, s: &Stat) -> bool {
        s.kind == FileType::File
            && (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)
                == (s.dev, s.ino, s.size, s.mtime_ns, s.ctime_ns)
    }
}

/// A directory as the last complete restore left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirRec {
    dev: u64,
    ino: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl DirRec {
    fn of(s: &Stat) -> DirRec {
        DirRec {
            dev: s.dev,
            ino: s.ino,
            mtime_ns: s.mtime_ns,
            ctime_ns: s.ctime_ns,
        }
    }
}

/// Router path (relative, as in the manifest) -> what was verified.
#[derive(Debug, Default)]
pub(crate) struct LiveStat {
    path: Option<PathBuf>,
    map: HashMap<String, Rec>,
    dirs: HashMap<String, DirRec>,
    dirty: bool,
}

impl LiveStat {
    /// The cache of the node whose state directory is `state_dir`.
    pub(crate) fn load(state_dir: &Path) -> LiveStat {
        let path = state_dir.join(FILE);
        let (map, dirs) = std::fs::read(&path)
            .ok()
            .and_then(|b| decode(&b))
            .unwrap_or_default();
        LiveStat {
            path: Some(path),
            map,
            dirs,
            dirty: false,
        }
    }

    /// An empty cache that is saved over the one of `state_dir`: everything is read and
    /// listed once more (the drift check's thorough pass), and what it finds is remembered.
    pub(crate) fn fresh(state_dir: &Path) -> LiveStat {
        LiveStat {
            path: Some(state_dir.join(FILE)),
            dirty: true,
            ..LiveStat::default()
        }
    }

    /// Whether the directory `rel` (its `lstat` now: `s`) is as the last complete restore
    /// left it.
    pub(crate) fn dir_unchanged(&self, rel: &str, s: &Stat) -> bool {
        s.kind == FileType::Dir && self.dirs.get(rel) == Some(&DirRec::of(s))
    }

    /// The directory `rel` holds no name but the generation's (and what the restore keeps).
    pub(crate) fn record_dir(&mut self, rel: &str, s: &Stat) {
        let r = DirRec::of(s);
        if self.dirs.get(rel) != Some(&r) {
            self.dirs.insert(rel.to_string(), r);
            self.dirty = true;
        }
    }

    /// Forgets every directory: a restore that did not complete may have left a name it
    /// meant to delete.
    pub(crate) fn forget_dirs(&mut self) {
        if !self.dirs.is_empty() {
            self.dirs.clear();
            self.dirty = true;
        }
    }

    /// The hash of the live file `rel`, if `s` (its `lstat` now) is what was verified.
    pub(crate) fn hash(&self, rel: &str, s: &Stat) -> Option<Hash> {
        self.map.get(rel).filter(|r| r.matches(s)).map(|r| r.hash)
    }

    /// `rel`, stat `s`, holds `hash` (just written or just hashed).
    pub(crate) fn record(&mut self, rel: &str, s: &Stat, hash: Hash) {
        let r = Rec::of(s, hash);
        if self.map.get(rel) != Some(&r) {
            self.map.insert(rel.to_string(), r);
            self.dirty = true;
        }
    }

    /// Forgets `rel` (deleted, or replaced by something the cache does not describe).
    pub(crate) fn forget(&mut self, rel: &str) {
        if self.map.remove(rel).is_some() {
            self.dirty = true;
        }
    }

    /// Writes the cache back if it changed. Losing it costs one slow restore, so a failure is
    /// logged, not reported.
    pub(crate) fn save(&mut self) {
        let Some(path) = &self.path else { return };
        if !self.dirty {
            return;
        }
        let bytes = encode(&self.map, &self.dirs);
        if let Err(e) = fsx::write_atomic(path, &bytes, 0o600, Durability::Visible) {
            tracing::warn!(
                "{}: {e}; the next restore hashes every file",
                path.display()
            );
            return;
        }
        self.dirty = false;
    }
}

type Maps = (HashMap<String, Rec>, HashMap<String, DirRec>);

fn encode(map: &HashMap<String, Rec>, dirs: &HashMap<String, DirRec>) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + map.len() * 96 + dirs.len() * 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(map.len() as u64).to_le_bytes());
    let path = |out: &mut Vec<u8>, p: &str| {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p.as_bytes());
    };
    for (p, r) in map {
        path(&mut out, p);
        for v in [r.dev, r.ino, r.size, r.mtime_ns as u64, r.ctime_ns as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&r.hash.0);
    }
    out.extend_from_slice(&(dirs.len() as u64).to_le_bytes());
    for (p, r) in dirs {
        path(&mut out, p);
        for v in [r.dev, r.ino, r.mtime_ns as u64, r.ctime_ns as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

fn decode(b: &[u8]) -> Option<Maps> {
    let mut r = Reader(b.strip_prefix(MAGIC.as_slice())?);
    let n = usize::try_from(r.u64()?).ok()?;
    if n > MAX_RECORDS {
        return None;
    }
    let mut map = HashMap::with_capacity(n);
    for _ in 0..n {
        let p = r.path()?;
        let (dev, ino, size, mtime, ctime) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let hash = Hash(r.take(32)?.try_into().ok()?);
        map.insert(
            p,
            Rec {
                dev,
                ino,
                size,
                mtime_ns: mtime as i64,
                ctime_ns: ctime as i64,
                hash,
            },
        );
    }
    let n = usize::try_from(r.u64()?).ok()?;
    if n > MAX_RECORDS {
        return None;
    }
    let mut dirs = HashMap::with_capacity(n);
    for _ in 0..n {
        let p = r.path()?;
        let (dev, ino, mtime, ctime) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        dirs.insert(
            p,
            DirRec {
                dev,
                ino,
                mtime_ns: mtime as i64,
                ctime_ns: ctime as i64,
            },
        );
    }
    r.0.is_empty().then_some((map, dirs))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn path(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        Some(std::str::from_utf8(self.take(len)?).ok()?.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(ino: u64, ctime_ns: i64) -> Stat {
        Stat {
            kind: FileType::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 5,
            mtime_ns: 1,
            ctime_ns,
            dev: 7,
            ino,
        }
    }

    #[test]
    fn a_record_survives_a_save_and_matches_only_the_same_stat() {
        let d = tempfile::tempdir().unwrap();
        let mut c = LiveStat::load(d.path());
        c.record("etc/config/firewall", &stat(3, 10), Hash([9; 32]));
        c.save();
        let c = LiveStat::load(d.path());
        assert_eq!(
            c.hash("etc/config/firewall", &stat(3, 10)),
            Some(Hash([9; 32]))
        );
        // Written since (ctime moved), or another inode (renamed over): hashed again.
        assert_eq!(c.hash("etc/config/firewall", &stat(3, 11)), None);
        assert_eq!(c.hash("etc/config/firewall", &stat(4, 10)), None);
        assert_eq!(c.hash("etc/config/network", &stat(3, 10)), None);
    }

    #[test]
    fn a_directory_record_survives_a_save_and_matches_only_the_same_stat() {
        let d = tempfile::tempdir().unwrap();
        let dir = |ino, ctime_ns| Stat {
            kind: FileType::Dir,
            ..stat(ino, ctime_ns)
        };
        let mut c = LiveStat::load(d.path());
        c.record("a", &stat(1, 1), Hash([1; 32]));
        c.record_dir("etc/config", &dir(5, 20));
        c.save();
        let mut c = LiveStat::load(d.path());
        assert!(c.dir_unchanged("etc/config", &dir(5, 20)));
        // A name created or removed in it moved its ctime; a file is not a directory.
        assert!(!c.dir_unchanged("etc/config", &dir(5, 21)));
        assert!(!c.dir_unchanged("etc/config", &stat(5, 20)));
        assert_eq!(c.hash("a", &stat(1, 1)), Some(Hash([1; 32])));
        c.forget_dirs();
        c.save();
        assert!(!LiveStat::load(d.path()).dir_unchanged("etc/config", &dir(5, 20)));
        // The thorough pass starts empty and replaces the saved cache.
        let mut f = LiveStat::fresh(d.path());
        assert_eq!(f.hash("a", &stat(1, 1)), None);
        f.save();
        assert_eq!(LiveStat::load(d.path()).hash("a", &stat(1, 1)), None);
    }

    #[test]
    fn a_torn_or_foreign_file_is_an_empty_cache() {
        let d = tempfile::tempdir().unwrap();
        let mut c = LiveStat::load(d.path());
        c.record("a", &stat(1, 1), Hash([1; 32]));
        c.save();
        let full = std::fs::read(d.path().join(FILE)).unwrap();
        std::fs::write(d.path().join(FILE), &full[..full.len() - 1]).unwrap();
        assert_eq!(LiveStat::load(d.path()).hash("a", &stat(1, 1)), None);
        std::fs::write(d.path().join(FILE), b"something else").unwrap();
        assert_eq!(LiveStat::load(d.path()).hash("a", &stat(1, 1)), None);
    }
}
