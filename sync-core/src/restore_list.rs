//! The restore list: which paths the primary syncs.
//!
//! `sysupgrade -l` (or, where it cannot run, the same set computed from `etc/sysupgrade.conf`,
//! `lib/upgrade/keep.d/*` and the changed conffiles of `usr/lib/opkg/status`), plus the
//! `sync_list` of `keepalived.ha_peer`, minus its `exclude_list`.
//!
//! Paths are absolute as seen on the router (`/etc/config/firewall`); `root` is only where they
//! are looked up (`<root>/etc/config/firewall`). A `sync_list` directory stays one entry of kind
//! [`EntryKind::Dir`], mirrored whole later; the scanner applies [`Excludes`] while walking it.
//!
//! Differences from the shell `sysupgrade -l`, on purpose: a line of `sysupgrade.conf` is one
//! path even when it holds spaces (the shell splits it into words), and `{a,b}` in a line is
//! not expanded (busybox ash does not either, but globset would: only `*?[` make a glob here).
//! Conffile checksums are compared as MD5 when 32 hex digits long and as SHA-256 when 64
//! (opkg writes either, depending on its build); any other checksum counts as changed, as it
//! does for `sysupgrade -l`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::node::KEEPALIVED_UCI;
use crate::runner::{Cmd, Runner};
use crate::uci::{Package, UciError};

/// What went wrong computing or reading a restore list.
#[derive(Debug, thiserror::Error)]
pub enum RestoreListError {
    /// An input file could not be read.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// `etc/config/keepalived` is malformed (the error names file and line).
    #[error(transparent)]
    Uci(#[from] UciError),
    /// An `exclude_list` glob that globset refuses.
    #[error("exclude_list: invalid pattern {pattern:?}: {msg}")]
    Pattern { pattern: String, msg: String },
    /// A bad line of a `tmp/restore_list` file.
    #[error("restore list line {line}: {msg}: {path:?}")]
    BadLine {
        line: usize,
        path: String,
        msg: &'static str,
    },
}

/// What a listed path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A single path: a regular file or a symlink (never followed).
    File,
    /// A directory mirrored whole (from `sync_list`).
    Dir,
}

/// One path of the restore list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListEntry {
    /// Absolute, normalised (`/etc/config/firewall`).
    pub path: String,
    pub kind: EntryKind,
}

/// The restore list: entries sorted by path (byte order), unique, and the excludes that also
/// apply inside listed directories.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestoreList {
    pub entries: Vec<ListEntry>,
    pub excludes: Excludes,
}

impl RestoreList {
    /// The listed paths, in order.
    pub fn paths(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.path.as_str()).collect()
    }

    /// The incumbent's `tmp/restore_list`: one absolute path a line, trailing newline.
    pub fn to_restore_list_file(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            out.push_str(&e.path);
            out.push('\n');
        }
        out
    }
}

/// Reads a `tmp/restore_list` file: one absolute path a line (blank lines skipped). Every line
/// must be absolute, without `..` components or NUL, and not `/` itself.
pub fn parse_restore_list_file(text: &str) -> Result<Vec<String>, RestoreListError> {
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Err(msg) = normalize_abs(line) {
            return Err(RestoreListError::BadLine {
                line: i + 1,
                path: line.to_string(),
                msg,
            });
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// Checks an absolute router path and returns it normalised: no empty or `.` components, no
/// trailing slash. Refuses relative paths, `..` components, NUL and newline bytes, and `/`.
pub fn normalize_abs(path: &str) -> Result<String, &'static str> {
    if path.contains('\0') {
        return Err("contains a NUL byte");
    }
    if path.contains('\n') {
        return Err("contains a newline");
    }
    if !path.starts_with('/') {
        return Err("not an absolute path");
    }
    let mut out = String::with_capacity(path.len());
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err("has a `..` component"),
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        return Err("is the root directory");
    }
    Ok(out)
}

/// `normalize_abs`, logging and dropping what it refuses.
fn checked(path: &str, source: &str) -> Option<String> {
    match normalize_abs(path) {
        Ok(p) => Some(p),
        Err(why) => {
            tracing::warn!("{source}: skipping {path:?}: {why}");
            None
        }
    }
}

/// Where the router path `abs` lives below `root`.
fn host_path(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

fn is_glob(s: &str, chars: &[char]) -> bool {
    s.contains(chars)
}

const EXCLUDE_GLOB_CHARS: &[char] = &['*', '?', '[', '{'];
const SHELL_GLOB_CHARS: &[char] = &['*', '?', '['];

// ---------------------------------------------------------------------------------------------
// Never synced

/// Paths no keep.d, `sync_list` or `exclude_list` edit can put in the restore list, and no peer
/// can make a backup write: private keys stay on their node (issue 12), and the agent's own
/// trees (staging, state, data) are never a restore target nor mirrored over (issue 14). Each
/// is a directory (everything below it too) or, for dropbear's host keys, a file pattern.
pub const NEVER_SYNCED: &[&str] = &[
    "/etc/ha-sync",
    "/etc/keepalived/keys",
    "/etc/dropbear/dropbear_*_host_key",
    "/usr/share/keepalived/rsync",
    "/usr/share/ha-sync",
    "/var/run/ha-sync",
];

/// The [`NEVER_SYNCED`] rule that covers the router path `path`, if any. The path may be
/// absolute (`/etc/x`) or relative to the root as in a manifest (`etc/x`): checked for every
/// entry of every manifest, so it allocates nothing.
pub fn never_synced(path: &str) -> Option<&'static str> {
    /// Each rule relative, cut at its `*`: (rule, head, tail).
    type Rule = (&'static str, &'static str, Option<&'static str>);
    static RULES: std::sync::LazyLock<Vec<Rule>> = std::sync::LazyLock::new(|| {
        NEVER_SYNCED
            .iter()
            .map(|abs| {
                let rel = abs.trim_start_matches('/');
                match rel.split_once('*') {
                    Some((head, tail)) => (*abs, head, Some(tail)),
                    None => (*abs, rel, None),
                }
            })
            .collect()
    });
    let p = path.trim_start_matches('/').trim_end_matches('/');
    RULES.iter().find_map(|&(abs, head, tail)| {
        let rest = p.strip_prefix(head)?;
        let hit = match tail {
            Some(tail) => rest
                .strip_suffix(tail)
                .is_some_and(|mid| !mid.contains('/')),
            None => rest.is_empty() || rest.starts_with('/'),
        };
        hit.then_some(abs)
    })
}

// ---------------------------------------------------------------------------------------------
// Excludes

/// The `exclude_list` matcher. Each pattern is an exact path, a directory (everything below it
/// is excluded too) or a glob (when it holds one of `*?[{`; `*` does not cross `/`; a directory
/// matched by a glob excludes what is below it). (De)serialised as its list of patterns, as
/// written, so the backup can rebuild it from the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Excludes {
    patterns: Vec<String>,
    exact: HashSet<String>,
    globs: GlobSet,
}

impl Default for Excludes {
    fn default() -> Excludes {
        Excludes {
            patterns: Vec::new(),
            exact: HashSet::new(),
            globs: GlobSet::empty(),
        }
    }
}

impl PartialEq for Excludes {
    fn eq(&self, other: &Excludes) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for Excludes {}

impl Excludes {
    /// Builds the matcher. Relative patterns and patterns with `..` or NUL are skipped with a
    /// warning (they can match nothing on the router); a glob that does not compile is an error
    /// (skipping it would sync what the user meant to keep out).
    pub fn new(patterns: Vec<String>) -> Result<Excludes, RestoreListError> {
        let mut exact = HashSet::new();
        let mut globs = GlobSetBuilder::new();
        for raw in &patterns {
            let Some(p) = checked(raw, "exclude_list") else {
                continue;
            };
            if is_glob(&p, EXCLUDE_GLOB_CHARS) {
                let glob = GlobBuilder::new(&p)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| RestoreListError::Pattern {
                        pattern: raw.clone(),
                        msg: e.kind().to_string(),
                    })?;
                globs.add(glob);
            } else {
                exact.insert(p);
            }
        }
        let globs = globs.build().map_err(|e| RestoreListError::Pattern {
            pattern: patterns.join(" "),
            msg: e.to_string(),
        })?;
        Ok(Excludes {
            patterns,
            exact,
            globs,
        })
    }

    /// The patterns as given to [`Excludes::new`].
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether the absolute router path `abs_path` (or a directory above it) is excluded: by
    /// a pattern, or by the built-in [`NEVER_SYNCED`] rules, which every matcher carries (a
    /// backup rebuilding it from a peer's patterns included).
    /// [`Excludes::is_excluded`] for a manifest path; without patterns (the common case) it
    /// allocates nothing.
    pub fn is_excluded_rel(&self, p: &crate::path::RelPath) -> bool {
        if self.patterns.is_empty() {
            return never_synced(p.as_str()).is_some();
        }
        self.is_excluded(&p.to_abs())
    }

    pub fn is_excluded(&self, abs_path: &str) -> bool {
        if never_synced(abs_path).is_some() {
            return true;
        }
        if self.patterns.is_empty() {
            return false;
        }
        let mut p = abs_path.trim_end_matches('/');
        while !p.is_empty() {
            if self.exact.contains(p) || self.globs.is_match(p) {
                return true;
            }
            p = match p.rfind('/') {
                Some(i) => &p[..i],
                None => "",
            };
        }
        false
    }
}

impl TryFrom<Vec<String>> for Excludes {
    type Error = RestoreListError;

    fn try_from(patterns: Vec<String>) -> Result<Excludes, RestoreListError> {
        Excludes::new(patterns)
    }
}

impl From<Excludes> for Vec<String> {
    fn from(e: Excludes) -> Vec<String> {
        e.patterns
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs

const SYSUPGRADE_CONF: &str = "etc/sysupgrade.conf";
const KEEP_D: &str = "lib/upgrade/keep.d";
const OPKG_STATUS: &str = "usr/lib/opkg/status";

/// The files (and the `keep.d` directory) the restore list is computed from, for a watcher.
pub fn inputs(root: &Path) -> Vec<PathBuf> {
    [SYSUPGRADE_CONF, KEEP_D, KEEPALIVED_UCI, OPKG_STATUS]
        .iter()
        .map(|p| root.join(p))
        .collect()
}

/// Whether [`compute`] runs the real `sysupgrade -l`: only on the real root, where it exists.
pub fn use_sysupgrade(root: &Path, runner: &dyn Runner) -> bool {
    root == Path::new("/") && runner.exists("sysupgrade")
}

/// Computes the restore list of the system below `root`.
pub fn compute(root: &Path, runner: &dyn Runner) -> Result<RestoreList, RestoreListError> {
    compute_with(root, runner, use_sysupgrade(root, runner))
}

/// [`compute`] with the choice made: `use_sysupgrade` runs `sysupgrade -l` through `runner`
/// (falling back to reading the files, with a warning, when it fails); otherwise the same set
/// is computed from the files below `root`.
pub fn compute_with(
    root: &Path,
    runner: &dyn Runner,
    use_sysupgrade: bool,
) -> Result<RestoreList, RestoreListError> {
    let uci = Package::load_or_empty(&root.join(KEEPALIVED_UCI))?;
    let excludes = Excludes::new(uci.get_list("ha_peer", "exclude_list"))?;
    let mut entries: BTreeMap<String, EntryKind> = BTreeMap::new();

    for raw in uci.get_list("ha_peer", "sync_list") {
        let Some(path) = checked(&raw, "sync_list") else {
            continue;
        };
        if excludes.is_excluded(&path) {
            tracing::debug!("sync_list: {path} is excluded");
            continue;
        }
        let kind = match fs::symlink_metadata(host_path(root, &path)) {
            Ok(m) if m.is_dir() => EntryKind::Dir,
            Ok(m) if m.is_file() || m.file_type().is_symlink() => EntryKind::File,
            Ok(_) => {
                tracing::warn!("sync_list: skipping {path}: not a file, symlink or directory");
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!("sync_list: {path} does not exist");
                continue;
            }
            Err(e) => {
                tracing::warn!("sync_list: skipping {path}: {e}");
                continue;
            }
        };
        entries.insert(path, kind);
    }

    let keep = if use_sysupgrade {
        match sysupgrade_output(runner) {
            Ok(paths) => paths,
            Err(why) => {
                tracing::warn!("sysupgrade -l: {why}; reading the keep lists instead");
                sysupgrade_set(root, &excludes)?
            }
        }
    } else {
        sysupgrade_set(root, &excludes)?
    };
    for raw in keep {
        let Some(path) = checked(&raw, "sysupgrade -l") else {
            continue;
        };
        if entries.contains_key(&path) || excludes.is_excluded(&path) {
            continue;
        }
        match fs::symlink_metadata(host_path(root, &path)) {
            Ok(m) if m.is_file() || m.file_type().is_symlink() => {
                entries.insert(path, EntryKind::File);
            }
            Ok(m) if m.is_dir() => {
                tracing::warn!("sysupgrade -l: skipping {path}: a directory");
            }
            Ok(_) => tracing::warn!("sysupgrade -l: skipping {path}: not a file or symlink"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("sysupgrade -l: skipping {path}: {e}"),
        }
    }

    // A path below a listed directory is part of that directory already.
    let dirs: HashSet<String> = entries
        .iter()
        .filter(|(_, k)| **k == EntryKind::Dir)
        .map(|(p, _)| p.clone())
        .collect();
    let entries = entries
        .into_iter()
        .filter(|(path, _)| !has_listed_ancestor(path, &dirs))
        .map(|(path, kind)| ListEntry { path, kind })
        .collect();
    Ok(RestoreList { entries, excludes })
}

fn has_listed_ancestor(path: &str, dirs: &HashSet<String>) -> bool {
    let mut p = path;
    while let Some(i) = p.rfind('/') {
        p = &p[..i];
        if !p.is_empty() && dirs.contains(p) {
            return true;
        }
    }
    false
}

fn sysupgrade_output(runner: &dyn Runner) -> Result<Vec<String>, String> {
    let out = runner
        .run(&Cmd::new("sysupgrade").arg("-l"))
        .map_err(|e| format!("could not run: {e}"))?;
    if !out.success() {
        return Err(format!(
            "exit {:?}: {}",
            out.code,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

fn read_optional(path: &Path) -> Result<Option<String>, RestoreListError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RestoreListError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// What `sysupgrade -l` lists, computed from the files below `root`: the regular files and
/// symlinks under the paths of `sysupgrade.conf` and `keep.d/*` (globs expanded, directories
/// walked without following symlinks, excluded subtrees pruned), plus the changed conffiles.
fn sysupgrade_set(root: &Path, excludes: &Excludes) -> Result<Vec<String>, RestoreListError> {
    let mut lists = vec![root.join(SYSUPGRADE_CONF)];
    let keep_d = root.join(KEEP_D);
    match fs::read_dir(&keep_d) {
        Ok(rd) => {
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            lists.extend(files);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(RestoreListError::Io {
                path: keep_d,
                source: e,
            })
        }
    }

    let mut out = BTreeSet::new();
    for list in &lists {
        let Some(text) = read_optional(list)? else {
            continue;
        };
        let source = list.display().to_string();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(spec) = checked(line, &source) else {
                continue;
            };
            let paths = if is_glob(&spec, SHELL_GLOB_CHARS) {
                expand_glob(root, &spec)
            } else {
                vec![spec]
            };
            for p in paths {
                add_tree(root, &p, excludes, &mut out);
            }
        }
    }
    out.extend(changed_conffiles(root)?);
    Ok(out.into_iter().collect())
}

/// Expands a shell glob against `root`, component by component, as the shell does: `*` stays
/// within a component, names starting with `.` match only a pattern component starting with
/// `.`. No match: nothing.
fn expand_glob(root: &Path, pattern: &str) -> Vec<String> {
    let mut current = vec![String::new()];
    for comp in pattern.split('/').filter(|c| !c.is_empty()) {
        if !is_glob(comp, SHELL_GLOB_CHARS) {
            for c in &mut current {
                c.push('/');
                c.push_str(comp);
            }
            continue;
        }
        let matcher: GlobMatcher = match GlobBuilder::new(comp).literal_separator(true).build() {
            Ok(g) => g.compile_matcher(),
            Err(e) => {
                tracing::warn!("keep list: skipping glob {pattern:?}: {e}");
                return Vec::new();
            }
        };
        let mut next = Vec::new();
        for dir in &current {
            let host = if dir.is_empty() {
                root.to_path_buf()
            } else {
                host_path(root, dir)
            };
            let Ok(rd) = fs::read_dir(&host) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.') || comp.starts_with('.'))
                .filter(|n| matcher.is_match(n))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| format!("{dir}/{n}")));
        }
        current = next;
        if current.is_empty() {
            break;
        }
    }
    current.retain(|c| !c.is_empty() && fs::symlink_metadata(host_path(root, c)).is_ok());
    current
}

/// Adds `abs` if it is a regular file or a symlink, or the regular files and symlinks below it
/// if it is a directory (never following symlinks); excluded subtrees are skipped.
fn add_tree(root: &Path, abs: &str, excludes: &Excludes, out: &mut BTreeSet<String>) {
    if excludes.is_excluded(abs) {
        return;
    }
    let host = host_path(root, abs);
    let md = match fs::symlink_metadata(&host) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!("keep list: skipping {abs}: {e}");
            return;
        }
    };
    if md.is_file() || md.file_type().is_symlink() {
        out.insert(abs.to_string());
        return;
    }
    if !md.is_dir() {
        return;
    }
    let below = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(&host).ok()?.to_str()?;
        Some(format!("{abs}/{rel}"))
    };
    let walker = walkdir::WalkDir::new(&host)
        .follow_links(false)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| match below(e.path()) {
            Some(p) => !excludes.is_excluded(&p),
            None => true,
        });
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("keep list: {abs}: {e}");
                continue;
            }
        };
        let ft = entry.file_type();
        if !(ft.is_file() || ft.is_symlink()) {
            continue;
        }
        match below(entry.path()) {
            Some(p) if normalize_abs(&p).is_ok() => {
                out.insert(p);
            }
            _ => tracing::warn!(
                "keep list: skipping {}: name not usable in a restore list",
                entry.path().display()
            ),
        }
    }
}

/// opkg's `list-changed-conffiles`: the `Conffiles:` of `usr/lib/opkg/status` whose file exists
/// and whose checksum differs from the recorded one.
fn changed_conffiles(root: &Path) -> Result<Vec<String>, RestoreListError> {
    let status = root.join(OPKG_STATUS);
    let Some(text) = read_optional(&status)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut in_conffiles = false;
    for line in text.lines() {
        if line.starts_with("Conffiles:") {
            in_conffiles = true;
            continue;
        }
        if !line.starts_with(' ') {
            in_conffiles = false;
            continue;
        }
        if !in_conffiles {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(file) = words.next() else {
            continue;
        };
        let sum = words.next().unwrap_or("").to_ascii_lowercase();
        let Some(path) = checked(file, "opkg status") else {
            continue;
        };
        let data = match fs::read(host_path(root, &path)) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::debug!("opkg status: {path}: {e}");
                continue;
            }
        };
        let changed = match sum.len() {
            32 => digest::hex(&digest::md5(&data)) != sum,
            64 => digest::hex(&digest::sha256(&data)) != sum,
            _ => true,
        };
        if changed {
            out.push(path);
        }
    }
    Ok(out)
}

/// MD5 (RFC 1321) and SHA-256 (FIPS 180-4), only for opkg's conffile checksums.
pub(crate) mod digest {
    const MD5_S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];

    const MD5_K: [u32; 64] = [
        0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
        0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
        0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
        0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
        0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
        0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
        0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
        0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
        0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
        0xeb86d391,
    ];

    /// Merkle-Damgard padding: 0x80, zeros, the bit length (little or big endian).
    fn padded(data: &[u8], big_endian: bool) -> Vec<u8> {
        let mut m = data.to_vec();
        let bits = (data.len() as u64).wrapping_mul(8);
        m.push(0x80);
        while m.len() % 64 != 56 {
            m.push(0);
        }
        if big_endian {
            m.extend_from_slice(&bits.to_be_bytes());
        } else {
            m.extend_from_slice(&bits.to_le_bytes());
        }
        m
    }

    pub(crate) fn md5(data: &[u8]) -> [u8; 16] {
        let mut h: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];
        for block in padded(data, false).chunks_exact(64) {
            let mut w = [0u32; 16];
            for (i, word) in block.chunks_exact(4).enumerate() {
                w[i] = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            }
            let [mut a, mut b, mut c, mut d] = h;
            for i in 0..64 {
                let (f, g) = match i / 16 {
                    0 => ((b & c) | (!b & d), i),
                    1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                    2 => (b ^ c ^ d, (3 * i + 5) % 16),
                    _ => (c ^ (b | !d), (7 * i) % 16),
                };
                let t = d;
                d = c;
                c = b;
                b = b.wrapping_add(
                    a.wrapping_add(f)
                        .wrapping_add(MD5_K[i])
                        .wrapping_add(w[g])
                        .rotate_left(MD5_S[i]),
                );
                a = t;
            }
            h[0] = h[0].wrapping_add(a);
            h[1] = h[1].wrapping_add(b);
            h[2] = h[2].wrapping_add(c);
            h[3] = h[3].wrapping_add(d);
        }
        let mut out = [0u8; 16];
        for (i, v) in h.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    const SHA256_K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
        let mut h: [u32; 8] = [
            0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
            0x5be0cd19,
        ];
        for block in padded(data, true).chunks_exact(64) {
            let mut w = [0u32; 64];
            for (i, word) in block.chunks_exact(4).enumerate() {
                w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            }
            for i in 16..64 {
                let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
                let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
                w[i] = w[i - 16]
                    .wrapping_add(s0)
                    .wrapping_add(w[i - 7])
                    .wrapping_add(s1);
            }
            let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
            for i in 0..64 {
                let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
                let ch = (e & f) ^ (!e & g);
                let t1 = hh
                    .wrapping_add(s1)
                    .wrapping_add(ch)
                    .wrapping_add(SHA256_K[i])
                    .wrapping_add(w[i]);
                let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
                let maj = (a & b) ^ (a & c) ^ (b & c);
                let t2 = s0.wrapping_add(maj);
                hh = g;
                g = f;
                f = e;
                e = d.wrapping_add(t1);
                d = c;
                c = b;
                b = a;
                a = t1.wrapping_add(t2);
            }
            for (x, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
                *x = x.wrapping_add(v);
            }
        }
        let mut out = [0u8; 32];
        for (i, v) in h.iter().enumerate() {
            out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    pub(crate) fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::digest::{hex, md5, sha256};
    use super::*;
    use crate::runner::{CmdOutput, RecordingRunner};
    use std::os::unix::fs::symlink;

    #[test]
    fn md5_rfc1321_vectors() {
        let cases = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex(&md5(input.as_bytes())), want, "{input:?}");
        }
    }

    #[test]
    fn sha256_vectors() {
        let cases = [
            (
                "",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                "abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex(&sha256(input.as_bytes())), want, "{input:?}");
        }
        let million = vec![b'a'; 1_000_000];
        assert_eq!(
            hex(&sha256(&million)),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
        // every padding length around a block boundary agrees with md5sum's behaviour
        for n in 50..70 {
            let data = vec![b'x'; n];
            assert_eq!(md5(&data).len(), 16);
            assert_eq!(sha256(&data).len(), 32);
        }
    }

    fn write(root: &Path, abs: &str, text: &str) {
        let p = host_path(root, abs);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }

    const KEEPALIVED: &str = "
config peer 'ha_peer'
	option address '192.168.100.2'
	option sync_mode 'send'
	list sync_list '/etc/ha'
	list sync_list '/etc/acme/cert.pem'
	list sync_list '/etc/my dir/with space.conf'
	list sync_list '/etc/nonexistent'
	list sync_list '/etc/openvpn/'
	list sync_list 'relative/path'
	list sync_list '/etc/../etc/shadow'
	list exclude_list '/etc/config/network'
	list exclude_list '/etc/ha/private'
	list exclude_list '/etc/ha/*.tmp'
	list exclude_list '/etc/dropbear/authorized_keys'

config primary 'primary'
";

    /// A root with every kind of input; returns the expected entries.
    fn fixture(root: &Path) -> Vec<(&'static str, EntryKind)> {
        write(
            root,
            "/etc/sysupgrade.conf",
            "## This file contains files and directories that should\n\
             ## be preserved during an upgrade.\n\n\
             /etc/dropbear\n\
             /etc/*.conf\n\
             \t/etc/single file.txt  \n\
             /etc/missing\n\
             /etc/ha/in-sysupgrade\n",
        );
        write(
            root,
            "/lib/upgrade/keep.d/base-files",
            "/etc/passwd\n/etc/shadow\n# a comment\n\n/etc/config/network\n",
        );
        write(
            root,
            "/lib/upgrade/keep.d/openvpn",
            "# openvpn\n/etc/openvpn\n",
        );
        write(root, "/etc/dropbear/dropbear_rsa_host_key", "key");
        write(root, "/etc/dropbear/authorized_keys", "ssh-rsa AAA");
        symlink(
            "/nonexistent/target",
            host_path(root, "/etc/dropbear/dangling"),
        )
        .expect("symlink");
        write(root, "/etc/foo.conf", "x");
        write(root, "/etc/.hidden.conf", "x");
        write(root, "/etc/sub/deeper.conf", "x");
        write(root, "/etc/single file.txt", "x");
        write(root, "/etc/passwd", "root:x:0:0");
        write(root, "/etc/shadow", "root:*:0");
        write(root, "/etc/config/network", "config interface 'lan'\n");
        write(root, "/etc/openvpn/server.conf", "x");
        write(root, "/etc/ha/wan_devices", "[]");
        write(root, "/etc/ha/in-sysupgrade", "x");
        write(root, "/etc/ha/x.tmp", "x");
        write(root, "/etc/ha/private/key", "x");
        write(root, "/etc/ha/sub/y.tmp", "x");
        write(root, "/etc/acme/cert.pem", "x");
        write(root, "/etc/my dir/with space.conf", "x");
        write(root, "/etc/config/keepalived", KEEPALIVED);

        // opkg status: firewall unchanged (md5), dhcp changed (md5), system changed (sha256),
        // uhttpd unchanged (sha256), a missing conffile, an odd checksum
        let firewall = "config defaults\n";
        let dhcp = "config dnsmasq\n";
        let system = "config system\n";
        let uhttpd = "config uhttpd 'main'\n";
        write(root, "/etc/config/firewall", firewall);
        write(root, "/etc/config/dhcp", dhcp);
        write(root, "/etc/config/system", system);
        write(root, "/etc/config/uhttpd", uhttpd);
        write(root, "/etc/config/odd", "x");
        let status = format!(
            "Package: firewall\nVersion: 2022-02-17\nConffiles:\n /etc/config/firewall {}\n\
             Status: install user installed\nArchitecture: x86_64\n\n\
             Package: dnsmasq\nConffiles:\n /etc/config/dhcp {}\n /etc/config/absent {}\n\n\
             Package: base-files\nConffiles:\n /etc/config/system {}\n /etc/config/uhttpd {}\n\
             \x20/etc/config/odd 1234\nDescription: x\n /etc/not-a-conffile 0\n",
            hex(&md5(firewall.as_bytes())),
            hex(&md5(b"the packaged default\n")),
            hex(&md5(b"")),
            hex(&sha256(b"the packaged default\n")),
            hex(&sha256(uhttpd.as_bytes())).to_uppercase(),
        );
        write(root, "/usr/lib/opkg/status", &status);

        vec![
            ("/etc/acme/cert.pem", EntryKind::File),
            ("/etc/config/dhcp", EntryKind::File),
            ("/etc/config/odd", EntryKind::File),
            ("/etc/config/system", EntryKind::File),
            ("/etc/dropbear/dangling", EntryKind::File),
            // keep.d lists it, the built-in rule drops it: a host key never leaves its node.
            ("/etc/foo.conf", EntryKind::File),
            ("/etc/ha", EntryKind::Dir),
            ("/etc/my dir/with space.conf", EntryKind::File),
            ("/etc/openvpn", EntryKind::Dir),
            ("/etc/passwd", EntryKind::File),
            ("/etc/shadow", EntryKind::File),
            ("/etc/single file.txt", EntryKind::File),
            ("/etc/sysupgrade.conf", EntryKind::File),
        ]
    }

    fn expected(v: Vec<(&str, EntryKind)>) -> Vec<ListEntry> {
        v.into_iter()
            .map(|(p, kind)| ListEntry {
                path: p.to_string(),
                kind,
            })
            .collect()
    }

    #[test]
    fn computes_from_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let want = expected(fixture(root));
        let runner = RecordingRunner::new();
        let list = compute(root, &runner).expect("compute");
        assert_eq!(list.entries, want);
        assert!(runner.calls().is_empty(), "no sysupgrade on a test root");

        // sorted, unique
        let paths = list.paths();
        let mut sorted = paths.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(paths, sorted);

        // excludes apply inside listed directories too
        let ex = &list.excludes;
        assert!(ex.is_excluded("/etc/ha/x.tmp"));
        assert!(ex.is_excluded("/etc/ha/private/key"));
        assert!(ex.is_excluded("/etc/ha/private"));
        assert!(ex.is_excluded("/etc/config/network"));
        assert!(!ex.is_excluded("/etc/ha/sub/y.tmp"), "* does not cross /");
        assert!(!ex.is_excluded("/etc/ha/wan_devices"));
        assert!(!ex.is_excluded("/etc/ha/privateer"));
        assert!(!ex.is_excluded("/etc/config"));

        assert_eq!(
            list.to_restore_list_file(),
            want.iter()
                .map(|e| format!("{}\n", e.path))
                .collect::<String>()
        );
        assert_eq!(
            parse_restore_list_file(&list.to_restore_list_file()).expect("parse"),
            list.paths()
        );
    }

    #[test]
    fn json_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        fixture(dir.path());
        let list = compute(dir.path(), &RecordingRunner::new()).expect("compute");
        let json = serde_json::to_value(&list).expect("json");
        assert_eq!(json["entries"][6]["path"], "/etc/ha");
        assert_eq!(json["entries"][6]["kind"], "dir");
        assert_eq!(json["entries"][0]["kind"], "file");
        assert_eq!(json["excludes"][2], "/etc/ha/*.tmp");
        let back: RestoreList = serde_json::from_value(json).expect("back");
        assert_eq!(back, list);
        assert!(back.excludes.is_excluded("/etc/ha/a.tmp"));
        assert!(serde_json::from_str::<Excludes>("[\"/etc/[oops\"]").is_err());
    }

    #[test]
    fn sysupgrade_branch_uses_the_runner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fixture(root);
        let runner = RecordingRunner::new();
        runner.answer(
            "sysupgrade -l",
            CmdOutput::ok(
                "/etc/config/firewall\n/etc/ha/wan_devices\n/etc/missing\nrelative\n\
                 /etc/config/network\n/etc/../etc/passwd\n/etc/passwd\n",
            ),
        );
        assert!(!use_sysupgrade(root, &runner));
        assert!(!use_sysupgrade(Path::new("/"), &runner));
        runner.provide("sysupgrade");
        assert!(use_sysupgrade(Path::new("/"), &runner));
        assert!(!use_sysupgrade(root, &runner));

        let list = compute_with(root, &runner, true).expect("compute");
        assert_eq!(runner.lines(), vec!["sysupgrade -l"]);
        assert_eq!(
            list.entries,
            expected(vec![
                ("/etc/acme/cert.pem", EntryKind::File),
                ("/etc/config/firewall", EntryKind::File),
                ("/etc/ha", EntryKind::Dir),
                ("/etc/my dir/with space.conf", EntryKind::File),
                ("/etc/openvpn", EntryKind::Dir),
                ("/etc/passwd", EntryKind::File),
            ])
        );

        // sysupgrade failing: the files are read instead
        let failing = RecordingRunner::new();
        failing.answer(
            "sysupgrade",
            CmdOutput {
                code: Some(1),
                stdout: Vec::new(),
                stderr: b"boom".to_vec(),
            },
        );
        let list = compute_with(root, &failing, true).expect("compute");
        assert_eq!(failing.lines(), vec!["sysupgrade -l"]);
        assert_eq!(list, compute_with(root, &failing, false).expect("compute"));
        assert!(list.paths().contains(&"/etc/passwd"));
    }

    #[test]
    fn empty_root_and_missing_inputs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = compute(dir.path(), &RecordingRunner::new()).expect("compute");
        assert_eq!(list, RestoreList::default());
        assert_eq!(list.to_restore_list_file(), "");
        assert_eq!(
            inputs(dir.path()),
            vec![
                dir.path().join("etc/sysupgrade.conf"),
                dir.path().join("lib/upgrade/keep.d"),
                dir.path().join("etc/config/keepalived"),
                dir.path().join("usr/lib/opkg/status"),
            ]
        );
    }

    /// A package listing the agent's key directory in keep.d, an admin's `sync_list` naming
    /// keys or the agent's own trees, an `exclude_list` that excludes nothing: none of it puts
    /// a private key or the agent's state into the restore list.
    #[test]
    fn keys_and_the_agents_own_trees_are_never_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = dir.path();
        for f in [
            "etc/ha-sync/id_ed25519",
            "etc/ha-sync/host_key",
            "etc/keepalived/keys/id_rsa",
            "etc/dropbear/dropbear_ed25519_host_key",
            "etc/dropbear/authorized_keys",
            "usr/share/keepalived/rsync/.ha-sync/root",
            "usr/share/keepalived/notify.sh",
            "etc/config/firewall",
        ] {
            write(r, f, "x");
        }
        write(
            r,
            "lib/upgrade/keep.d/ha-sync",
            "/etc/ha-sync/\n/etc/dropbear/\n",
        );
        write(
            r,
            "etc/config/keepalived",
            "config peer 'ha_peer'\n\tlist sync_list '/etc/keepalived/keys'\n\
             \tlist sync_list '/etc/ha-sync/id_ed25519'\n\tlist sync_list '/usr/share/keepalived'\n\
             \tlist sync_list '/etc/config/firewall'\n",
        );
        let list = compute_with(r, &RecordingRunner::new(), false).expect("compute");
        let paths = list.paths();
        assert!(paths.contains(&"/etc/config/firewall"), "{paths:?}");
        assert!(
            paths.contains(&"/etc/dropbear/authorized_keys"),
            "{paths:?}"
        );
        // The directory above the staging tree stays listed (the admin asked for it) but the
        // staging tree below it is excluded, so it is neither sent nor mirrored over.
        assert!(paths.contains(&"/usr/share/keepalived"), "{paths:?}");
        for p in &paths {
            assert!(never_synced(p).is_none(), "{p} listed: {paths:?}");
        }
        for never in [
            "/etc/ha-sync/id_ed25519",
            "/etc/keepalived/keys/id_rsa",
            "/etc/dropbear/dropbear_ed25519_host_key",
            "/usr/share/keepalived/rsync/.ha-sync/root",
            "/var/run/ha-sync/status.json",
        ] {
            assert!(list.excludes.is_excluded(never), "{never}");
        }
        assert!(!list.excludes.is_excluded("/usr/share/keepalived/notify.sh"));
        assert!(!list.excludes.is_excluded("/etc/dropbear/authorized_keys"));
        assert!(!list.excludes.is_excluded("/etc/ha-synced"));
        // A backup rebuilds the matcher from the patterns a peer sent: the rules come back.
        let rebuilt = Excludes::new(Vec::new()).expect("empty");
        assert!(rebuilt.is_excluded("/etc/ha-sync/id_ed25519"));
        assert_eq!(never_synced("/etc/ha-sync"), Some("/etc/ha-sync"));
        // A manifest's relative path is checked the same way.
        assert_eq!(never_synced("etc/ha-sync/x"), Some("/etc/ha-sync"));
        assert_eq!(
            never_synced("etc/dropbear/dropbear_rsa_host_key"),
            Some("/etc/dropbear/dropbear_*_host_key")
        );
        assert_eq!(never_synced("etc/ha-syncer"), None);
    }

    #[test]
    fn malformed_keepalived_names_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "/etc/config/keepalived",
            "config peer 'ha_peer'\n\tlist sync_list '/etc/ha'\n\tlist sync_list '/etc/x\n",
        );
        let e = compute(dir.path(), &RecordingRunner::new()).expect_err("malformed");
        let path = dir.path().join("etc/config/keepalived");
        assert_eq!(
            e.to_string(),
            format!("{}:3: unterminated quote (')", path.display())
        );
    }

    #[test]
    fn sync_list_option_is_not_split_and_nested_dirs_collapse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "/etc/a b", "x");
        write(root, "/etc/outer/inner/file", "x");
        write(root, "/etc/outer-2/file", "x");
        write(
            root,
            "/etc/config/keepalived",
            "config peer 'ha_peer'\n\toption sync_list '/etc/a b'\n",
        );
        let list = compute(root, &RecordingRunner::new()).expect("compute");
        assert_eq!(list.paths(), vec!["/etc/a b"]);

        write(
            root,
            "/etc/config/keepalived",
            "config peer 'ha_peer'\n\tlist sync_list '/etc/outer/inner'\n\
             \tlist sync_list '/etc/outer'\n\tlist sync_list '/etc/outer-2/file'\n\
             \tlist sync_list '/etc/outer/inner/file'\n\tlist sync_list '/'\n",
        );
        let list = compute(root, &RecordingRunner::new()).expect("compute");
        assert_eq!(
            list.entries,
            expected(vec![
                ("/etc/outer", EntryKind::Dir),
                ("/etc/outer-2/file", EntryKind::File),
            ])
        );
    }

    #[test]
    fn excluded_directory_drops_listed_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "/etc/ha/a", "x");
        write(root, "/etc/nginx/conf.d/x.conf", "x");
        write(
            root,
            "/etc/config/keepalived",
            "config peer 'ha_peer'\n\tlist sync_list '/etc/ha'\n\
             \tlist sync_list '/etc/nginx/conf.d'\n\tlist exclude_list '/etc/nginx/'\n\
             \tlist exclude_list 'relative'\n",
        );
        let list = compute(root, &RecordingRunner::new()).expect("compute");
        assert_eq!(list.paths(), vec!["/etc/ha"]);
        assert_eq!(list.excludes.patterns(), ["/etc/nginx/", "relative"]);
    }

    #[test]
    fn excludes_matcher() {
        let ex = Excludes::new(vec![
            "/etc/exact".into(),
            "/etc/dir/".into(),
            "/etc/*.bak".into(),
            "/var/{a,b}/log?".into(),
            "/etc/[xy]z".into(),
        ])
        .expect("excludes");
        for yes in [
            "/etc/exact",
            "/etc/exact/below",
            "/etc/dir",
            "/etc/dir/a/b",
            "/etc/x.bak",
            "/etc/x.bak/inside",
            "/var/a/log1",
            "/var/b/logz",
            "/etc/xz",
            "/etc/yz/f",
        ] {
            assert!(ex.is_excluded(yes), "{yes}");
        }
        for no in [
            "/etc/exactly",
            "/etc",
            "/etc/sub/x.bak",
            "/var/c/log1",
            "/etc/zz",
            "/etc/directory",
        ] {
            assert!(!ex.is_excluded(no), "{no}");
        }
        assert!(!Excludes::default().is_excluded("/etc"));
        let e = Excludes::new(vec!["/etc/[unclosed".into()]).expect_err("bad glob");
        assert!(e.to_string().contains("/etc/[unclosed"), "{e}");
    }

    #[test]
    fn restore_list_file_validation() {
        assert_eq!(
            parse_restore_list_file("/etc/a\n\n/etc/b c\n").expect("ok"),
            vec!["/etc/a", "/etc/b c"]
        );
        for (text, line) in [
            ("/etc/a\nrelative\n", 2),
            ("/etc/../shadow\n", 1),
            ("/etc/a\n/etc/b\n/x\0y\n", 3),
            ("/\n", 1),
        ] {
            match parse_restore_list_file(text) {
                Err(RestoreListError::BadLine { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert_eq!(normalize_abs("//etc/./ha/"), Ok("/etc/ha".to_string()));
    }

    #[test]
    fn glob_expansion_is_shell_like() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(root, "/etc/a/x.conf", "x");
        write(root, "/etc/b/x.conf", "x");
        write(root, "/etc/b/y.txt", "x");
        write(root, "/etc/.c/x.conf", "x");
        write(root, "/etc/d/e/x.conf", "x");
        assert_eq!(
            expand_glob(root, "/etc/*/x.conf"),
            vec!["/etc/a/x.conf", "/etc/b/x.conf"]
        );
        assert_eq!(expand_glob(root, "/etc/.*/x.conf"), vec!["/etc/.c/x.conf"]);
        assert_eq!(expand_glob(root, "/etc/[ab]/?.txt"), vec!["/etc/b/y.txt"]);
        assert!(expand_glob(root, "/nothing/*").is_empty());
    }
}
