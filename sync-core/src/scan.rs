//! Scan: the restore list walked into a manifest, reading only what changed.
//!
//! Each listed path is `lstat`ed; listed directories are walked, never following a
//! symlink, on a few threads sharing a queue of directories (a scan is mostly `stat` calls:
//! they run in parallel, relative to each directory's descriptor; this replaced walkdir,
//! which stats by full path on one thread, for a third less time on 9,000 entries). A regular file is hashed with blake3 unless the stat cache holds the same
//! (dev, inode, size, mtime, ctime) for it, in which case its cached hash is used and the
//! file is not read at all. The cache lives under `var/run/ha-sync/` (RAM on a router): lost
//! or corrupt, it is rebuilt, never an error. FIFOs, sockets and devices are skipped with a
//! warning: they are not configuration.

use crate::manifest::{Entry, Hash, Kind, ListItem, Manifest};
use crate::path::{PathError, RelPath};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {msg}")]
    Bad { path: PathBuf, msg: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ScanError + '_ {
    move |source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct CacheKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

/// Hashes of files by their last stat, so an unchanged file is never read again.
///
/// The daemon keeps it for its whole life: a table sorted by path, exactly the size of its
/// entries (88 bytes and the path each). A hash map of the same 2,000 files reserves 4,096
/// slots of 96 bytes; a lookup here is a binary search, next to the `lstat` it saves a read.
#[derive(Debug, Default)]
pub struct StatCache {
    /// Sorted by path, no path twice.
    entries: Vec<(Box<str>, CacheKey, Hash)>,
    dirty: bool,
}

const CACHE_MAGIC: &[u8; 8] = b"HSSCACH1";

impl StatCache {
    /// Loads `path`; anything missing or damaged gives an empty cache (with a note in the log).
    pub fn load(path: &Path) -> StatCache {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return StatCache::default(),
            Err(e) => {
                tracing::warn!("stat cache {}: {e}; rebuilding", path.display());
                return StatCache::default();
            }
        };
        match Self::decode(&bytes) {
            Some(entries) => StatCache {
                entries,
                dirty: false,
            },
            None => {
                tracing::warn!("stat cache {} is corrupt; rebuilding", path.display());
                StatCache {
                    entries: Vec::new(),
                    dirty: true,
                }
            }
        }
    }

    fn decode(bytes: &[u8]) -> Option<Vec<(Box<str>, CacheKey, Hash)>> {
        let body = bytes.strip_prefix(CACHE_MAGIC.as_slice())?;
        if body.len() < 32 {
            return None;
        }
        let (data, sum) = body.split_at(body.len() - 32);
        if blake3::hash(data).as_bytes() != sum {
            return None;
        }
        let mut v: Vec<(Box<str>, CacheKey, Hash)> = postcard::from_bytes(data).ok()?;
        // Written sorted and unique; a file from elsewhere is made so.
        if !v.windows(2).all(|w| w[0].0 < w[1].0) {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v.dedup_by(|a, b| a.0 == b.0);
        }
        Some(v)
    }

    fn get(&self, path: &str) -> Option<(&CacheKey, &Hash)> {
        let i = self.entries.binary_search_by(|e| (*e.0).cmp(path)).ok()?;
        let e = &self.entries[i];
        Some((&e.1, &e.2))
    }

    /// Adds or replaces what a scan learnt.
    fn insert_all(&mut self, inserts: Vec<(String, CacheKey, Hash)>) {
        if inserts.is_empty() {
            return;
        }
        let mut new = Vec::new();
        for (p, k, h) in inserts {
            match self.entries.binary_search_by(|e| (*e.0).cmp(p.as_str())) {
                Ok(i) => {
                    let e = &mut self.entries[i];
                    (e.1, e.2) = (k, h);
                }
                Err(_) => new.push((p.into_boxed_str(), k, h)),
            }
        }
        if !new.is_empty() {
            self.entries.extend(new);
            // Stable: of a path scanned twice (listed twice), the first is kept.
            self.entries.sort_by(|a, b| a.0.cmp(&b.0));
            self.entries.dedup_by(|a, b| a.0 == b.0);
            self.entries.shrink_to_fit();
        }
        self.dirty = true;
    }

    /// Writes the cache if it changed (temp file + rename; no fsync: it is rebuildable).
    pub fn save(&mut self, path: &Path) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        // Sorted by path, as the format always was.
        let data = postcard::to_allocvec(&self.entries).map_err(io::Error::other)?;
        let mut out = CACHE_MAGIC.to_vec();
        out.extend_from_slice(&data);
        out.extend_from_slice(blake3::hash(&data).as_bytes());
        crate::fsx::write_atomic(path, &out, 0o600, crate::fsx::Durability::Visible)?;
        self.dirty = false;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub entries: u64,
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    pub cache_hits: u64,
    pub skipped: u64,
}

/// Everything a scan needs besides the list.
pub struct Scanner<'a> {
    pub root: &'a Path,
    /// Router path (`/etc/x`) -> excluded? Applied inside listed directories.
    pub is_excluded: &'a (dyn Fn(&str) -> bool + Sync),
    pub cache: &'a mut StatCache,
}

/// Files changed this recently are not cached: a second write in the same (coarse, a few
/// ms) kernel timestamp tick could otherwise hide behind an unchanged stat (git's "racy
/// clean" problem). ctime counts too: it catches a write whose mtime was set back.
const RACY_NS: i64 = 100_000_000;

impl Scanner<'_> {
    pub fn scan(
        &mut self,
        list: &[ListItem],
        excludes: &[String],
    ) -> Result<(Manifest, ScanStats), ScanError> {
        let mut stats = ScanStats::default();
        let mut entries = Vec::new();
        let started = crate::clock::now_ns();
        let mut inserts = Vec::new();
        for item in list {
            let full = self.root.join(item.path.as_str());
            let md = match std::fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&full)(e)),
            };
            if let Some(e) = self.entry(&full, &md, started, &mut stats, &mut inserts)? {
                entries.push(e);
            }
            if md.is_dir() {
                self.walk(&full, started, &mut entries, &mut stats, &mut inserts)?;
            }
        }
        self.cache.insert_all(inserts);
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        // A path listed twice (a file also below a listed directory) is one entry.
        entries.dedup_by(|a, b| a.path == b.path);
        // The daemon keeps the manifest between syncs: no spare room from the merge.
        entries.shrink_to_fit();
        stats.entries = entries.len() as u64;
        let m = Manifest {
            list: list.to_vec(),
            excludes: excludes.to_vec(),
            entries,
        };
        Ok((m, stats))
    }

    /// Walks below `top` on a few threads sharing a queue of directories: the scan is
    /// mostly `stat` calls, and those run in parallel. Each entry is `lstat`ed relative to
    /// its directory's descriptor (std's `DirEntry::metadata`); symlinks are never followed.
    fn walk(
        &self,
        top: &Path,
        started: i64,
        entries: &mut Vec<Entry>,
        stats: &mut ScanStats,
        inserts: &mut Vec<(String, CacheKey, Hash)>,
    ) -> Result<(), ScanError> {
        use std::sync::{Condvar, Mutex};
        struct Queue {
            dirs: Vec<PathBuf>,
            busy: usize,
            failed: bool,
        }
        let q = Mutex::new(Queue {
            dirs: vec![top.to_path_buf()],
            busy: 0,
            failed: false,
        });
        let cv = Condvar::new();
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 4);
        type Out = (Vec<Entry>, ScanStats, Vec<(String, CacheKey, Hash)>);
        let results: Vec<Result<Out, ScanError>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let (mut out, mut st, mut ins) =
                            (Vec::new(), ScanStats::default(), Vec::new());
                        loop {
                            let dir = {
                                let mut g = q.lock().expect("scan queue");
                                loop {
                                    if g.failed {
                                        return Ok((out, st, ins));
                                    }
                                    if let Some(d) = g.dirs.pop() {
                                        g.busy += 1;
                                        break d;
                                    }
                                    if g.busy == 0 {
                                        return Ok((out, st, ins));
                                    }
                                    g = cv.wait(g).expect("scan queue");
                                }
                            };
                            let res = self.read_one(&dir, started, &mut out, &mut st, &mut ins);
                            let mut g = q.lock().expect("scan queue");
                            g.busy -= 1;
                            match res {
                                Ok(subdirs) => g.dirs.extend(subdirs),
                                Err(e) => {
                                    g.failed = true;
                                    cv.notify_all();
                                    return Err(e);
                                }
                            }
                            cv.notify_all();
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("scan worker panicked"))
                .collect()
        });
        for r in results {
            let (e, st, ins) = r?;
            entries.extend(e);
            stats.files_hashed += st.files_hashed;
            stats.bytes_hashed += st.bytes_hashed;
            stats.cache_hits += st.cache_hits;
            stats.skipped += st.skipped;
            inserts.extend(ins);
        }
        Ok(())
    }

    /// One directory: its entries, and the subdirectories still to walk.
    fn read_one(
        &self,
        dir: &Path,
        started: i64,
        out: &mut Vec<Entry>,
        stats: &mut ScanStats,
        inserts: &mut Vec<(String, CacheKey, Hash)>,
    ) -> Result<Vec<PathBuf>, ScanError> {
        let mut subdirs = Vec::new();
        for de in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let de = de.map_err(io_err(dir))?;
            let full = de.path();
            if abs_of(self.root, &full).is_some_and(|a| (self.is_excluded)(a)) {
                continue;
            }
            let md = match de.metadata() {
                Ok(m) => m,
                // Gone since readdir: it is not part of this scan.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&full)(e)),
            };
            if let Some(e) = self.entry(&full, &md, started, stats, inserts)? {
                if matches!(e.kind, Kind::Dir) {
                    subdirs.push(full);
                }
                out.push(e);
            }
        }
        Ok(subdirs)
    }

    fn entry(
        &self,
        full: &Path,
        md: &std::fs::Metadata,
        started: i64,
        stats: &mut ScanStats,
        inserts: &mut Vec<(String, CacheKey, Hash)>,
    ) -> Result<Option<Entry>, ScanError> {
        let Some(rel) = rel_of(self.root, full) else {
            tracing::warn!("{}: name is not UTF-8, skipped", full.display());
            stats.skipped += 1;
            return Ok(None);
        };
        let path = match RelPath::new(rel) {
            Ok(p) => p,
            // Past the bounds a backup accepts (`limits`): sending it would fail the whole
            // sync there; leaving it out fails only this entry.
            Err(
                e @ (PathError::TooLong(_) | PathError::TooDeep(_) | PathError::NameTooLong(_)),
            ) => {
                tracing::warn!("{}: {e}; skipped", full.display());
                stats.skipped += 1;
                return Ok(None);
            }
            Err(e) => {
                return Err(ScanError::Bad {
                    path: full.to_path_buf(),
                    msg: e.to_string(),
                })
            }
        };
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            let t = std::fs::read_link(full).map_err(io_err(full))?;
            let Some(target) = t.to_str() else {
                tracing::warn!("{}: symlink target is not UTF-8, skipped", full.display());
                stats.skipped += 1;
                return Ok(None);
            };
            Kind::Symlink {
                target: target.to_string(),
            }
        } else if ft.is_file() {
            let key = CacheKey {
                dev: md.dev(),
                ino: md.ino(),
                size: md.size(),
                mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
            };
            let hash = match self.cache.get(path.as_str()) {
                Some((k, h)) if *k == key => {
                    stats.cache_hits += 1;
                    *h
                }
                _ => {
                    let h = hash_file(full)?;
                    stats.files_hashed += 1;
                    stats.bytes_hashed += md.size();
                    if key.mtime_ns.max(key.ctime_ns) < started - RACY_NS {
                        inserts.push((path.as_str().to_string(), key, h));
                    }
                    h
                }
            };
            Kind::File {
                size: md.size(),
                hash,
            }
        } else {
            let what = if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "a device"
            };
            tracing::warn!("{}: is {what}, skipped", full.display());
            stats.skipped += 1;
            return Ok(None);
        };
        Ok(Some(Entry {
            path,
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        }))
    }
}

/// `full` (a path below `root`) as a router path, `/etc/x`; `None` when it is not UTF-8.
/// Bytes, not `Path::strip_prefix`: that walks components, and was a fifth of a no-change
/// scan's instructions.
fn abs_of<'a>(root: &Path, full: &'a Path) -> Option<&'a str> {
    let r = root.as_os_str().as_bytes();
    let r = r.strip_suffix(b"/").unwrap_or(r);
    let rest = full.as_os_str().as_bytes().strip_prefix(r)?;
    if !(rest.is_empty() || rest.starts_with(b"/")) {
        return None;
    }
    std::str::from_utf8(rest).ok()
}

fn rel_of(root: &Path, full: &Path) -> Option<String> {
    abs_of(root, full).map(|a| a.trim_start_matches('/').to_string())
}

/// blake3 of a file, never through a symlink.
pub(crate) fn hash_file(path: &Path) -> Result<Hash, ScanError> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path))?;
    let mut h = blake3::Hasher::new();
    h.update_reader(f).map_err(io_err(path))?;
    Ok(Hash(*h.finalize().as_bytes()))
}

/// Opens a file the manifest lists for streaming, never through a symlink.
pub(crate) fn open_file(path: &Path) -> Result<File, ScanError> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err(path))?;
    // A FIFO swapped in since the scan saw a file must not hold the sync in read().
    crate::fsx::only_files_and_dirs(&f).map_err(io_err(path))?;
    Ok(f)
}

/// Reads a file the manifest lists, never through a symlink, at most `limit` bytes.
pub(crate) fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>, ScanError> {
    use std::io::Read;
    let f = open_file(path)?;
    // Sized from the inode: read_to_end's doubling would otherwise reserve up to twice it.
    let hint = f.metadata().map_or(0, |m| m.len()).min(limit) as usize;
    let mut buf = Vec::with_capacity(hint + 1);
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > limit {
        return Err(ScanError::Bad {
            path: path.to_path_buf(),
            msg: format!("larger than {limit} bytes"),
        });
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn item(p: &str, dir: bool) -> ListItem {
        ListItem {
            path: RelPath::new(p).unwrap(),
            dir,
        }
    }

    fn old(path: &Path) {
        let t = filetime::FileTime::from_unix_time(1_600_000_000, 5);
        filetime::set_symlink_file_times(path, t, t).unwrap();
    }

    #[test]
    fn scans_files_dirs_symlinks_and_skips_fifos_and_excludes() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc/ha/sub")).unwrap();
        std::fs::write(r.join("etc/ha/a"), b"aaa").unwrap();
        std::fs::set_permissions(r.join("etc/ha/a"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(r.join("etc/ha/skip.tmp"), b"x").unwrap();
        std::fs::write(r.join("etc/ha/sub/b c"), b"bbb").unwrap();
        std::os::unix::fs::symlink("../x", r.join("etc/ha/link")).unwrap();
        let fifo = std::ffi::CString::new(r.join("etc/ha/fifo").to_str().unwrap()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::write(r.join("etc/single"), b"s").unwrap();
        let mut cache = StatCache::default();
        let excl = |p: &str| p.ends_with(".tmp");
        let mut s = Scanner {
            root: r,
            is_excluded: &excl,
            cache: &mut cache,
        };
        let (m, stats) = s
            .scan(
                &[
                    item("etc/ha", true),
                    item("etc/single", false),
                    item("etc/missing", false),
                ],
                &[],
            )
            .unwrap();
        let paths: Vec<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "etc/ha",
                "etc/ha/a",
                "etc/ha/link",
                "etc/ha/sub",
                "etc/ha/sub/b c",
                "etc/single"
            ]
        );
        assert_eq!(
            m.get(&RelPath::new("etc/ha/a").unwrap()).unwrap().mode,
            0o600
        );
        assert_eq!(
            m.get(&RelPath::new("etc/ha/link").unwrap()).unwrap().kind,
            Kind::Symlink {
                target: "../x".into()
            }
        );
        assert_eq!(
            m.get(&RelPath::new("etc/single").unwrap())
                .unwrap()
                .file_hash(),
            Some(Hash::of(b"s"))
        );
        assert_eq!(stats.skipped, 1);
        m.validate().unwrap();
    }

    #[test]
    fn warm_cache_reads_nothing_and_sees_changes() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        for i in 0..5 {
            std::fs::write(r.join(format!("etc/f{i}")), vec![i as u8; 1000]).unwrap();
            old(&r.join(format!("etc/f{i}")));
        }
        // Out of the racy window, so the first scan may cache them.
        std::thread::sleep(std::time::Duration::from_millis(150));
        let cache_path = r.join("var/run/ha-sync/statcache");
        let no = |_: &str| false;
        let list = [item("etc", true)];
        let mut cache = StatCache::load(&cache_path);
        let (m1, s1) = Scanner {
            root: r,
            is_excluded: &no,
            cache: &mut cache,
        }
        .scan(&list, &[])
        .unwrap();
        assert_eq!((s1.files_hashed, s1.bytes_hashed), (5, 5000));
        cache.save(&cache_path).unwrap();

        let mut cache = StatCache::load(&cache_path);
        let (m2, s2) = Scanner {
            root: r,
            is_excluded: &no,
            cache: &mut cache,
        }
        .scan(&list, &[])
        .unwrap();
        assert_eq!((s2.files_hashed, s2.bytes_hashed, s2.cache_hits), (0, 0, 5));
        assert_eq!(m1.root_hash(), m2.root_hash());

        std::fs::write(r.join("etc/f2"), b"changed").unwrap();
        let (m3, s3) = Scanner {
            root: r,
            is_excluded: &no,
            cache: &mut cache,
        }
        .scan(&list, &[])
        .unwrap();
        assert_eq!(s3.files_hashed, 1);
        assert_eq!(
            m3.get(&RelPath::new("etc/f2").unwrap())
                .unwrap()
                .file_hash(),
            Some(Hash::of(b"changed"))
        );
    }

    #[test]
    fn corrupt_cache_is_rebuilt_not_an_error() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("statcache");
        std::fs::write(
            &p,
            b"HSSCACH1 garbage that is not a cache at all, and long enough to split",
        )
        .unwrap();
        assert!(StatCache::load(&p).is_empty());
        assert!(StatCache::load(&t.path().join("missing")).is_empty());
    }

    #[test]
    fn router_paths_are_cut_from_any_root_spelling() {
        let full = Path::new("/tmp/A/etc/config");
        for root in ["/tmp/A", "/tmp/A/"] {
            assert_eq!(abs_of(Path::new(root), full), Some("/etc/config"));
            assert_eq!(rel_of(Path::new(root), full).as_deref(), Some("etc/config"));
        }
        assert_eq!(abs_of(Path::new("/"), Path::new("/etc/x")), Some("/etc/x"));
        // A sibling that shares the root's bytes is not below it.
        assert_eq!(abs_of(Path::new("/tmp/A"), Path::new("/tmp/AB/etc")), None);
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/r/etc/\xff"));
        assert_eq!(abs_of(Path::new("/r"), bad), None);
    }

    #[test]
    fn cache_table_stays_sorted_unique_and_round_trips() {
        let key = |n: u64| CacheKey {
            dev: 1,
            ino: n,
            size: n,
            mtime_ns: 0,
            ctime_ns: 0,
        };
        let ins = |v: &[(&str, u64)]| -> Vec<(String, CacheKey, Hash)> {
            v.iter()
                .map(|(p, n)| (p.to_string(), key(*n), Hash::of(&n.to_le_bytes())))
                .collect()
        };
        let mut c = StatCache::default();
        c.insert_all(ins(&[("etc/b", 1), ("etc/a", 2), ("etc/b", 3)]));
        assert_eq!(c.len(), 2);
        // Of a path scanned twice in one scan, the first stands.
        assert_eq!(c.get("etc/b").map(|(k, _)| k.ino), Some(1));
        c.insert_all(ins(&[("etc/b", 4), ("etc/0", 5), ("etc/c", 6)]));
        assert_eq!(c.len(), 4);
        assert_eq!(c.get("etc/b").map(|(k, _)| k.ino), Some(4));
        assert_eq!(c.get("etc/a").map(|(k, _)| k.ino), Some(2));
        assert!(c.get("etc/zz").is_none());
        assert!(c.entries.windows(2).all(|w| w[0].0 < w[1].0));

        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("statcache");
        c.save(&p).unwrap();
        let back = StatCache::load(&p);
        assert_eq!(back.entries, c.entries);
    }
}
