//! Staging -> live: the committed generation written over the router's own files.
//!
//! Rules, each a fault of the incumbent fixed (INCUMBENT.md):
//! - only what differs from live is written: a file whose content (blake3) and metadata match
//!   is not touched, so a restore with nothing to do writes nothing and fires nothing (2);
//! - every file is a temp file beside the target, fsynced, renamed over it, with mode, owner
//!   and mtime set before the rename (3);
//! - a listed directory is mirrored: what live holds there and the generation does not is
//!   deleted, except what `exclude_list` matches. A single listed file that left the list
//!   (deleted on the primary, so `sysupgrade -l` stopped listing it) is deleted too, when
//!   the previously restored generation had it (4). One exception: a package conffile that
//!   left the list went back to its package default (`sysupgrade -l` lists changed conffiles
//!   only), so it gets `/rom`'s copy back instead of being deleted;
//! - every live path is reached from the root's descriptor one real directory at a time
//!   (`fsx::Dir`): never through a symlink, never `..` (paths are `RelPath`s), never a path
//!   outside the generation's restore list (the manifest is validated first);
//! - the per-node paths of [`crate::identity`] are never written nor deleted (9).
//!
//! Crash safety is the journal's job ([`crate::journal`]).

use crate::cron::{self, CRONTAB};
use crate::identity::{self, is_per_node, SYSTEM_CONFIG};
use crate::journal::{self, Journal, Pending, Phase};
use crate::livestat::LiveStat;
use crate::{hooks, Ctx, HookError};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::rc::Rc;
use sync_core::attic::{self, Attic};
use sync_core::delta::MAX_FILE_SIZE;
use sync_core::fsx::{self, Dir, FileType, Stat};
use sync_core::manifest::{diff, Entry, Hash, Kind, Manifest};
use sync_core::path::RelPath;
use sync_core::restore_list::Excludes;
use sync_core::staging::meta_of;
use sync_core::wire::RestoreReport;

/// More files to write than this and the restore batches them (see `Applier::batch`).
const BATCH_MIN: usize = 8;

/// How a restore runs.
pub(crate) struct Options {
    /// This node is master: only when a crash-interrupted restore is completed on a node that
    /// has become master since (a new restore is refused there). Decides the cron overlay and
    /// whether kept-stopped services are reloaded.
    pub master: bool,
    /// The journal an interrupted run left.
    pub recover: Option<Pending>,
    /// Trust no cache: every live file is hashed and every mirrored directory listed (the
    /// drift check). Otherwise what the live stat cache vouches for is only `lstat`ed.
    pub thorough: bool,
}

pub(crate) fn open_state(staging: &std::path::Path) -> io::Result<Dir> {
    sync_core::staging::open_state(staging)
}

/// The generation last restored (`.ha-sync/restored`), if known.
pub(crate) fn read_restored(state: &Dir) -> Option<std::sync::Arc<Manifest>> {
    sync_core::staging::read_manifest(state, journal::RESTORED)
}

/// Restores `m` from `ctx.staging` into `ctx.root` and runs the NOTIFY_SYNC actions when
/// anything changed. The caller holds the hooks lock and has decided the node may restore.
///
/// `applied` is true when every path of the generation is live; failed NOTIFY_SYNC steps are
/// listed in `errors` under `NOTIFY_SYNC` without making the restore unapplied.
/// `root` is `m`'s root hash, which every caller has computed already (a megabyte of
/// encoding at a few thousand entries).
pub(crate) fn restore(ctx: &Ctx, m: &Manifest, root: Hash, opts: Options) -> RestoreReport {
    let mut rep = RestoreReport {
        root,
        ..RestoreReport::default()
    };
    let (excludes, state, staged, live) = match open(ctx, m) {
        Ok(t) => t,
        Err(Opened::Refused(why)) => {
            rep.refused = Some(why);
            return rep;
        }
        Err(Opened::Failed(p, e)) => {
            rep.errors.push((p, e));
            return rep;
        }
    };
    let prev = read_restored(&state);
    let seed = recovery_seed(opts.recover.as_ref(), prev.as_deref(), m);
    let mut journal = Journal::new(&state, root).with_seed(&seed);

    let hostname = read_live(&live, SYSTEM_CONFIG)
        .and_then(|b| identity::hostname_of(&String::from_utf8_lossy(&b)));
    // Batched when many files may be written: the first restore, or a generation that
    // changes many (the count is from the manifests, an upper bound of what differs live).
    let ops = prev.as_deref().map(|p| diff(p, m));
    let writes = match &ops {
        Some(ops) => ops.iter().filter(|o| o.needs_content()).count(),
        None => m.entries.len(),
    };
    // A directory may go unlisted only when the last restore left it complete, no name in
    // it left the generation since, and what the mirror keeps (list, excludes) is the same.
    let unlisted_ok = !opts.thorough
        && opts.recover.is_none()
        && prev
            .as_deref()
            .is_some_and(|p| p.list == m.list && p.excludes == m.excludes);
    let removed_in: HashSet<String> = ops
        .iter()
        .flatten()
        .filter(|o| matches!(o, sync_core::manifest::Op::Delete(_)))
        .map(|o| parent_key(o.path()))
        .collect();
    let state_dir = ctx.root.join(sync_core::node::STATE_DIR);
    let mut a = Applier {
        batch: writes > BATCH_MIN,
        deferred: Vec::new(),
        live,
        staged,
        m,
        prev: prev.as_deref(),
        excludes: &excludes,
        journal: &mut journal,
        changed: BTreeSet::new(),
        errors: Vec::new(),
        master: opts.master,
        hostname,
        touched: BTreeSet::new(),
        cleaned: HashSet::new(),
        conffiles: None,
        root_path: ctx.root,
        live_stat: if opts.thorough {
            LiveStat::fresh(&state_dir)
        } else {
            LiveStat::load(&state_dir)
        },
        unlisted_ok,
        removed_in,
        dirs: HashMap::new(),
        recovering: opts.recover.is_some(),
        protected: protected_dirs(ctx),
        attic: Attic::new(&sync_core::node::Node::new(ctx.root)),
        prekept: None,
        generation: root.to_hex(),
        index: m
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.path.as_str(), i))
            .collect(),
    };
    let res = a.run();
    if res.is_err() || !a.errors.is_empty() {
        a.live_stat.forget_dirs();
    }
    a.live_stat.save();
    let mut changed = std::mem::take(&mut a.changed);
    rep.errors = std::mem::take(&mut a.errors);
    drop(a);
    changed.extend(seed);
    let changed: Vec<String> = changed.into_iter().collect();
    if let Err(e) = res {
        // The journal could not be written: live was not touched past this point, and a
        // journal already started stays for `recover`.
        rep.errors
            .push((ctx.root.display().to_string(), e.to_string()));
        rep.changed = changed;
        return rep;
    }
    rep.applied = rep.errors.is_empty();
    finish(ctx, m, &state, &mut journal, &changed, &opts, &mut rep);
    rep.changed = changed;
    rep
}

/// Why a restore could not begin.
enum Opened {
    /// The generation itself is refused (nothing written).
    Refused(String),
    /// A tree could not be opened: the path and the cause.
    Failed(String, String),
}

/// Checks the generation and opens the trees: staging's state, staging, live.
fn open(ctx: &Ctx, m: &Manifest) -> Result<(Excludes, Dir, Dir, Dir), Opened> {
    m.validate()
        .map_err(|e| Opened::Refused(format!("manifest refused: {e}")))?;
    // Mirroring without the user's exclusions would delete what he meant to keep.
    let excludes = Excludes::new(m.excludes.clone())
        .map_err(|e| Opened::Refused(format!("exclude_list: {e}")))?;
    let failed = |p: String| move |e: io::Error| Opened::Failed(p, e.to_string());
    let state = open_state(ctx.staging)
        .map_err(failed(ctx.staging.join(".ha-sync").display().to_string()))?;
    let staged =
        Dir::open(ctx.staging, false).map_err(failed(ctx.staging.display().to_string()))?;
    let live = Dir::open(ctx.root, false).map_err(failed(ctx.root.display().to_string()))?;
    Ok((excludes, state, staged, live))
}

/// What an interrupted run may have changed already: its journal lines and, when it died
/// before live was complete, whatever differs between the generations.
fn recovery_seed(recover: Option<&Pending>, prev: Option<&Manifest>, m: &Manifest) -> Vec<String> {
    let mut seed: BTreeSet<String> = BTreeSet::new();
    if let Some(p) = recover {
        seed.extend(p.paths.iter().cloned());
        if p.phase == Phase::Restore {
            let base = prev.cloned().unwrap_or_default();
            seed.extend(
                diff(&base, m)
                    .iter()
                    .map(|op| op.path())
                    .filter(|p| !is_per_node(p))
                    .map(RelPath::to_abs),
            );
        }
    }
    seed.into_iter().collect()
}

/// After live holds the generation: the NOTIFY_SYNC actions for what changed (journaled
/// first, so a crash repeats them), the record of the generation restored, the journal gone.
fn finish(
    ctx: &Ctx,
    m: &Manifest,
    state: &Dir,
    journal: &mut Journal,
    changed: &[String],
    opts: &Options,
    rep: &mut RestoreReport,
) {
    let root = rep.root;
    if !changed.is_empty() {
        if let Err(e) = journal.to_notify(changed) {
            rep.errors
                .push((journal::JOURNAL.to_string(), e.to_string()));
            return;
        }
        sync_core::fault::point(sync_core::fault::BEFORE_NOTIFY_SYNC);
        for e in hooks::notify_sync(ctx, changed, root, opts.master) {
            rep.errors.push(("NOTIFY_SYNC".to_string(), e));
        }
    }
    if sync_core::staging::restored_root(state) != Some(root) {
        if let Err(e) = sync_core::staging::write_restored(state, m, root) {
            rep.errors.push((
                state.path().join(journal::RESTORED).display().to_string(),
                e.to_string(),
            ));
        }
    }
    if journal.started() || opts.recover.is_some() {
        if let Err(e) = journal::clear(state) {
            rep.errors.push((
                state.path().join(journal::JOURNAL).display().to_string(),
                e.to_string(),
            ));
        }
    }
}

fn read_live(live: &Dir, rel: &str) -> Option<Vec<u8>> {
    let p = RelPath::new(rel).ok()?;
    live.parent_of(&p, false)
        .ok()?
        .read_file(p.file_name(), MAX_FILE_SIZE)
        .ok()
}

/// What the live copy of a file must hold.
enum Desired {
    /// The staged bytes, known by the manifest's hash.
    Staged,
    /// Bytes derived from the staged ones (hostname kept, cron overlay).
    Bytes(Vec<u8>),
}

struct Applier<'a, 'j> {
    /// Many files to write: each goes to a temp file, one filesystem flush makes them all
    /// durable, then each is renamed into place (instead of an fsync per file, which costs a
    /// journal commit each on ext4).
    batch: bool,
    /// The batch's temp files: directory, temp name, entry, whether staged as is.
    deferred: Vec<(Rc<Dir>, String, Entry, bool)>,
    live: Dir,
    staged: Dir,
    m: &'a Manifest,
    prev: Option<&'a Manifest>,
    excludes: &'a Excludes,
    journal: &'a mut Journal<'j>,
    /// Router paths changed in live.
    changed: BTreeSet<String>,
    errors: Vec<(String, String)>,
    master: bool,
    /// This node's hostname, read before anything is written.
    hostname: Option<String>,
    /// Directories (relative, "" for the root) whose entries changed: fsynced at the end.
    touched: BTreeSet<String>,
    /// Directories already checked for temp files left by a killed restore.
    cleaned: HashSet<String>,
    conffiles: Option<HashSet<String>>,
    root_path: &'a std::path::Path,
    /// Live files known to hold a hash without reading them, and mirrored directories known
    /// to hold nothing to delete (issue 13).
    live_stat: LiveStat,
    /// Directories the live stat cache vouches for need not be listed (see `restore`).
    unlisted_ok: bool,
    /// Directories a name of the last restored generation left (relative, "" for the root):
    /// always listed, so the mirror deletes it.
    removed_in: HashSet<String>,
    /// Live directories opened for the entries just restored, by [`parent_key`]: entries come
    /// in path order, so siblings reuse one descriptor instead of walking from the root again
    /// (one `openat` per component and entry was most of a small restore's cost). Emptied
    /// whenever the restore removes or replaces anything, so no entry lands in a directory that
    /// left the tree.
    dirs: HashMap<String, Rc<Dir>>,
    /// A run that completes an interrupted one: temp files are looked for everywhere.
    recovering: bool,
    /// The generation's entries by path: the mirror looks up every live name, and the
    /// manifest's own lookup is a binary search comparing paths component by component.
    index: HashMap<&'a str, usize>,
    /// This node's own directories (staging wherever `sync_dir` puts it, state, keys, data),
    /// relative to the root: never written, never mirrored over, whatever the manifest says.
    protected: Vec<String>,
    /// Every live version this restore replaces or deletes is kept here first (issue 11).
    attic: Attic,
    /// While a whole directory is removed: the paths below it already copied to the attic
    /// and flushed (see `remove_tree`).
    prekept: Option<HashSet<String>>,
    /// The generation being restored, as the attic tags what it replaced.
    generation: String,
}

/// Open directories kept at once: deep enough for a tree's nesting, far below any fd limit.
const DIR_CACHE: usize = 128;

fn parent_key(p: &RelPath) -> String {
    p.parent()
        .map(|x| x.as_str().to_string())
        .unwrap_or_default()
}

fn is_dir(e: &Entry) -> bool {
    matches!(e.kind, Kind::Dir)
}

impl<'a> Applier<'a, '_> {
    fn run(&mut self) -> Result<(), HookError> {
        self.mirror_all()?;
        self.delete_dropped()?;
        for e in self.m.entries.iter() {
            if self.is_protected(&e.path) {
                // A hostile primary, or a `sync_dir` below a listed directory.
                self.err(
                    &e.path,
                    "refused: inside this node's own staging, state, key or data directory",
                );
            } else if !is_per_node(&e.path) {
                self.put(e)?;
            }
        }
        self.flush_deferred();
        self.fix_dirs()?;
        self.sync_dirs();
        Ok(())
    }

    fn err(&mut self, p: &RelPath, msg: impl std::fmt::Display) {
        tracing::warn!("restore {}: {msg}", p.to_abs());
        self.errors.push((p.to_abs(), msg.to_string()));
    }

    fn excluded(&self, p: &RelPath) -> bool {
        self.excludes.is_excluded_rel(p) || self.is_protected(p)
    }

    fn is_protected(&self, p: &RelPath) -> bool {
        let p = p.as_str();
        self.protected.iter().any(|d| {
            p.strip_prefix(d.as_str())
                .is_some_and(|r| r.is_empty() || r.starts_with('/'))
        })
    }

    fn meta_differs(s: &Stat, e: &Entry, symlink: bool) -> bool {
        (!symlink && s.mode != e.mode)
            || (fsx::can_chown() && (s.uid != e.uid || s.gid != e.gid))
            || s.mtime_ns != e.mtime_ns
    }

    fn note(&mut self, p: &RelPath) -> Result<(), HookError> {
        self.journal.note(&p.to_abs())
    }

    // ---- mirrored directories -----------------------------------------------------------

    fn mirror_all(&mut self) -> Result<(), HookError> {
        for item in self.m.list.iter().filter(|i| i.dir) {
            if is_per_node(&item.path)
                || self.excluded(&item.path)
                || !self.entry(&item.path).is_some_and(is_dir)
            {
                continue;
            }
            // Missing or not a real directory yet: `put` creates or replaces it.
            if let Ok(d) = self.live.open_rel_dir(&item.path) {
                self.mirror(&d, &item.path)?;
            }
        }
        Ok(())
    }

    fn mirror(&mut self, d: &Dir, rel: &RelPath) -> Result<(), HookError> {
        if self.unlisted_ok
            && !self.removed_in.contains(rel.as_str())
            && d.lstat(".")
                .ok()
                .flatten()
                .is_some_and(|s| self.live_stat.dir_unchanged(rel.as_str(), &s))
        {
            // Nothing here to delete: only its subdirectories are looked at.
            for name in self.child_dirs(rel) {
                let Ok(child) = rel.join(&name) else { continue };
                if is_per_node(&child) || self.excluded(&child) {
                    continue;
                }
                if let Ok(sub) = d.open_dir(&name) {
                    self.mirror(&sub, &child)?;
                }
            }
            return Ok(());
        }
        let names = match d.list() {
            Ok(n) => n,
            Err(e) => {
                self.err(rel, format!("cannot list: {e}"));
                return Ok(());
            }
        };
        for name in names {
            if fsx::is_temp_name(&name) {
                remove_stale_temp(d, &name, None);
                continue;
            }
            let Ok(child) = rel.join(&name) else { continue };
            if is_per_node(&child) || self.excluded(&child) {
                continue;
            }
            match self.entry(&child) {
                Some(e) if is_dir(e) => {
                    if let Ok(sub) = d.open_dir(&name) {
                        self.mirror(&sub, &child)?;
                    }
                }
                Some(_) => {}
                None => {
                    self.remove_tree(d, &name, &child)?;
                }
            }
        }
        Ok(())
    }

    /// The names of the generation's directories right below `rel`: the entries after it
    /// that start with `rel/` are one run in path order.
    fn child_dirs(&self, rel: &RelPath) -> Vec<String> {
        let below = format!("{}/", rel.as_str());
        // Not simply the entries after `rel`: `etc/misc-x` sorts between `etc/misc` and
        // `etc/misc/a`.
        let start = self
            .m
            .entries
            .partition_point(|e| e.path.as_str() < below.as_str());
        self.m.entries[start..]
            .iter()
            .take_while(|e| e.path.as_str().starts_with(below.as_str()))
            .filter(|e| is_dir(e))
            .filter_map(|e| {
                let name = &e.path.as_str()[below.len()..];
                (!name.contains('/')).then(|| name.to_string())
            })
            .collect()
    }

    /// Removes `name` (at `rel`) and what is below it, except excluded and per-node paths;
    /// whether it is gone.
    fn remove_tree(&mut self, d: &Dir, name: &str, rel: &RelPath) -> Result<bool, HookError> {
        self.dirs.clear();
        let st = match d.lstat(name) {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(true),
            Err(e) => {
                self.err(rel, e);
                return Ok(false);
            }
        };
        if st.kind == FileType::Dir && self.prekept.is_none() {
            // A whole directory goes: everything in it is copied to the attic first, unflushed,
            // and one flush makes every copy durable before the first deletion (an fsync per
            // file was most of removing a directory on ext4). What could not be copied here is
            // copied, flushed, one by one below, or stays.
            let mut kept = HashSet::new();
            self.prekeep(d, name, rel, &mut kept);
            if !kept.is_empty() {
                if let Err(e) = self.attic.flush() {
                    tracing::warn!("attic: {e}; copying one file at a time");
                    kept.clear();
                }
            }
            self.prekept = Some(kept);
            let gone = self.remove_tree(d, name, rel);
            self.prekept = None;
            return gone;
        }
        if st.kind == FileType::Dir {
            let sub = match d.open_dir(name) {
                Ok(s) => s,
                Err(e) => {
                    self.err(rel, e);
                    return Ok(false);
                }
            };
            let mut all = true;
            for n in sub.list().unwrap_or_default() {
                let Ok(child) = rel.join(&n) else {
                    all = false;
                    continue;
                };
                if is_per_node(&child) || self.excluded(&child) {
                    all = false;
                    continue;
                }
                all &= self.remove_tree(&sub, &n, &child)?;
            }
            if !all {
                return Ok(false);
            }
            self.note(rel)?;
            if let Err(e) = d.rmdir(name) {
                self.err(rel, e);
                return Ok(false);
            }
        } else {
            if !self.keep(d, rel) {
                return Ok(false);
            }
            self.note(rel)?;
            if let Err(e) = d.unlink(name) {
                self.err(rel, e);
                return Ok(false);
            }
        }
        self.changed.insert(rel.to_abs());
        self.touched.insert(parent_key(rel));
        Ok(true)
    }

    // ---- single files the primary no longer lists -----------------------------------------

    fn delete_dropped(&mut self) -> Result<(), HookError> {
        let Some(prev) = self.prev else { return Ok(()) };
        let mirrored: Vec<&RelPath> = self
            .m
            .list
            .iter()
            .filter(|i| i.dir && self.entry(&i.path).is_some_and(is_dir))
            .map(|i| &i.path)
            .collect();
        for e in prev.entries.iter().rev() {
            let p = &e.path;
            if self.entry(p).is_some()
                || mirrored.iter().any(|d| p.starts_with(d))
                || is_per_node(p)
                || self.excluded(p)
            {
                continue;
            }
            if matches!(e.kind, Kind::File { .. }) && self.is_conffile(p) {
                self.restore_default(p)?;
                continue;
            }
            let d = match self.live.parent_of(p, false) {
                Ok(d) => d,
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(err) => {
                    self.err(
                        p,
                        format!(
                            "cannot reach it without following a symlink or a non-directory: {err}"
                        ),
                    );
                    continue;
                }
            };
            let name = p.file_name();
            match d.lstat(name) {
                Ok(None) => {}
                Ok(Some(st)) if st.kind == FileType::Dir => {
                    // Only once empty: what is left inside never came from the primary.
                    if d.open_dir(name)
                        .and_then(|s| s.list())
                        .is_ok_and(|l| l.is_empty())
                    {
                        self.note(p)?;
                        match d.rmdir(name) {
                            Ok(()) => {
                                self.changed.insert(p.to_abs());
                                self.touched.insert(parent_key(p));
                            }
                            Err(err) => self.err(p, err),
                        }
                    }
                }
                Ok(Some(_)) => {
                    if !self.keep(&d, p) {
                        continue;
                    }
                    self.note(p)?;
                    match d.unlink(name) {
                        Ok(()) => {
                            self.changed.insert(p.to_abs());
                            self.touched.insert(parent_key(p));
                        }
                        Err(err) => self.err(p, err),
                    }
                }
                Err(err) => self.err(p, err),
            }
        }
        Ok(())
    }

    fn is_conffile(&mut self, p: &RelPath) -> bool {
        let set = self
            .conffiles
            .get_or_insert_with(|| conffiles(self.root_path));
        set.contains(&p.to_abs())
    }

    /// A conffile back at its package default on the primary: `/rom`'s copy, when there is
    /// one; otherwise live is left as it is.
    fn restore_default(&mut self, p: &RelPath) -> Result<(), HookError> {
        let Ok(rom) = RelPath::new(format!("rom/{}", p.as_str())) else {
            return Ok(());
        };
        let from_rom = self.live.parent_of(&rom, false).ok().and_then(|d| {
            let st = d.lstat(rom.file_name()).ok()??;
            if st.kind != FileType::File {
                return None;
            }
            Some((d.read_file(rom.file_name(), MAX_FILE_SIZE).ok()?, st))
        });
        let Some((bytes, st)) = from_rom else {
            tracing::info!(
                "{}: left the restore list and is a conffile without a /rom copy: kept",
                p.to_abs()
            );
            return Ok(());
        };
        let e = Entry {
            path: p.clone(),
            kind: Kind::File {
                size: bytes.len() as u64,
                hash: Hash::of(&bytes),
            },
            mode: st.mode,
            uid: st.uid,
            gid: st.gid,
            mtime_ns: st.mtime_ns,
        };
        let Some(d) = self.parent(p)? else {
            return Ok(());
        };
        let cur = d.lstat(p.file_name()).ok().flatten();
        self.put_file_bytes(&d, &e, cur, Desired::Bytes(bytes))
    }

    // ---- the generation's entries -----------------------------------------------------------

    /// The live directory holding `p`, created (ancestors 0755) when missing.
    fn parent(&mut self, p: &RelPath) -> Result<Option<Rc<Dir>>, HookError> {
        let key = parent_key(p);
        if let Some(d) = self.dirs.get(&key) {
            return Ok(Some(Rc::clone(d)));
        }
        let found = self
            .open_via_ancestor(&key)
            .unwrap_or_else(|| self.live.parent_of(p, false));
        let d = match found {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                self.note(p)?;
                match self.live.parent_of(p, true) {
                    Ok(d) => {
                        let mut a = p.parent();
                        while let Some(x) = a {
                            self.touched.insert(parent_key(&x));
                            a = x.parent();
                        }
                        d
                    }
                    Err(e) => {
                        self.err(p, format!("cannot create its directory: {e}"));
                        return Ok(None);
                    }
                }
            }
            Err(e) => {
                self.err(p, format!("cannot reach its directory without following a symlink or a non-directory: {e}"));
                return Ok(None);
            }
        };
        if self.recovering {
            self.clean_once(&d, p);
        }
        if self.dirs.len() >= DIR_CACHE {
            self.dirs.clear();
        }
        let d = Rc::new(d);
        self.dirs.insert(key, Rc::clone(&d));
        Ok(Some(d))
    }

    /// The files and symlinks below `name` (at `rel`) that `remove_tree` would delete, copied
    /// to the attic without a flush; their paths in `kept`.
    fn prekeep(&self, d: &Dir, name: &str, rel: &RelPath, kept: &mut HashSet<String>) {
        let Ok(sub) = d.open_dir(name) else { return };
        for n in sub.list().unwrap_or_default() {
            let Ok(child) = rel.join(&n) else { continue };
            if is_per_node(&child) || self.excluded(&child) {
                continue;
            }
            match sub.lstat(&n) {
                Ok(Some(st)) if st.kind == FileType::Dir => self.prekeep(&sub, &n, &child, kept),
                Ok(Some(_)) => {
                    let copied = self.attic.keep_unflushed(
                        &child,
                        &sub,
                        &n,
                        &self.generation,
                        attic::Reason::Restore,
                    );
                    if copied.is_ok() {
                        kept.insert(child.as_str().to_string());
                    }
                }
                _ => {}
            }
        }
    }

    /// Keeps the live version at `p` (in `d`) in the attic before it is replaced or deleted;
    /// whether the restore may go on with it. Nothing is overwritten without a copy: when the
    /// copy fails the live version stays and the restore reports the path.
    fn keep(&mut self, d: &Dir, p: &RelPath) -> bool {
        if self
            .prekept
            .as_ref()
            .is_some_and(|k| k.contains(p.as_str()))
        {
            return true;
        }
        match self.attic.keep(
            p,
            d,
            p.file_name(),
            &self.generation,
            attic::Reason::Restore,
        ) {
            Ok(_) => true,
            Err(e) => {
                self.err(p, format!("not replaced: {e}"));
                false
            }
        }
    }

    /// The generation's entry at `p`.
    fn entry(&self, p: &RelPath) -> Option<&'a Entry> {
        let m: &'a Manifest = self.m;
        self.index.get(p.as_str()).map(|&i| &m.entries[i])
    }

    /// The live directory holding `p` if it exists as a real directory; never creates.
    fn existing_parent(&mut self, p: &RelPath) -> Option<Rc<Dir>> {
        let key = parent_key(p);
        if let Some(d) = self.dirs.get(&key) {
            return Some(Rc::clone(d));
        }
        let d = self
            .open_via_ancestor(&key)
            .unwrap_or_else(|| self.live.parent_of(p, false))
            .ok()?;
        if self.dirs.len() >= DIR_CACHE {
            self.dirs.clear();
        }
        let d = Rc::new(d);
        self.dirs.insert(key, Rc::clone(&d));
        Some(d)
    }

    /// Opens the directory `key` from its deepest ancestor already open, one real directory
    /// at a time (`open_dir` never follows a symlink, as `parent_of` from the root).
    fn open_via_ancestor(&self, key: &str) -> Option<io::Result<Dir>> {
        let comps: Vec<&str> = key.split('/').collect();
        (1..comps.len()).rev().find_map(|i| {
            let base = self.dirs.get(&comps[..i].join("/"))?;
            let mut cur = base.open_dir(comps[i]);
            for c in &comps[i + 1..] {
                cur = cur.and_then(|d| d.open_dir(c));
            }
            Some(cur)
        })
    }

    /// Temp files of a killed restore can only sit where a restore writes: looked for once in
    /// each directory this one writes to (everywhere when completing an interrupted one).
    fn clean_once(&mut self, d: &Dir, p: &RelPath) {
        if self.cleaned.insert(parent_key(p)) {
            self.clean_temps(d);
        }
    }

    /// Temp files of a killed restore beside files of this generation.
    fn clean_temps(&self, d: &Dir) {
        for name in d.list().unwrap_or_default() {
            if fsx::is_temp_name(&name) {
                remove_stale_temp(d, &name, Some(self.m));
            }
        }
    }

    fn put(&mut self, e: &Entry) -> Result<(), HookError> {
        let Some(d) = self.parent(&e.path)? else {
            return Ok(());
        };
        let st = match d.lstat(e.path.file_name()) {
            Ok(s) => s,
            Err(err) => {
                self.err(&e.path, err);
                return Ok(());
            }
        };
        match &e.kind {
            Kind::Dir => self.put_dir(&d, e, st),
            Kind::Symlink { target } => self.put_symlink(&d, e, target, st),
            Kind::File { .. } => {
                let desired = match self.transformed(e) {
                    Ok(Some(b)) => Desired::Bytes(b),
                    Ok(None) => Desired::Staged,
                    Err(msg) => {
                        self.err(&e.path, msg);
                        return Ok(());
                    }
                };
                self.put_file_bytes(&d, e, st, desired)
            }
        }
    }

    /// Clears the way for a new entry where live holds something of another kind.
    fn clear_for(&mut self, d: &Dir, e: &Entry, st: &Stat) -> Result<bool, HookError> {
        if st.kind == FileType::Dir {
            let gone = self.remove_tree(d, e.path.file_name(), &e.path)?;
            if !gone {
                self.err(
                    &e.path,
                    "a directory holding excluded or per-node paths is in the way",
                );
            }
            return Ok(gone);
        }
        Ok(true)
    }

    fn put_dir(&mut self, d: &Dir, e: &Entry, st: Option<Stat>) -> Result<(), HookError> {
        let name = e.path.file_name();
        match st {
            Some(s) if s.kind == FileType::Dir => {
                // Metadata is set once the content is final (`fix_dirs`); an mtime that moved
                // alone is fixed without counting as a change.
                if s.mode != e.mode || (fsx::can_chown() && (s.uid != e.uid || s.gid != e.gid)) {
                    self.changed.insert(e.path.to_abs());
                }
                return Ok(());
            }
            Some(_) => {
                if !self.keep(d, &e.path) {
                    return Ok(());
                }
                self.note(&e.path)?;
                if let Err(err) = d.unlink(name) {
                    self.err(&e.path, err);
                    return Ok(());
                }
            }
            None => self.note(&e.path)?,
        }
        self.dirs.clear();
        match d.mkdir(name, 0o700) {
            Ok(()) => {
                self.changed.insert(e.path.to_abs());
                self.touched.insert(parent_key(&e.path));
            }
            Err(err) => self.err(&e.path, err),
        }
        Ok(())
    }

    fn put_symlink(
        &mut self,
        d: &Dir,
        e: &Entry,
        target: &str,
        st: Option<Stat>,
    ) -> Result<(), HookError> {
        let name = e.path.file_name();
        if let Some(s) = st {
            if s.kind == FileType::Symlink && d.read_link(name).ok().as_deref() == Some(target) {
                if Self::meta_differs(&s, e, true) {
                    self.note(&e.path)?;
                    match d.set_meta(name, meta_of(e), true) {
                        Ok(()) => {
                            self.changed.insert(e.path.to_abs());
                        }
                        Err(err) => self.err(&e.path, err),
                    }
                }
                return Ok(());
            }
            self.note(&e.path)?;
            if !self.clear_for(d, e, &s)? {
                return Ok(());
            }
        } else {
            self.note(&e.path)?;
        }
        self.clean_once(d, &e.path);
        if !self.keep(d, &e.path) {
            return Ok(());
        }
        match d.symlink_atomic(target, name, Some(meta_of(e))) {
            Ok(()) => {
                self.changed.insert(e.path.to_abs());
                self.touched.insert(parent_key(&e.path));
            }
            Err(err) => self.err(&e.path, err),
        }
        Ok(())
    }

    /// The bytes of a file that live does not hold verbatim: `None` for most files.
    fn transformed(&self, e: &Entry) -> Result<Option<Vec<u8>>, String> {
        match e.path.as_str() {
            SYSTEM_CONFIG => {
                let staged = self.read_staged(e)?;
                identity::keep_hostname(&staged, self.hostname.as_deref()).map(Some)
            }
            CRONTAB => {
                let staged = self.read_staged(e)?;
                Ok(Some(match std::str::from_utf8(&staged) {
                    Ok(t) => cron::effective(t, self.master).into_bytes(),
                    Err(_) => staged,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The staged copy, checked against the manifest: a staging tree changed behind the
    /// commit's back (or a symlink planted in it) never reaches live.
    fn read_staged(&self, e: &Entry) -> Result<Vec<u8>, String> {
        let d = self.staged.parent_of(&e.path, false).map_err(|err| {
            format!("staged copy unreachable without following a symlink or a non-directory: {err}")
        })?;
        let bytes = d
            .read_file(e.path.file_name(), MAX_FILE_SIZE)
            .map_err(|err| format!("staged copy: {err}"))?;
        if Some(Hash::of(&bytes)) != e.file_hash() {
            return Err("staged copy does not match the committed manifest".into());
        }
        Ok(bytes)
    }

    fn put_file_bytes(
        &mut self,
        d: &Rc<Dir>,
        e: &Entry,
        st: Option<Stat>,
        desired: Desired,
    ) -> Result<(), HookError> {
        let name = e.path.file_name();
        if let Some(s) = st.filter(|s| s.kind == FileType::File) {
            let same = match &desired {
                Desired::Staged => {
                    s.size == e.size() && self.live_hash(d, &e.path, &s) == e.file_hash()
                }
                Desired::Bytes(b) => {
                    s.size == b.len() as u64
                        && d.read_file(name, MAX_FILE_SIZE).is_ok_and(|l| l == *b)
                }
            };
            if same {
                let staged = matches!(desired, Desired::Staged);
                if Self::meta_differs(&s, e, false) {
                    self.note(&e.path)?;
                    match d.set_meta(name, meta_of(e), false) {
                        Ok(()) => {
                            self.changed.insert(e.path.to_abs());
                            self.verified(d, e, staged);
                        }
                        Err(err) => self.err(&e.path, err),
                    }
                }
                return Ok(());
            }
        }
        let staged = matches!(desired, Desired::Staged);
        let bytes = match desired {
            Desired::Bytes(b) => b,
            Desired::Staged => match self.read_staged(e) {
                Ok(b) => b,
                Err(msg) => {
                    self.err(&e.path, msg);
                    return Ok(());
                }
            },
        };
        self.note(&e.path)?;
        self.clean_once(d, &e.path);
        if let Some(s) = &st {
            if !self.clear_for(d, e, s)? {
                return Ok(());
            }
        }
        if !self.keep(d, &e.path) {
            return Ok(());
        }
        if self.batch {
            match d.write_temp(name, &bytes, Some(meta_of(e))) {
                Ok(tmp) => self.deferred.push((d.clone(), tmp, e.clone(), staged)),
                Err(err) => self.err(&e.path, err),
            }
            return Ok(());
        }
        match d.write_file_atomic(name, &bytes, Some(meta_of(e))) {
            Ok(()) => {
                sync_core::fault::point(sync_core::fault::RESTORE_FILE);
                self.verified(d, e, staged);
                self.changed.insert(e.path.to_abs());
                self.touched.insert(parent_key(&e.path));
            }
            Err(err) => self.err(&e.path, err),
        }
        Ok(())
    }

    /// The hash of the live file at `p` (stat `s`): from the live stat cache when the file is
    /// as the restore last saw it, else read and remembered.
    fn live_hash(&mut self, d: &Dir, p: &RelPath, s: &Stat) -> Option<Hash> {
        if let Some(h) = self.live_stat.hash(p.as_str(), s) {
            return Some(h);
        }
        let h = live_hash(d, p.file_name())?;
        self.live_stat.record(p.as_str(), s, h);
        Some(h)
    }

    /// `e` was just written to live (or its metadata set): remember what it holds. A file
    /// whose content is transformed on its way (per-node values) is hashed again next time.
    fn verified(&mut self, d: &Dir, e: &Entry, staged: bool) {
        let p = e.path.as_str();
        match (staged, e.file_hash(), d.lstat(e.path.file_name())) {
            (true, Some(h), Ok(Some(st))) => self.live_stat.record(p, &st, h),
            _ => self.live_stat.forget(p),
        }
    }

    /// The batch into place: one flush makes every temp's data durable, then each is renamed
    /// over its path (a crash before a rename leaves the old version and a temp file, which the
    /// next restore sweeps).
    fn flush_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        if let Err(err) = self.live.sync_fs() {
            for (d, tmp, e, _) in std::mem::take(&mut self.deferred) {
                let _ = d.unlink(&tmp);
                self.err(&e.path, format!("flushing the written files: {err}"));
            }
            return;
        }
        for (d, tmp, e, staged) in std::mem::take(&mut self.deferred) {
            match d.rename(&tmp, e.path.file_name()) {
                Ok(()) => {
                    sync_core::fault::point(sync_core::fault::RESTORE_FILE);
                    self.verified(&d, &e, staged);
                    self.changed.insert(e.path.to_abs());
                    self.touched.insert(parent_key(&e.path));
                }
                Err(err) => {
                    let _ = d.unlink(&tmp);
                    self.err(&e.path, err);
                }
            }
        }
    }

    /// Directory metadata, deepest first, once everything inside is final.
    fn fix_dirs(&mut self) -> Result<(), HookError> {
        for e in self
            .m
            .entries
            .iter()
            .rev()
            .filter(|e| is_dir(e) && !is_per_node(&e.path))
        {
            let Some(d) = self.existing_parent(&e.path) else {
                continue;
            };
            let Ok(Some(s)) = d.lstat(e.path.file_name()) else {
                continue;
            };
            if s.kind != FileType::Dir {
                continue;
            }
            if !Self::meta_differs(&s, e, false) {
                // Its names are final: the next restore need not list it (see `mirror`).
                self.live_stat.record_dir(e.path.as_str(), &s);
                continue;
            }
            self.note(&e.path)?;
            match d
                .open_dir(e.path.file_name())
                .and_then(|x| x.set_own_meta(meta_of(e)).and_then(|()| x.lstat(".")))
            {
                Ok(Some(s)) => self.live_stat.record_dir(e.path.as_str(), &s),
                Ok(None) => {}
                Err(err) => self.err(&e.path, err),
            }
        }
        Ok(())
    }

    /// Makes the renames and removals durable before the journal says "done".
    fn sync_dirs(&self) {
        if self.touched.len() > BATCH_MIN {
            // One flush of the filesystem instead of a journal commit per directory (a first
            // restore touches hundreds).
            if let Err(e) = self.live.sync_fs() {
                tracing::warn!("syncfs {}: {e}", self.live.path().display());
            }
            return;
        }
        for key in &self.touched {
            let d = if key.is_empty() {
                self.live.open_dir(".")
            } else {
                match RelPath::new(key.as_str()) {
                    Ok(p) => self.live.open_rel_dir(&p),
                    Err(_) => continue,
                }
            };
            match d.and_then(|d| d.sync()) {
                // A directory removed later in the same restore: its parent is synced.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("fsync {}/{key}: {e}", self.live.path().display()),
                Ok(()) => {}
            }
        }
    }
}

/// [`Applier::protected`]: the node's own directories, relative to its root.
fn protected_dirs(ctx: &Ctx) -> Vec<String> {
    let node = sync_core::node::Node::new(ctx.root);
    let mut dirs = node.protected_dirs();
    dirs.push(ctx.staging.to_path_buf());
    let mut rel: Vec<String> = dirs
        .iter()
        .filter_map(|d| d.strip_prefix(ctx.root).ok())
        .map(|r| r.to_string_lossy().trim_end_matches('/').to_string())
        .filter(|r| !r.is_empty())
        .collect();
    rel.sort();
    rel.dedup();
    rel
}

fn live_hash(d: &Dir, name: &str) -> Option<Hash> {
    let f = d.open_file(name).ok()?;
    let mut h = blake3::Hasher::new();
    h.update_reader(f).ok()?;
    Some(Hash(*h.finalize().as_bytes()))
}

/// Removes a temp file of ours whose writer is dead (a killed restore). With `m`, only the
/// temp files of names the generation holds: another ha-sync process may be writing its
/// own files in the same directory (UCI edits), and its temp file is not ours to take.
fn remove_stale_temp(d: &Dir, name: &str, m: Option<&Manifest>) {
    let Some((base, rest)) = name
        .strip_prefix('.')
        .and_then(|n| n.split_once(".ha-sync-tmp."))
    else {
        return;
    };
    if let Some(m) = m {
        let ours = m
            .entries
            .iter()
            .any(|e| e.path.file_name().chars().take(100).eq(base.chars()));
        if !ours {
            return;
        }
    }
    let pid: i32 = match rest.split('.').next().and_then(|p| p.parse().ok()) {
        Some(p) => p,
        None => return,
    };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let alive = pid == std::process::id() as i32
        || unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !alive {
        if let Err(e) = d.unlink(name) {
            tracing::warn!("{}/{name}: {e}", d.path().display());
        }
    }
}

/// Package conffiles of this node (`Conffiles:` of `usr/lib/opkg/status`), as router paths.
fn conffiles(root: &std::path::Path) -> HashSet<String> {
    let text = std::fs::read_to_string(root.join("usr/lib/opkg/status")).unwrap_or_default();
    let mut out = HashSet::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Conffiles:") {
            inside = true;
        } else if inside && line.starts_with(' ') {
            if let Some(p) = line.split_whitespace().next() {
                out.insert(p.to_string());
            }
        } else {
            inside = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use sync_core::local::{staging_only, sync_local};
    use sync_core::runner::RecordingRunner;
    use sync_core::staging::Staging;
    use sync_core::testing::write;

    /// `etc/app/` synced from `a` into `b`'s staging; the committed generation.
    fn sync(a: &Path, b: &Path) -> Manifest {
        sync_local(a, b, &RecordingRunner::new(), &mut staging_only).unwrap();
        Manifest::clone(
            Staging::open(&sync_core::Node::new(b).staging_dir())
                .unwrap()
                .committed()
                .unwrap(),
        )
    }

    fn run(b: &Path, m: &Manifest, thorough: bool) -> RestoreReport {
        let staging = sync_core::Node::new(b).staging_dir();
        let r = RecordingRunner::new();
        let ctx = Ctx {
            root: b,
            staging: &staging,
            runner: &r,
        };
        let opts = Options {
            master: false,
            recover: None,
            thorough,
        };
        restore(&ctx, m, m.root_hash(), opts)
    }

    fn pair(d: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let (a, b) = (d.join("a"), d.join("b"));
        for r in [&a, &b] {
            write(
                r,
                "etc/config/keepalived",
                "config peer 'ha_peer'\n\tlist sync_list '/etc/app/'\n",
            );
            write(r, "etc/sysupgrade.conf", "");
        }
        write(&a, "etc/app/conf", "from the primary\n");
        write(&a, "etc/app/sub/deep", "deep\n");
        (a, b)
    }

    /// What the stat cache vouches for is trusted by a restore and checked by the thorough
    /// pass. The cache is forged here (a file whose content changed under an unchanged stat
    /// cannot be made from user space), standing for what a stat cannot show.
    #[test]
    fn the_thorough_pass_reads_what_the_stat_cache_vouches_for() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = pair(d.path());
        let m = sync(&a, &b);
        assert!(run(&b, &m, false).applied);

        let live = b.join("etc/app/conf");
        let before = std::fs::metadata(&live).unwrap();
        std::fs::write(&live, "FROM THE PRIMARY\n").unwrap(); // same size, mtime put back
        filetime::set_file_mtime(
            &live,
            filetime::FileTime::from_last_modification_time(&before),
        )
        .unwrap();
        let st = Dir::open(&b.join("etc/app"), false)
            .unwrap()
            .lstat("conf")
            .unwrap()
            .unwrap();
        let state = b.join(sync_core::node::STATE_DIR);
        let mut cache = LiveStat::load(&state);
        let staged = m.get(&RelPath::new("etc/app/conf").unwrap()).unwrap();
        cache.record("etc/app/conf", &st, staged.file_hash().unwrap());
        cache.save();

        assert!(
            run(&b, &m, false).changed.is_empty(),
            "the cache is trusted"
        );
        let rep = run(&b, &m, true);
        assert_eq!(rep.changed, ["/etc/app/conf"]);
        assert_eq!(
            std::fs::read_to_string(&live).unwrap(),
            "from the primary\n"
        );
    }

    /// A directory the primary removed goes whole, every file in it kept in the attic first
    /// (copied unflushed, one flush, then the deletions).
    #[test]
    fn a_removed_directory_is_kept_in_the_attic_file_by_file() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = pair(d.path());
        write(&a, "etc/app/sub/more/x", "x\n");
        write(&a, "etc/app/sub/y", "y\n");
        let m = sync(&a, &b);
        assert!(run(&b, &m, false).applied);

        std::fs::remove_dir_all(a.join("etc/app/sub")).unwrap();
        let m2 = sync(&a, &b);
        let rep = run(&b, &m2, false);
        assert!(rep.applied, "{rep:?}");
        assert!(!b.join("etc/app/sub").exists());
        let attic = Attic::new(&sync_core::Node::new(&b));
        let mut kept: Vec<String> = attic
            .list(None)
            .unwrap()
            .into_iter()
            .map(|k| k.path)
            .collect();
        kept.sort();
        assert_eq!(
            kept,
            ["etc/app/sub/deep", "etc/app/sub/more/x", "etc/app/sub/y"]
        );
        let x = RelPath::new("etc/app/sub/more/x").unwrap();
        attic.restore(&sync_core::Node::new(&b), &x, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(b.join("etc/app/sub/more/x")).unwrap(),
            "x\n"
        );
    }

    /// A mirrored directory the last restore left complete is not listed; one that changed
    /// since, or that lost a name in the new generation, is.
    #[test]
    fn only_directories_that_changed_are_listed_again() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = pair(d.path());
        let m = sync(&a, &b);
        assert!(run(&b, &m, false).applied);

        // A stray file in a directory the cache vouches for: its ctime moved, so it is
        // listed and the stray deleted.
        write(&b, "etc/app/sub/stray", "not on the primary\n");
        let rep = run(&b, &m, false);
        assert_eq!(rep.changed, ["/etc/app/sub/stray"]);
        assert!(!b.join("etc/app/sub/stray").exists());

        // The primary deletes a file: its directory is listed although unchanged live.
        std::fs::remove_file(a.join("etc/app/sub/deep")).unwrap();
        let m2 = sync(&a, &b);
        let rep = run(&b, &m2, false);
        assert_eq!(rep.changed, ["/etc/app/sub/deep"]);
        assert!(!b.join("etc/app/sub/deep").exists());
        assert!(run(&b, &m2, false).changed.is_empty());
    }
}
