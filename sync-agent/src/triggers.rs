//! What wakes the daemon: inotify events on the paths that decide what is synced, folded
//! into bursts.
//!
//! **What is watched** ([`Plan`]). Every path that can change the manifest: the entries of
//! the restore list, the `sync_list` entries (also those that do not exist yet), the lines of
//! the keep lists (`sysupgrade.conf`, `keep.d/*`: a new file below a kept directory joins the
//! list) and opkg's conffiles (a conffile joins the list when first edited). A directory is
//! watched recursively; a file through its parent directory, because editors and `uci commit`
//! replace files by renaming a temporary file over them, which a watch on the file's own inode
//! would miss; a missing path through its nearest existing ancestor. The inputs of the list
//! (`restore_list::inputs`) are watched the same way and marked: a change there recomputes
//! the list and the watches. The hooks' VRRP state file is watched too: the daemon starts or
//! stops sending as soon as keepalived's event is recorded, without polling.
//!
//! **Noise.** Events for paths that are none of these (other files in a watched directory,
//! opens and reads, the daemon's own status files) are dropped. A false positive costs one
//! sync that finds nothing changed; the stat cache makes that a few milliseconds.
//!
//! **Bursts** ([`Debounce`]). The first change after a quiet period syncs at once (after
//! [`LEADING`], long enough for a write-then-rename to land): an admin's edit reaches the
//! backup in tens of milliseconds. What arrives while a sync runs, or within 200 ms of the last
//! one, waits for 200 ms without events, and at most 2 s after the first event of its burst,
//! so a flood of edits becomes a few syncs and a steady trickle cannot postpone them forever.
//!
//! **Lost events.** A queue overflow (inotify's, flagged by notify as "rescan", or ours when
//! the daemon falls behind) or a watch that cannot be set (`max_user_watches`) means a change
//! may have gone unseen: the daemon warns, re-establishes every watch and syncs in full. The
//! periodic reconcile is the last safety net.

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{Config, INotifyWatcher, RecursiveMode, Watcher as _};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync_core::node::{Node, STATE_DIR};
use sync_core::restore_list::{self, RestoreList};
use tokio::sync::{mpsc, Notify};

/// Quiet time that ends a burst.
pub const QUIET: Duration = Duration::from_millis(200);
/// Delay of a burst's leading edge: `uci commit` and editors write a temporary file and rename
/// it; a few milliseconds let the rename land so the first sync carries the finished file.
pub const LEADING: Duration = Duration::from_millis(10);
/// Longest a burst may postpone its sync.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// Events queued between notify's thread and the daemon before we count an overflow.
const QUEUE: usize = 4096;

/// Folds events into bursts. A burst that starts after a quiet period (nothing synced for
/// `quiet`) is due at once (its leading edge, [`LEADING`] later); any other is due `quiet`
/// after its last event, and never later than `max` after its first.
#[derive(Debug, Clone)]
pub struct Debounce {
    quiet: Duration,
    max: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
    /// This burst began after a quiet period: it does not wait for more.
    leading: bool,
    /// When the last sync ended.
    synced: Option<Instant>,
}

impl Debounce {
    pub fn new(quiet: Duration, max: Duration) -> Debounce {
        Debounce {
            quiet,
            max,
            first: None,
            last: None,
            leading: false,
            synced: None,
        }
    }

    /// An event at `at`.
    pub fn note(&mut self, at: Instant) {
        if self.first.is_none() {
            self.leading = self
                .synced
                .is_none_or(|s| at.saturating_duration_since(s) >= self.quiet);
        }
        self.first.get_or_insert(at);
        self.last = Some(self.last.map_or(at, |l| l.max(at)));
    }

    /// A sync ended at `at`: events in the next `quiet` are a burst of their own, coalesced.
    pub fn synced(&mut self, at: Instant) {
        self.synced = Some(at);
    }

    /// When the pending burst is due, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        if self.leading {
            return Some(first + LEADING.min(self.quiet));
        }
        Some((last + self.quiet).min(first + self.max))
    }

    pub fn is_pending(&self) -> bool {
        self.first.is_some()
    }

    /// Ends the burst; returns the time of its first event.
    pub fn take(&mut self) -> Option<Instant> {
        self.last = None;
        self.leading = false;
        self.first.take()
    }
}

/// What an event means to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relevance {
    /// Not a path that decides what is synced.
    Ignore,
    /// Something synced (or about to be) changed.
    Change,
    /// An input of the restore list changed: recompute the list and the watches.
    ListInput,
    /// The VRRP state record changed: may start or stop sending.
    Gate,
}

/// The watches a restore list needs, and how to read events on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Directory -> recursive? (no entry lies below a recursive one).
    pub watches: BTreeMap<PathBuf, bool>,
    /// Host paths whose change, creation or removal may change the manifest.
    specs: BTreeSet<PathBuf>,
    /// The restore list's entries (host paths): files, and directories mirrored whole.
    listed_files: BTreeSet<PathBuf>,
    listed_dirs: BTreeSet<PathBuf>,
    inputs: BTreeSet<PathBuf>,
    /// `lib/upgrade/keep.d`: anything inside is an input.
    input_dirs: Vec<PathBuf>,
    gate: BTreeSet<PathBuf>,
    /// The daemon's own files: never relevant.
    own: Vec<PathBuf>,
}

const GLOB_CHARS: &[char] = &['*', '?', '['];
const KEEP_D: &str = "lib/upgrade/keep.d";
const SYSUPGRADE_CONF: &str = "etc/sysupgrade.conf";
const OPKG_STATUS: &str = "usr/lib/opkg/status";

fn host(root: &Path, abs: &str) -> Option<PathBuf> {
    let norm = restore_list::normalize_abs(abs).ok()?;
    Some(root.join(norm.trim_start_matches('/')))
}

/// The part of a keep-list line before its first glob component (`/etc/foo/*.conf` ->
/// `/etc/foo`): events below it may concern a path the glob matches.
fn glob_base(line: &str) -> String {
    let mut base = String::new();
    for comp in line.split('/').filter(|c| !c.is_empty()) {
        if comp.contains(GLOB_CHARS) {
            break;
        }
        base.push('/');
        base.push_str(comp);
    }
    base
}

/// Paths named by the keep lists (`sysupgrade.conf`, `keep.d/*`), globs cut to their base.
fn keep_list_paths(root: &Path) -> Vec<String> {
    let mut files = vec![root.join(SYSUPGRADE_CONF)];
    if let Ok(rd) = std::fs::read_dir(root.join(KEEP_D)) {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    let mut out = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let p = if line.contains(GLOB_CHARS) {
                glob_base(line)
            } else {
                line.to_string()
            };
            if !p.is_empty() {
                out.push(p);
            }
        }
    }
    out
}

/// Every conffile opkg knows (`Conffiles:` of `usr/lib/opkg/status`).
fn conffiles(root: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(root.join(OPKG_STATUS)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("Conffiles:") {
            inside = true;
        } else if !line.starts_with(' ') {
            inside = false;
        } else if inside {
            if let Some(p) = line.split_whitespace().next() {
                out.push(p.to_string());
            }
        }
    }
    out
}

/// The directory that shows changes of `path` and whether recursively: the directory itself
/// (recursively), or the parent of a file, or the nearest existing ancestor of a missing
/// path; never above `root`.
fn watch_for(root: &Path, path: &Path, recursive_dir: bool) -> Option<(PathBuf, bool)> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Some((path.to_path_buf(), recursive_dir)),
        Ok(_) => {}
        Err(_) => {}
    }
    let mut p = path.parent()?;
    loop {
        if !p.starts_with(root) {
            return None;
        }
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            return Some((p.to_path_buf(), false));
        }
        p = p.parent()?;
    }
}

impl Plan {
    /// The plan for `list` (the restore list computed under `root`). `socket`: the daemon's
    /// control socket, never a reason to sync.
    pub fn compute(root: &Path, list: &RestoreList, socket: &Path) -> Plan {
        let mut specs = BTreeSet::new();
        let (mut listed_files, mut listed_dirs) = (BTreeSet::new(), BTreeSet::new());
        for e in &list.entries {
            if let Some(h) = host(root, &e.path) {
                specs.insert(h.clone());
                match e.kind {
                    restore_list::EntryKind::Dir => listed_dirs.insert(h),
                    restore_list::EntryKind::File => listed_files.insert(h),
                };
            }
        }
        let uci = Node::new(root).keepalived().unwrap_or_default();
        for raw in uci.get_list("ha_peer", "sync_list") {
            if let Some(h) = host(root, &raw) {
                specs.insert(h);
            }
        }
        for p in keep_list_paths(root).iter().chain(conffiles(root).iter()) {
            if let Some(h) = host(root, p) {
                specs.insert(h);
            }
        }
        let inputs: BTreeSet<PathBuf> = restore_list::inputs(root).into_iter().collect();
        let state_dir = root.join(STATE_DIR);
        let gate: BTreeSet<PathBuf> = [state_dir.join("vrrp_state")].into_iter().collect();

        let mut wanted: Vec<(PathBuf, bool)> = Vec::new();
        for s in &specs {
            wanted.extend(watch_for(root, s, true));
        }
        for i in inputs.iter().chain(gate.iter()) {
            // Inputs are files, or keep.d whose files are read, not walked.
            wanted.extend(watch_for(root, i, false));
            if i.ends_with(KEEP_D) {
                wanted.extend(watch_for(root, i.parent().unwrap_or(root), false));
            }
        }
        Plan {
            watches: normalize(wanted),
            specs,
            listed_files,
            listed_dirs,
            inputs,
            input_dirs: vec![root.join(KEEP_D)],
            gate,
            own: vec![state_dir, socket.to_path_buf(), root.join("var/state")],
        }
    }

    /// What a change of `path` means.
    pub fn classify(&self, path: &Path) -> Relevance {
        if self.gate.contains(path) {
            return Relevance::Gate;
        }
        if self.own.iter().any(|o| path.starts_with(o)) {
            return Relevance::Ignore;
        }
        if self.inputs.contains(path) || self.input_dirs.iter().any(|d| path.starts_with(d)) {
            return Relevance::ListInput;
        }
        // The path itself, one of its ancestors (inside a listed directory), or one of its
        // descendants (a directory on the way to a listed path was created or removed).
        if path.ancestors().any(|a| self.specs.contains(a))
            || self
                .specs
                .range(path.to_path_buf()..)
                .next()
                .is_some_and(|s| s.starts_with(path))
        {
            return Relevance::Change;
        }
        Relevance::Ignore
    }
}

impl Plan {
    /// Whether a change of `path` may change the restore list itself (not only the manifest),
    /// so that it must be computed again: a path inside a listed directory never does (the
    /// directory is one entry), nor a listed file that is still there; anything else may
    /// (a new file below a kept directory, a first edit of a conffile, a listed file gone).
    pub fn list_may_change(&self, path: &Path) -> bool {
        if path
            .ancestors()
            .any(|a| a != path && self.listed_dirs.contains(a))
        {
            return false;
        }
        if self.listed_files.contains(path) || self.listed_dirs.contains(path) {
            return std::fs::symlink_metadata(path).is_err();
        }
        true
    }
}

/// Drops watches covered by a recursive watch of themselves or an ancestor; a directory
/// wanted both ways is watched recursively.
fn normalize(wanted: Vec<(PathBuf, bool)>) -> BTreeMap<PathBuf, bool> {
    let mut m: BTreeMap<PathBuf, bool> = BTreeMap::new();
    for (p, rec) in wanted {
        let e = m.entry(p).or_insert(rec);
        *e |= rec;
    }
    let recursive: Vec<PathBuf> = m
        .iter()
        .filter(|(_, r)| **r)
        .map(|(p, _)| p.clone())
        .collect();
    m.retain(|p, _| !recursive.iter().any(|r| p != r && p.starts_with(r)));
    m
}

/// What notify's thread hands the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    /// Something happened to these paths.
    Paths(Vec<PathBuf>),
    /// Events were lost: rescan everything.
    Rescan(String),
    /// A watch failed (e.g. while following a new directory); `limit`: the inotify watch
    /// limit was reached.
    WatchError { message: String, limit: bool },
}

/// Set when events had to be dropped because the daemon fell behind.
#[derive(Debug, Default)]
pub struct Overflow {
    flag: AtomicBool,
    notify: Notify,
}

impl Overflow {
    /// Whether events were dropped and [`wait`](Overflow::wait) has not reported it yet.
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once events were dropped since the last call; clears the flag.
    pub async fn wait(&self) {
        loop {
            if self.flag.swap(false, Ordering::SeqCst) {
                return;
            }
            self.notify.notified().await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("inotify: {0}")]
    Init(String),
}

/// What applying a plan did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub added: usize,
    pub removed: usize,
    /// Watches that failed, with why.
    pub failed: Vec<(PathBuf, String)>,
    /// The inotify watch limit was hit.
    pub limit: bool,
}

/// The inotify watches, kept equal to a [`Plan`].
pub struct Watcher {
    inner: INotifyWatcher,
    current: BTreeMap<PathBuf, bool>,
}

impl Watcher {
    /// Starts notify's inotify thread; events go to the returned receiver.
    pub fn new() -> Result<(Watcher, mpsc::Receiver<RawEvent>, Arc<Overflow>), TriggerError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let overflow = Arc::new(Overflow::default());
        let of = overflow.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let ev = match res {
                Ok(ev) if ev.need_rescan() => RawEvent::Rescan("inotify queue overflow".into()),
                // Opens and reads (our own scans among them) change nothing.
                Ok(notify::Event {
                    kind:
                        EventKind::Access(
                            AccessKind::Open(_)
                            | AccessKind::Close(AccessMode::Read)
                            | AccessKind::Read,
                        ),
                    ..
                }) => return,
                Ok(ev) if ev.paths.is_empty() => return,
                Ok(ev) => RawEvent::Paths(ev.paths),
                Err(e) => RawEvent::WatchError {
                    limit: matches!(e.kind, notify::ErrorKind::MaxFilesWatch),
                    message: e.to_string(),
                },
            };
            if tx.try_send(ev).is_err() {
                of.flag.store(true, Ordering::SeqCst);
                of.notify.notify_one();
            }
        };
        // Never follow symlinks: a listed directory may hold links that point anywhere.
        let inner = INotifyWatcher::new(handler, Config::default().with_follow_symlinks(false))
            .map_err(|e| TriggerError::Init(e.to_string()))?;
        Ok((
            Watcher {
                inner,
                current: BTreeMap::new(),
            },
            rx,
            overflow,
        ))
    }

    /// Directories watched (a recursive watch counts once).
    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// Makes the watches those of `plan`: removals first, so a directory that moves from its
    /// own watch into a parent's recursive one is not unwatched after being re-added.
    pub fn apply(&mut self, plan: &Plan) -> ApplyReport {
        let mut rep = ApplyReport::default();
        let stale: Vec<PathBuf> = self
            .current
            .iter()
            .filter(|(p, r)| plan.watches.get(*p) != Some(*r))
            .map(|(p, _)| p.clone())
            .collect();
        for p in stale {
            // A directory that is gone has lost its watch already.
            let _ = self.inner.unwatch(&p);
            self.current.remove(&p);
            rep.removed += 1;
        }
        for (p, rec) in &plan.watches {
            if self.current.contains_key(p) {
                continue;
            }
            let mode = if *rec {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match self.inner.watch(p, mode) {
                Ok(()) => {
                    self.current.insert(p.clone(), *rec);
                    rep.added += 1;
                }
                Err(e) => {
                    if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                        rep.limit = true;
                    }
                    // A path removed since the plan was made is no failure: the event of
                    // its removal triggers a sync, which makes a new plan.
                    if !matches!(e.kind, notify::ErrorKind::PathNotFound)
                        && !matches!(&e.kind, notify::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::NotFound)
                    {
                        rep.failed.push((p.clone(), e.to_string()));
                    }
                }
            }
        }
        rep
    }

    /// Drops every watch and sets the plan's again (after lost events: a directory created
    /// meanwhile may lack its watch).
    pub fn reset(&mut self, plan: &Plan) -> ApplyReport {
        let all: Vec<PathBuf> = self.current.keys().cloned().collect();
        for p in all {
            let _ = self.inner.unwatch(&p);
        }
        self.current.clear();
        self.apply(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_core::restore_list::{EntryKind, ListEntry};

    #[test]
    fn debounce_syncs_the_first_change_after_quiet_at_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debounce::new(ms(200), ms(2000));
        // Nothing synced yet: the first event is a leading edge.
        d.note(t0);
        d.note(t0 + ms(5));
        assert_eq!(d.deadline(), Some(t0 + LEADING));
        assert_eq!(d.take(), Some(t0));
        d.synced(t0 + ms(40));
        // Events that arrived during the sync, or right after it, wait for quiet.
        d.note(t0 + ms(41));
        assert_eq!(d.deadline(), Some(t0 + ms(241)));
        d.take();
        d.synced(t0 + ms(300));
        // Quiet again: the next edit goes at once.
        d.note(t0 + ms(900));
        assert_eq!(d.deadline(), Some(t0 + ms(900) + LEADING));
    }

    #[test]
    fn debounce_waits_for_quiet_but_not_forever() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debounce::new(ms(200), ms(2000));
        assert_eq!(d.deadline(), None);
        // A sync just ended: this burst is coalesced.
        d.synced(t0);
        d.note(t0);
        assert_eq!(d.deadline(), Some(t0 + ms(200)));
        d.note(t0 + ms(150));
        assert_eq!(d.deadline(), Some(t0 + ms(350)));
        // A steady trickle: the cap wins.
        for i in 0..100 {
            d.note(t0 + ms(150 * i));
        }
        assert_eq!(d.deadline(), Some(t0 + ms(2000)));
        assert_eq!(d.take(), Some(t0));
        assert!(!d.is_pending());
        assert_eq!(d.deadline(), None);
    }

    fn root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in [
            "etc/config",
            "etc/ha/sub",
            "tmp",
            "var/run/ha-sync",
            "lib/upgrade/keep.d",
        ] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
        }
        std::fs::write(
            r.join("etc/config/keepalived"),
            "config peer 'ha_peer'\n\tlist sync_list '/etc/ha'\n\tlist sync_list '/etc/openvpn'\n",
        )
        .unwrap();
        std::fs::write(r.join("etc/config/firewall"), "x").unwrap();
        std::fs::write(
            r.join("etc/sysupgrade.conf"),
            "/etc/keep/*.conf\n# comment\n",
        )
        .unwrap();
        d
    }

    fn list() -> RestoreList {
        RestoreList {
            entries: vec![
                ListEntry {
                    path: "/etc/config/firewall".into(),
                    kind: EntryKind::File,
                },
                ListEntry {
                    path: "/etc/ha".into(),
                    kind: EntryKind::Dir,
                },
            ],
            ..RestoreList::default()
        }
    }

    #[test]
    fn plan_watches_parents_dirs_and_ancestors_of_missing_paths() {
        let d = root();
        let r = d.path();
        let plan = Plan::compute(r, &list(), &r.join("var/run/ha-sync.sock"));
        let w = &plan.watches;
        assert_eq!(w.get(&r.join("etc/ha")), Some(&true), "{w:?}");
        assert_eq!(w.get(&r.join("etc/config")), Some(&false), "{w:?}");
        // /etc/openvpn and /etc/keep do not exist: /etc shows their creation.
        assert_eq!(w.get(&r.join("etc")), Some(&false), "{w:?}");
        assert_eq!(w.get(&r.join("lib/upgrade/keep.d")), Some(&false), "{w:?}");
        assert_eq!(w.get(&r.join("var/run/ha-sync")), Some(&false), "{w:?}");
        assert!(!w.contains_key(&r.join("etc/ha/sub")), "covered by etc/ha");
    }

    #[test]
    fn classify() {
        let d = root();
        let r = d.path();
        let plan = Plan::compute(r, &list(), &r.join("var/run/ha-sync.sock"));
        let c = |p: &str| plan.classify(&r.join(p));
        assert_eq!(c("etc/config/firewall"), Relevance::Change);
        assert_eq!(c("etc/config/.firewall.uci-tmp"), Relevance::Ignore);
        assert_eq!(c("etc/ha/sub/new"), Relevance::Change);
        assert_eq!(c("etc/openvpn"), Relevance::Change, "listed, appears");
        assert_eq!(
            c("etc/keep/a.conf"),
            Relevance::Change,
            "below a glob's base"
        );
        assert_eq!(c("etc/config/keepalived"), Relevance::ListInput);
        assert_eq!(c("etc/sysupgrade.conf"), Relevance::ListInput);
        assert_eq!(c("lib/upgrade/keep.d/x"), Relevance::ListInput);
        assert_eq!(c("var/run/ha-sync/vrrp_state"), Relevance::Gate);
        assert_eq!(c("var/run/ha-sync/status.json"), Relevance::Ignore);
        assert_eq!(c("tmp/other"), Relevance::Ignore);
    }

    #[test]
    fn what_may_change_the_list() {
        let d = root();
        let r = d.path();
        let plan = Plan::compute(r, &list(), &r.join("var/run/ha-sync.sock"));
        let m = |p: &str| plan.list_may_change(&r.join(p));
        assert!(!m("etc/config/firewall"), "a listed file, still there");
        assert!(!m("etc/ha/sub/new"), "inside a listed directory");
        assert!(m("etc/keep/a.conf"), "a new file below a kept directory");
        assert!(m("etc/config/keepalived"));
        std::fs::remove_file(r.join("etc/config/firewall")).unwrap();
        assert!(m("etc/config/firewall"), "a listed file that is gone");
    }

    #[test]
    fn normalize_keeps_only_uncovered() {
        let n = normalize(vec![
            ("/a/b".into(), false),
            ("/a".into(), true),
            ("/c".into(), false),
            ("/c".into(), true),
            ("/ab".into(), false),
        ]);
        let got: Vec<(String, bool)> = n
            .into_iter()
            .map(|(p, r)| (p.display().to_string(), r))
            .collect();
        assert_eq!(
            got,
            [
                ("/a".to_string(), true),
                ("/ab".to_string(), false),
                ("/c".to_string(), true)
            ]
        );
    }
}
