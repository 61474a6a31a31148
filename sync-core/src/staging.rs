//! The staging tree: apply what the primary sends, the commit point, and the layout of the
//! agent's own state beside it.
//!
//! The staging tree (`<root>/usr/share/keepalived/rsync/` by default) mirrors router paths:
//! `/etc/config/firewall` is staged at `<staging>/etc/config/firewall`. ha-sync's own state
//! sits in `<staging>/.ha-sync/` (a name `RelPath` refuses from a peer), and only this module
//! names its files ([`layout`]); the restore asks it for them:
//! - `manifest`: the committed manifest. It and `tmp/restore_list` are written last, each
//!   atomically: together they are the commit point. `root`: its root hash, read at open.
//! - `restored`, `restore-journal`: the restore's (see `restore_hooks::journal`), on the same
//!   filesystem as the tree they refer to.
//! - `dirty`: exists from the first change of a sync until its commit. While it exists the
//!   committed manifest is not trusted: the tree may hold a mix of old and new files (each
//!   whole: every file is written by temp file + fsync + rename), so the next sync rescans
//!   staging and converges from what is really there. Files are written without a fsync
//!   each; one `syncfs` before the commit point makes them all durable at once.
//!
//! Every write goes through `fsx::Dir`, which never follows a symlink: a hostile manifest
//! that stages `etc -> /` and then `etc/passwd` fails at the second step.

use crate::fsx::{self, Dir, FileType, Meta};
use crate::manifest::{Entry, Hash, Kind, ListItem, Manifest, Op};
use crate::path::RelPath;
use crate::scan::{ScanError, Scanner, StatCache};
use layout::{DIRTY, MANIFEST, ROOT, STATE};
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The incumbent's restore list inside staging.
pub const RESTORE_LIST: &str = "tmp/restore_list";

/// The files of `<staging>/.ha-sync/`.
pub mod layout {
    /// The state directory inside staging (a top-level name `RelPath` refuses from a peer).
    pub const STATE: &str = crate::path::RESERVED_TOP;
    /// The committed manifest.
    pub const MANIFEST: &str = "manifest";
    /// The committed manifest's root hash.
    pub const ROOT: &str = "root";
    /// Present while staging holds a sync that has not committed.
    pub const DIRTY: &str = "dirty";
    /// The manifest of the generation now live (written by the restore).
    pub const RESTORED: &str = "restored";
    /// Its root hash: read at every session, so "committed but not restored" is seen
    /// without decoding a manifest.
    pub const RESTORED_ROOT: &str = "restored-root";
    /// The restore journal (see `restore_hooks::journal`).
    pub const JOURNAL: &str = "restore-journal";
}

/// Opens `<staging>/.ha-sync` for reading and writing the restore's files; never creates it.
pub fn open_state(staging: &Path) -> io::Result<Dir> {
    Dir::open(staging, false)?.open_dir(STATE)
}

/// Reads a manifest kept in the state directory (`name`: [`layout::MANIFEST`] or
/// [`layout::RESTORED`]); `None` when there is none or it does not decode (logged: the caller
/// then falls back to a rescan or a full comparison).
///
/// The last two files decoded are kept by identity (device, inode, size, mtime, read from the
/// open file): both names are only ever written by rename, never in place, so a file with the
/// same identity holds the same bytes. A session reads the committed manifest and the restore the restored
/// one, which [`write_restored`] makes the same file: a megabyte decoded and validated once
/// per generation instead of twice per session (issue 13).
pub fn read_manifest(state: &Dir, name: &str) -> Option<Arc<Manifest>> {
    let warn = |e: &dyn std::fmt::Display| {
        tracing::warn!("{}/{name}: {e}", state.path().display());
    };
    let f = match state.open_file(name) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn(&e);
            return None;
        }
    };
    let key = match f.metadata() {
        Ok(md) => FileId::of(&md),
        Err(e) => {
            warn(&e);
            return None;
        }
    };
    if let Some(m) = memo::get(&key) {
        return Some(m);
    }
    let mut b = Vec::new();
    if let Err(e) = io::Read::read_to_end(
        &mut io::Read::take(&f, crate::wire::MAX_MANIFEST + 1),
        &mut b,
    ) {
        warn(&e);
        return None;
    }
    if b.len() as u64 > crate::wire::MAX_MANIFEST {
        warn(&"larger than a manifest may be");
        return None;
    }
    match Manifest::decode(&b) {
        Ok(m) => {
            let m = Arc::new(m);
            memo::put(state.path(), key, Arc::clone(&m));
            Some(m)
        }
        Err(e) => {
            warn(&e);
            None
        }
    }
}

/// What identifies a file's content without reading it, for files only ever replaced by
/// rename. Not the ctime: linking the restored record and replacing the committed name move
/// it (the link count changes), the bytes do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
}

impl FileId {
    fn of(md: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        }
    }
}

/// The decoded manifests [`read_manifest`] keeps, most recent first.
mod memo {
    use super::{Arc, FileId, Manifest};
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// Per state directory: the committed and the restored generation (the same file
    /// between syncs, two files while a commit awaits its restore).
    const KEEP: usize = 2;
    /// State directories at once: one on a router; tests open many.
    const DIRS: usize = 4;
    type Memo = Vec<(PathBuf, FileId, Arc<Manifest>)>;
    static MEMO: Mutex<Memo> = Mutex::new(Vec::new());

    pub(super) fn get(key: &FileId) -> Option<Arc<Manifest>> {
        let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
        let i = memo.iter().position(|(_, k, _)| k == key)?;
        let hit = memo.remove(i);
        let m = Arc::clone(&hit.2);
        memo.insert(0, hit);
        Some(m)
    }

    /// `m` is what the file `name` (just written by this process) holds.
    pub(super) fn remember(state: &crate::fsx::Dir, name: &str, m: &Arc<Manifest>) {
        if let Ok(md) = state.open_file(name).and_then(|f| f.metadata()) {
            put(state.path(), FileId::of(&md), Arc::clone(m));
        }
    }

    pub(super) fn put(dir: &Path, key: FileId, m: Arc<Manifest>) {
        let mut memo = MEMO.lock().unwrap_or_else(|p| p.into_inner());
        memo.retain(|(_, k, _)| *k != key);
        memo.insert(0, (dir.to_path_buf(), key, m));
        let mut seen: Vec<(&Path, usize)> = Vec::new();
        let mut keep = Vec::with_capacity(memo.len());
        for (d, ..) in memo.iter() {
            let n = match seen.iter_mut().find(|(x, _)| *x == d.as_path()) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    seen.push((d.as_path(), 1));
                    1
                }
            };
            keep.push(n <= KEEP && seen.len() <= DIRS);
        }
        let mut flags = keep.into_iter();
        memo.retain(|_| flags.next().unwrap_or(false));
    }
}

/// Records `m` as the generation live holds: [`layout::RESTORED`], then its root in
/// [`layout::RESTORED_ROOT`], made durable by one fsync of the directory. The root's 64 bytes
/// are not flushed before their rename: a crash that tears them, or falls between the two,
/// leaves no root or the old one, which only makes the next start redo an idempotent restore. When `m` is the committed
/// generation (the usual case) the restored record is a second name of the committed file:
/// nothing encoded or written again, and one decode serves both.
///
/// `root` is `m`'s root hash (the caller has it: computing it again encodes the whole
/// manifest).
pub fn write_restored(state: &Dir, m: &Manifest, root: Hash) -> io::Result<()> {
    let is_committed = read_root(state, ROOT) == Some(root)
        && read_manifest(state, MANIFEST).is_some_and(|c| *c == *m);
    let linked = is_committed && state.link_atomic(MANIFEST, layout::RESTORED).is_ok();
    if !linked {
        state.write_file_atomic(layout::RESTORED, &m.encode(), None)?;
    }
    state.write_file_replace(layout::RESTORED_ROOT, root.to_hex().as_bytes(), None, false)?;
    state.sync()
}

/// The root recorded by [`write_restored`].
pub fn restored_root(state: &Dir) -> Option<Hash> {
    read_root(state, layout::RESTORED_ROOT)
}

fn read_root(state: &Dir, name: &str) -> Option<Hash> {
    state
        .read_file(name, 128)
        .ok()
        .and_then(|b| Hash::from_hex(String::from_utf8_lossy(&b).trim()))
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("staging {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("staging scan: {0}")]
    Scan(#[from] ScanError),
    #[error("{path}: {msg}")]
    Refused { path: String, msg: String },
}

fn at(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ApplyError {
    let path = path.into();
    move |source| ApplyError::Io { path, source }
}

pub fn meta_of(e: &Entry) -> Meta {
    Meta {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime_ns: e.mtime_ns,
    }
}

/// File content whose blake3 matched the hash the manifest gives it: the only content the
/// staging writer takes, so a peer's bytes reach staging through that check or not at all.
pub struct Verified<'a> {
    entry: Entry,
    data: &'a [u8],
}

impl<'a> Verified<'a> {
    /// `data` as the content of `entry` (a file entry; its size and hash become the data's),
    /// when its blake3 is `hash`.
    pub fn check(entry: &Entry, data: &'a [u8], hash: Hash) -> Option<Verified<'a>> {
        if Hash::of(data) != hash {
            return None;
        }
        let mut entry = entry.clone();
        entry.kind = crate::manifest::Kind::File {
            size: data.len() as u64,
            hash,
        };
        Some(Verified { entry, data })
    }

    /// The entry as written: the manifest's, with the size and hash of the checked content.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

pub struct Staging {
    dir: Dir,
    state: Dir,
    path: PathBuf,
    /// Loaded on first use: a no-change session only needs the root.
    committed: std::cell::OnceCell<Option<Arc<Manifest>>>,
    /// `.ha-sync/root`, written with the manifest, read at open.
    root: Option<Hash>,
    dirty: bool,
    /// The directory of the last file written: files arrive in path order, mostly several
    /// to a directory, and each fresh walk from the top costs an open per component.
    last_parent: Option<(String, Dir)>,
}

impl Staging {
    /// Opens (creating) the staging tree at `path`.
    pub fn open(path: &Path) -> Result<Staging, ApplyError> {
        // Every path a peer may send fits below a prefix this long (`limits`).
        let len = path.as_os_str().len();
        if len > crate::limits::MAX_STAGING_PREFIX {
            return Err(ApplyError::Refused {
                path: path.display().to_string(),
                msg: format!(
                    "staging directory of {len} bytes is longer than the limit of {}",
                    crate::limits::MAX_STAGING_PREFIX
                ),
            });
        }
        let dir = Dir::open(path, true).map_err(at(path))?;
        match dir.lstat(STATE).map_err(at(path.join(STATE)))? {
            Some(st) if st.kind == FileType::Dir => {}
            Some(_) => {
                return Err(ApplyError::Refused {
                    path: path.join(STATE).display().to_string(),
                    msg: "exists and is not a directory".into(),
                })
            }
            None => dir.mkdir(STATE, 0o700).map_err(at(path.join(STATE)))?,
        }
        let state = dir.open_dir(STATE).map_err(at(path.join(STATE)))?;
        let dirty = state
            .lstat(DIRTY)
            .map_err(at(path.join(STATE).join(DIRTY)))?
            .is_some();
        let root = read_root(&state, ROOT);
        Ok(Staging {
            dir,
            state,
            path: path.to_path_buf(),
            committed: std::cell::OnceCell::new(),
            root,
            dirty,
            last_parent: None,
        })
    }

    fn load_committed(&self) -> Option<Arc<Manifest>> {
        let m = read_manifest(&self.state, MANIFEST);
        if m.is_none() && self.state.lstat(MANIFEST).ok().flatten().is_some() {
            tracing::warn!(
                "staging {}: committed manifest unreadable; staging will be rescanned",
                self.path.display()
            );
        }
        m
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn committed(&self) -> Option<&Manifest> {
        self.committed
            .get_or_init(|| self.load_committed())
            .as_deref()
    }

    /// The committed root, when the tree is known to hold exactly that. From `root`, written
    /// before the manifest and trusted only without a dirty mark, so it never names a
    /// generation the manifest does not hold; older trees without it hash the manifest.
    pub fn root(&self) -> Option<Hash> {
        if self.dirty {
            None
        } else {
            self.root
                .or_else(|| self.committed().map(Manifest::root_hash))
        }
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The root of the generation the restore last put live; `None` before the first one.
    pub fn restored_root(&self) -> Option<Hash> {
        restored_root(&self.state)
    }

    /// The committed generation when live does not hold it yet. "Committed but not restored"
    /// is a durable state (two files in `.ha-sync`), not a journal that exists only once a
    /// restore has begun: a crash between the commit and the restore (or while the restore
    /// waits for the hooks lock) is seen at the next start and at every session.
    pub fn unrestored(&self) -> Option<&Manifest> {
        let root = self.root()?;
        if self.restored_root() == Some(root) {
            return None;
        }
        self.committed()
    }

    /// What staging really holds under `list` (and under the committed list): the
    /// committed manifest when clean, a rescan when a sync was interrupted.
    pub fn current(&self, list: &[ListItem]) -> Result<std::borrow::Cow<'_, Manifest>, ApplyError> {
        if let (false, Some(m)) = (self.dirty, self.committed()) {
            return Ok(std::borrow::Cow::Borrowed(m));
        }
        let mut all: Vec<ListItem> = list.to_vec();
        if let Some(m) = self.committed() {
            all.extend(m.list.iter().cloned());
        }
        all.sort();
        all.dedup_by(|a, b| a.path == b.path);
        // Drop items below another item: the walk of the parent covers them.
        let items: Vec<ListItem> = all
            .iter()
            .filter(|i| {
                !all.iter()
                    .any(|o| o.path != i.path && i.path.starts_with(&o.path))
            })
            .cloned()
            .collect();
        let none = |_: &str| false;
        let mut cache = StatCache::default();
        let (m, _) = Scanner {
            root: &self.path,
            is_excluded: &none,
            cache: &mut cache,
        }
        .scan(&items, &[])?;
        Ok(std::borrow::Cow::Owned(m))
    }

    /// Empties the tree (ha-sync's state aside) and forgets the committed manifest: the
    /// way out of a staging tree that cannot be rescanned, whatever is in it. The dirty mark
    /// stays until the next commit, so a crash meanwhile still means "rescan".
    pub fn reset(&mut self) -> Result<(), ApplyError> {
        self.begin()?;
        for name in self.dir.list().map_err(at(&self.path))? {
            if name != STATE {
                // `remove_all` walks by directory handle: no path is ever too long for it.
                self.dir
                    .remove_all(&name)
                    .map_err(at(self.path.join(&name)))?;
            }
        }
        for name in ["manifest", "root"] {
            match self.state.unlink(name) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(at(self.path.join(STATE).join(name))(e))
                }
                _ => {}
            }
        }
        self.committed = std::cell::OnceCell::from(None);
        self.root = None;
        self.last_parent = None;
        Ok(())
    }

    /// Marks the tree as changing; from here until `commit` a crash means "rescan".
    pub fn begin(&mut self) -> Result<(), ApplyError> {
        if !self.dirty {
            // Empty: no data to flush, only its name, which the directory's fsync makes durable.
            self.state
                .write_file_replace(DIRTY, b"", None, false)
                .map_err(at(self.path.join(STATE).join(DIRTY)))?;
            self.state.sync().map_err(at(self.path.join(STATE)))?;
            self.dirty = true;
        }
        Ok(())
    }

    fn parent(&self, p: &RelPath, create: bool) -> Result<Dir, ApplyError> {
        self.dir.parent_of(p, create).map_err(|e| ApplyError::Refused {
            path: p.to_abs(),
            msg: format!("cannot reach its directory in staging without following a symlink or non-directory: {e}"),
        })
    }

    /// Everything but file content: deletions (deepest first), type changes, directories,
    /// symlinks, metadata of unchanged files. Returns the directories whose metadata must
    /// be set once their content is final (`finish_dirs`).
    pub fn apply_structure(&mut self, ops: &[Op]) -> Result<(), ApplyError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.begin()?;
        for op in ops.iter().rev() {
            if let Op::Delete(e) | Op::TypeChange(e) = op {
                match self.dir.parent_of(&e.path, false) {
                    Ok(d) => d
                        .remove_all(e.path.file_name())
                        .map_err(at(self.path.join(e.path.as_str())))?,
                    Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT)) => {}
                    Err(err) => return Err(at(self.path.join(e.path.as_str()))(err)),
                }
            }
        }
        for op in ops {
            let Some(e) = op.target() else { continue };
            let full = self.path.join(e.path.as_str());
            match (&e.kind, op) {
                (Kind::Dir, Op::Create(_) | Op::TypeChange(_)) => {
                    let d = self.parent(&e.path, true)?;
                    match d.lstat(e.path.file_name()).map_err(at(&full))? {
                        Some(st) if st.kind == FileType::Dir => {}
                        Some(_) => {
                            d.remove_all(e.path.file_name()).map_err(at(&full))?;
                            d.mkdir(e.path.file_name(), 0o700).map_err(at(&full))?;
                        }
                        None => d.mkdir(e.path.file_name(), 0o700).map_err(at(&full))?,
                    }
                }
                (Kind::Symlink { target }, Op::Create(_) | Op::TypeChange(_)) => {
                    let d = self.parent(&e.path, true)?;
                    if d.lstat(e.path.file_name())
                        .map_err(at(&full))?
                        .is_some_and(|s| s.kind == FileType::Dir)
                    {
                        d.remove_all(e.path.file_name()).map_err(at(&full))?;
                    }
                    d.symlink_atomic(target, e.path.file_name(), Some(meta_of(e)))
                        .map_err(at(&full))?;
                }
                (Kind::File { .. }, Op::Meta(_)) => self
                    .parent(&e.path, false)?
                    .set_meta(e.path.file_name(), meta_of(e), false)
                    .map_err(at(&full))?,
                (Kind::Symlink { .. }, Op::Meta(_)) => self
                    .parent(&e.path, false)?
                    .set_meta(e.path.file_name(), meta_of(e), true)
                    .map_err(at(&full))?,
                _ => {} // files' content comes later; directories' metadata at the end
            }
        }
        Ok(())
    }

    /// Sets the metadata of every directory of `m` that this sync touched (directly or by
    /// changing something inside it), deepest first, so their mtimes end as the primary's.
    pub fn finish_dirs(&self, m: &Manifest, touched: &BTreeSet<RelPath>) -> Result<(), ApplyError> {
        let mut dirs: BTreeSet<&RelPath> = BTreeSet::new();
        for p in touched {
            let mut cur = Some(p.clone());
            while let Some(c) = cur {
                if let Some(e) = m.get(&c) {
                    if matches!(e.kind, Kind::Dir) {
                        dirs.insert(&e.path);
                    }
                }
                cur = c.parent();
            }
        }
        for p in dirs.iter().rev() {
            let e = m.get(p).expect("dir taken from the manifest");
            let d = self
                .dir
                .open_rel_dir(&e.path)
                .map_err(at(self.path.join(p.as_str())))?;
            d.set_own_meta(meta_of(e))
                .map_err(at(self.path.join(p.as_str())))?;
        }
        Ok(())
    }

    /// Writes one file's content atomically with the entry's metadata.
    pub fn write_file(&mut self, v: &Verified<'_>) -> Result<(), ApplyError> {
        let (e, data) = (&v.entry, v.data);
        self.begin()?;
        let parent = e
            .path
            .parent()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let d = match self.last_parent.take() {
            Some((p, d)) if p == parent => d,
            _ => self.parent(&e.path, true)?,
        };
        let full = self.path.join(e.path.as_str());
        if d.lstat(e.path.file_name())
            .map_err(at(&full))?
            .is_some_and(|s| s.kind == FileType::Dir)
        {
            d.remove_all(e.path.file_name()).map_err(at(&full))?;
        }
        // No fsync per file: `commit` flushes the filesystem once before the commit point,
        // and until then the dirty mark makes a crash mean "rescan".
        let r = d
            .write_file_replace(e.path.file_name(), data, Some(meta_of(e)), false)
            .map_err(at(&full));
        self.last_parent = Some((parent, d));
        crate::fault::point(crate::fault::STAGING_WRITE);
        r
    }

    /// The staged copy of a file, as basis for a delta; `None` if it is not a regular file.
    pub fn read(&self, p: &RelPath, limit: u64) -> Option<Vec<u8>> {
        let d = self.dir.parent_of(p, false).ok()?;
        d.read_file(p.file_name(), limit).ok()
    }

    /// The commit point: restore list, then manifest, then the dirty mark goes.
    pub fn commit(&mut self, m: &Manifest) -> Result<Hash, ApplyError> {
        crate::fault::point(crate::fault::BEFORE_COMMIT);
        let rl = RelPath::new(RESTORE_LIST).expect("constant path is valid");
        let d = self.parent(&rl, true)?;
        // Encoded once; the root is the hash of those bytes.
        let bytes = m.encode();
        let root = Hash::of(&bytes);
        // The restore list, the root and the manifest as temp files first; then one flush of
        // the filesystem makes them and every staged file durable (one journal commit where
        // an fsync each cost four); then the renames in commit order, the manifest last: it
        // is the commit point.
        let state_path = self.path.join(STATE);
        let rl_meta = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: crate::clock::now_ns(),
        };
        let rl_tmp = d
            .write_temp(
                rl.file_name(),
                m.restore_list_file().as_bytes(),
                Some(rl_meta),
            )
            .map_err(at(self.path.join(RESTORE_LIST)))?;
        let mut temps = vec![(&d, rl_tmp.clone())];
        let written = (|| {
            let t = self
                .state
                .write_temp(ROOT, root.to_hex().as_bytes(), None)
                .map_err(at(state_path.join(ROOT)))?;
            temps.push((&self.state, t.clone()));
            let u = self
                .state
                .write_temp(MANIFEST, &bytes, None)
                .map_err(at(state_path.join(MANIFEST)))?;
            temps.push((&self.state, u.clone()));
            self.dir.sync_fs().map_err(at(&self.path))?;
            Ok::<_, ApplyError>((t, u))
        })();
        let (root_tmp, manifest_tmp) = match written {
            Ok(t) => t,
            Err(e) => {
                for (dir, t) in temps {
                    let _ = dir.unlink(&t);
                }
                return Err(e);
            }
        };
        drop(bytes);
        d.rename(&rl_tmp, rl.file_name())
            .map_err(at(self.path.join(RESTORE_LIST)))?;
        d.sync().map_err(at(self.path.join("tmp")))?;
        self.state
            .rename(&root_tmp, ROOT)
            .map_err(at(state_path.join(ROOT)))?;
        self.state
            .rename(&manifest_tmp, MANIFEST)
            .map_err(at(state_path.join(MANIFEST)))?;
        if self.dirty {
            self.state
                .unlink(DIRTY)
                .map_err(at(self.path.join(STATE).join(DIRTY)))?;
        }
        self.state.sync().map_err(at(self.path.join(STATE)))?;
        self.dirty = false;
        let m = Arc::new(m.clone());
        memo::remember(&self.state, MANIFEST, &m);
        self.committed = std::cell::OnceCell::from(Some(m));
        self.root = Some(root);
        crate::fault::point(crate::fault::AFTER_COMMIT);
        Ok(root)
    }
}

/// Whether this process can make staging's owners match the primary's.
pub fn preserves_owners() -> bool {
    fsx::can_chown()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{dir, file};
    use std::os::unix::fs::MetadataExt;

    /// `/etc` holding the empty files `files`.
    fn manifest(files: &[&str]) -> Manifest {
        let mut entries = vec![dir("etc")];
        entries.extend(files.iter().map(|f| file(&format!("etc/{f}"), b"")));
        crate::testing::manifest(entries)
    }

    #[test]
    fn the_restored_record_is_the_committed_file_and_is_decoded_once() {
        let d = tempfile::tempdir().unwrap();
        let mut st = Staging::open(d.path()).unwrap();
        let m = manifest(&["a", "b"]);
        st.commit(&m).unwrap();
        let state = open_state(d.path()).unwrap();
        write_restored(&state, &m, m.root_hash()).unwrap();
        let md = |n: &str| std::fs::metadata(d.path().join(STATE).join(n)).unwrap();
        assert_eq!(md(MANIFEST).ino(), md(layout::RESTORED).ino());
        assert_eq!(restored_root(&state), Some(m.root_hash()));
        let (a, b) = (
            read_manifest(&state, MANIFEST).unwrap(),
            read_manifest(&state, layout::RESTORED).unwrap(),
        );
        assert!(Arc::ptr_eq(&a, &b), "one decode serves both names");
        assert_eq!(*a, m);

        // The next commit replaces the committed file; the restored record keeps the old one.
        let n = manifest(&["a"]);
        st.commit(&n).unwrap();
        assert_ne!(md(MANIFEST).ino(), md(layout::RESTORED).ino());
        let restored = read_manifest(&state, layout::RESTORED).unwrap();
        assert!(
            Arc::ptr_eq(&restored, &a),
            "still decoded once: losing a name is not a change of content"
        );
        assert_eq!(*read_manifest(&state, MANIFEST).unwrap(), n);
    }

    #[test]
    fn a_manifest_that_is_not_the_committed_one_is_written_whole() {
        let d = tempfile::tempdir().unwrap();
        let mut st = Staging::open(d.path()).unwrap();
        st.commit(&manifest(&["a"])).unwrap();
        let state = open_state(d.path()).unwrap();
        let other = manifest(&["b"]);
        write_restored(&state, &other, other.root_hash()).unwrap();
        let md = |n: &str| std::fs::metadata(d.path().join(STATE).join(n)).unwrap();
        assert_ne!(md(MANIFEST).ino(), md(layout::RESTORED).ino());
        assert_eq!(*read_manifest(&state, layout::RESTORED).unwrap(), other);
        assert_eq!(restored_root(&state), Some(other.root_hash()));
    }
}
