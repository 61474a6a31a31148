//! The manifest: what one side's tree holds, entry by entry, and its root hash.
//!
//! Entries are sorted by path bytes, so a directory always comes before what is inside it.
//! The root hash is blake3 over the canonical (postcard) encoding of the whole manifest,
//! restore list and excludes included: two manifests with the same root hash describe the
//! same tree and the same restore, which is what lets a no-change sync end after one
//! round trip.

use crate::bounded;
pub use crate::limits::{MAX_ENTRIES, MAX_LINK_TARGET};
use crate::limits::{
    MAX_EXCLUDES, MAX_EXCLUDE_LEN, MAX_FILE_SIZE, MAX_LIST_ITEMS, MAX_RESTORE_LIST_BYTES,
};
use crate::path::RelPath;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

// Bounded fields of a peer's manifest (see `bounded`): each checked before it is allocated.
fn de_entries<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Entry>, D::Error> {
    bounded::seq(d, MAX_ENTRIES, "manifest entries")
}

fn de_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RelPath>, D::Error> {
    bounded::seq(d, MAX_ENTRIES, "removed paths")
}

fn de_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ListItem>, D::Error> {
    bounded::seq(d, MAX_LIST_ITEMS, "restore list items")
}

/// One exclude pattern, bounded.
struct Pattern(String);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bounded::string(d, MAX_EXCLUDE_LEN, "exclude pattern").map(Pattern)
    }
}

fn de_excludes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v: Vec<Pattern> = bounded::seq(d, MAX_EXCLUDES, "exclude patterns")?;
    Ok(v.into_iter().map(|p| p.0).collect())
}

fn de_target<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    bounded::string(d, MAX_LINK_TARGET, "symlink target")
}

/// A delta's new restore list and excludes, bounded like a manifest's.
#[derive(Deserialize)]
struct DeltaList(
    #[serde(deserialize_with = "de_list")] Vec<ListItem>,
    #[serde(deserialize_with = "de_excludes")] Vec<String>,
);

/// A restore list and its excludes, as a delta carries them.
type ListAndExcludes = (Vec<ListItem>, Vec<String>);

fn de_delta_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ListAndExcludes>, D::Error> {
    Ok(Option::<DeltaList>::deserialize(d)?.map(|l| (l.0, l.1)))
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
        }
        s
    }

    pub fn from_hex(s: &str) -> Option<Hash> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Hash(out))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File {
        size: u64,
        hash: Hash,
    },
    Dir,
    Symlink {
        #[serde(deserialize_with = "de_target")]
        target: String,
    },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::File { .. } => "file",
            Kind::Dir => "dir",
            Kind::Symlink { .. } => "symlink",
        }
    }

    fn same_type(&self, other: &Kind) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: RelPath,
    pub kind: Kind,
    /// Permission bits only (`0o7777`); the type lives in `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Nanoseconds since the epoch.
    pub mtime_ns: i64,
}

impl Entry {
    pub fn file_hash(&self) -> Option<Hash> {
        match self.kind {
            Kind::File { hash, .. } => Some(hash),
            _ => None,
        }
    }

    pub fn size(&self) -> u64 {
        match self.kind {
            Kind::File { size, .. } => size,
            _ => 0,
        }
    }

    fn same_meta(&self, o: &Entry) -> bool {
        self.mode == o.mode && self.uid == o.uid && self.gid == o.gid && self.mtime_ns == o.mtime_ns
    }
}

/// One entry of the restore list as it travels: a single path, or a directory mirrored whole.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListItem {
    pub path: RelPath,
    pub dir: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Manifest {
    #[serde(deserialize_with = "de_list")]
    pub list: Vec<ListItem>,
    /// exclude_list patterns as written in UCI; the backup needs them to leave excluded
    /// live files alone when it mirrors a directory.
    #[serde(deserialize_with = "de_excludes")]
    pub excludes: Vec<String>,
    #[serde(deserialize_with = "de_entries")]
    pub entries: Vec<Entry>,
}

/// A postcard output that feeds blake3 through a small buffer (postcard writes field by field,
/// a few bytes at a time; blake3 wants whole chunks).
struct HashingFlavor {
    hasher: blake3::Hasher,
    buf: Vec<u8>,
}

impl Default for HashingFlavor {
    fn default() -> Self {
        HashingFlavor {
            hasher: blake3::Hasher::new(),
            buf: Vec::with_capacity(HashingFlavor::BUF),
        }
    }
}

impl HashingFlavor {
    const BUF: usize = 16 * 1024;

    fn spill(&mut self) {
        if self.buf.len() >= Self::BUF {
            self.hasher.update(&self.buf);
            self.buf.clear();
        }
    }
}

impl postcard::ser_flavors::Flavor for HashingFlavor {
    type Output = Hash;

    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.buf.push(b);
        self.spill();
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.buf.extend_from_slice(data);
        self.spill();
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<Hash> {
        self.hasher.update(&self.buf);
        Ok(Hash(*self.hasher.finalize().as_bytes()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest has {0} entries, more than the limit of {MAX_ENTRIES}")]
    TooManyEntries(usize),
    #[error("manifest entries are not sorted and unique at {0}")]
    NotSorted(RelPath),
    #[error("manifest entry {path} lies below {parent}, which is a {kind}, not a directory")]
    ParentNotDir {
        path: RelPath,
        parent: RelPath,
        kind: &'static str,
    },
    #[error("symlink {0} has an empty or oversized target")]
    BadLinkTarget(RelPath),
    #[error("manifest entry {0} is not below any restore list entry")]
    NotListed(RelPath),
    #[error("manifest encoding: {0}")]
    Encoding(String),
    #[error("manifest {what} is over the limit of {limit}: {detail}")]
    OverLimit {
        what: &'static str,
        limit: u64,
        detail: String,
    },
    #[error("file {0} is larger than the limit of {MAX_FILE_SIZE} bytes")]
    FileTooLarge(RelPath),
    #[error("manifest entry {path} is never synced (built-in rule {rule}: keys and the agent's own trees stay on their node)")]
    NeverSynced { path: RelPath, rule: &'static str },
}

impl Manifest {
    /// blake3 of [`Manifest::encode`], streamed: the encoding (a megabyte at a few thousand
    /// entries) is never held, and a session asks for the root more than once.
    pub fn root_hash(&self) -> Hash {
        postcard::serialize_with_flavor(self, HashingFlavor::default())
            .expect("manifest serializes to a hasher")
    }

    pub fn encode(&self) -> Vec<u8> {
        // Sized up front: growing by doubling copies the whole encoding several times.
        let guess = 64 + self.entries.len() * 96;
        postcard::to_extend(self, Vec::with_capacity(guess)).expect("manifest serializes to memory")
    }

    /// Decodes and validates; what a peer sends goes through here.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let m: Manifest = postcard::from_bytes(bytes)
            .map_err(|e| ManifestError::Encoding(bounded::explain(e)))?;
        m.validate()?;
        Ok(m)
    }

    /// Structural checks a hostile manifest could fail: order, bounds, and no entry below a
    /// symlink or a file of the same manifest (writing there would follow the link).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries(self.entries.len()));
        }
        self.validate_list()?;
        let mut kinds: std::collections::HashMap<&str, &Kind> =
            std::collections::HashMap::with_capacity(self.entries.len());
        let mut prev: Option<&RelPath> = None;
        for e in &self.entries {
            if prev.is_some_and(|p| p >= &e.path) {
                return Err(ManifestError::NotSorted(e.path.clone()));
            }
            prev = Some(&e.path);
            if e.size() > MAX_FILE_SIZE {
                return Err(ManifestError::FileTooLarge(e.path.clone()));
            }
            if let Kind::Symlink { target } = &e.kind {
                if target.is_empty() || target.len() > MAX_LINK_TARGET || target.contains('\0') {
                    return Err(ManifestError::BadLinkTarget(e.path.clone()));
                }
            }
            let p = e.path.as_str();
            let mut end = p.len();
            while let Some(i) = p[..end].rfind('/') {
                let anc = &p[..i];
                if let Some(k) = kinds.get(anc) {
                    if !matches!(k, Kind::Dir) {
                        return Err(ManifestError::ParentNotDir {
                            path: e.path.clone(),
                            parent: RelPath::new(anc).expect("prefix of a valid path"),
                            kind: k.name(),
                        });
                    }
                    break; // the parent was checked the same way already
                }
                end = i;
            }
            if !self.list.iter().any(|l| e.path.starts_with(&l.path)) {
                return Err(ManifestError::NotListed(e.path.clone()));
            }
            if let Some(rule) = crate::restore_list::never_synced(e.path.as_str()) {
                return Err(ManifestError::NeverSynced {
                    path: e.path.clone(),
                    rule,
                });
            }
            kinds.insert(p, &e.kind);
        }
        Ok(())
    }

    /// The restore list and excludes within what a router's configuration holds: they are
    /// staged (`tmp/restore_list`) and hashed on every later sync.
    fn validate_list(&self) -> Result<(), ManifestError> {
        let over = |what, limit: usize, detail: String| {
            Err(ManifestError::OverLimit {
                what,
                limit: limit as u64,
                detail,
            })
        };
        if self.list.len() > MAX_LIST_ITEMS {
            return over(
                "restore list",
                MAX_LIST_ITEMS,
                format!("{} items", self.list.len()),
            );
        }
        let bytes: usize = self.list.iter().map(|l| l.path.as_str().len() + 2).sum();
        if bytes > MAX_RESTORE_LIST_BYTES {
            return over(
                "restore list",
                MAX_RESTORE_LIST_BYTES,
                format!("{bytes} bytes"),
            );
        }
        if self.excludes.len() > MAX_EXCLUDES {
            return over(
                "exclude list",
                MAX_EXCLUDES,
                format!("{} patterns", self.excludes.len()),
            );
        }
        if let Some(x) = self.excludes.iter().find(|x| x.len() > MAX_EXCLUDE_LEN) {
            return over(
                "exclude pattern",
                MAX_EXCLUDE_LEN,
                format!("{:?}", bounded::head(x)),
            );
        }
        Ok(())
    }

    pub fn get(&self, path: &RelPath) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }

    pub fn file_bytes(&self) -> u64 {
        self.entries.iter().map(Entry::size).sum()
    }

    /// The incumbent's `tmp/restore_list`: one absolute path a line.
    pub fn restore_list_file(&self) -> String {
        self.list.iter().map(|l| l.path.to_abs() + "\n").collect()
    }
}

/// What turning one tree into another takes, entry by entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Not on the receiver yet.
    Create(Entry),
    /// A file whose content differs (metadata comes with it).
    Content {
        new: Entry,
        old: Entry,
    },
    /// Same content, other mode/owner/mtime.
    Meta(Entry),
    /// File became directory, symlink became file, ...
    TypeChange(Entry),
    Delete(Entry),
}

impl Op {
    pub fn path(&self) -> &RelPath {
        match self {
            Op::Create(e) | Op::Meta(e) | Op::TypeChange(e) | Op::Delete(e) => &e.path,
            Op::Content { new, .. } => &new.path,
        }
    }

    /// The entry the receiver ends up with, if any.
    pub fn target(&self) -> Option<&Entry> {
        match self {
            Op::Create(e) | Op::Meta(e) | Op::TypeChange(e) => Some(e),
            Op::Content { new, .. } => Some(new),
            Op::Delete(_) => None,
        }
    }

    /// Whether the receiver needs file bytes for this op.
    pub fn needs_content(&self) -> bool {
        match self {
            Op::Create(e) | Op::TypeChange(e) => matches!(e.kind, Kind::File { .. }),
            Op::Content { .. } => true,
            Op::Meta(_) | Op::Delete(_) => false,
        }
    }
}

/// The ops that turn `old` into `new`, in path order (deletes included; callers that remove
/// things do so deepest first).
pub fn diff(old: &Manifest, new: &Manifest) -> Vec<Op> {
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    let (a, b) = (&old.entries, &new.entries);
    while i < a.len() || j < b.len() {
        let ord = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.path.cmp(&y.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                ops.push(Op::Delete(a[i].clone()));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                ops.push(Op::Create(b[j].clone()));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&a[i], &b[j]);
                if !x.kind.same_type(&y.kind) {
                    ops.push(Op::TypeChange(y.clone()));
                } else if x.kind != y.kind {
                    // Symlinks with another target are re-created: a "content" change.
                    match y.kind {
                        Kind::File { .. } => ops.push(Op::Content {
                            new: y.clone(),
                            old: x.clone(),
                        }),
                        _ => ops.push(Op::TypeChange(y.clone())),
                    }
                } else if !x.same_meta(y) {
                    ops.push(Op::Meta(y.clone()));
                }
                i += 1;
                j += 1;
            }
        }
    }
    ops
}

/// A manifest expressed as the changes from a base both sides know (by root hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDelta {
    pub base: Hash,
    /// New restore list and excludes, when they changed.
    #[serde(deserialize_with = "de_delta_list")]
    pub list: Option<(Vec<ListItem>, Vec<String>)>,
    #[serde(deserialize_with = "de_entries")]
    pub upserts: Vec<Entry>,
    #[serde(deserialize_with = "de_paths")]
    pub removes: Vec<RelPath>,
}

impl ManifestDelta {
    pub fn between(base: &Manifest, new: &Manifest) -> ManifestDelta {
        let mut upserts = Vec::new();
        let mut removes = Vec::new();
        for op in diff(base, new) {
            match op {
                Op::Delete(e) => removes.push(e.path),
                op => upserts.extend(op.target().cloned()),
            }
        }
        let list = (base.list != new.list || base.excludes != new.excludes)
            .then(|| (new.list.clone(), new.excludes.clone()));
        ManifestDelta {
            base: base.root_hash(),
            list,
            upserts,
            removes,
        }
    }

    /// Decodes a peer's delta: every field bounded, every refusal with its reason.
    pub fn decode(bytes: &[u8]) -> Result<ManifestDelta, ManifestError> {
        postcard::from_bytes(bytes).map_err(|e| ManifestError::Encoding(bounded::explain(e)))
    }

    /// Applies to `base`; the caller checks the result's root hash against the sender's.
    pub fn apply(&self, base: &Manifest) -> Result<Manifest, ManifestError> {
        if self.upserts.len() > MAX_ENTRIES || self.removes.len() > MAX_ENTRIES {
            return Err(ManifestError::TooManyEntries(
                self.upserts.len().max(self.removes.len()),
            ));
        }
        // A merge of sorted lists: the base is sorted (validated), the changes are sorted
        // here (a peer's order is not trusted).
        let mut ups: Vec<&Entry> = self.upserts.iter().collect();
        ups.sort_by(|a, b| a.path.cmp(&b.path));
        ups.dedup_by(|a, b| a.path == b.path);
        let mut rms: Vec<&RelPath> = self.removes.iter().collect();
        rms.sort();
        let mut entries = Vec::with_capacity(base.entries.len() + ups.len());
        let (mut u, mut r) = (ups.into_iter().peekable(), rms.into_iter().peekable());
        for e in &base.entries {
            while let Some(x) = u.next_if(|x| x.path < e.path) {
                entries.push(x.clone());
            }
            while r.next_if(|x| **x < e.path).is_some() {}
            if let Some(x) = u.next_if(|x| x.path == e.path) {
                entries.push(x.clone());
            } else if r.next_if(|x| **x == e.path).is_none() {
                entries.push(e.clone());
            }
        }
        entries.extend(u.cloned());
        let (list, excludes) = match &self.list {
            Some((l, x)) => (l.clone(), x.clone()),
            None => (base.list.clone(), base.excludes.clone()),
        };
        let m = Manifest {
            list,
            excludes,
            entries,
        };
        m.validate()?;
        Ok(m)
    }
}

/// Fuzz entry: decoding any bytes as a manifest (full or delta) never panics.
pub fn fuzz_decode(data: &[u8]) {
    if let Ok(m) = Manifest::decode(data) {
        let _ = m.root_hash();
        let _ = ManifestDelta::between(&m, &Manifest::default()).apply(&m);
    }
    if let Ok(d) = ManifestDelta::decode(data) {
        let _ = d.apply(&Manifest::default());
    }
}

// Session bounds set by a manifest (the constants are `limits`').

/// Bytes of wants the primary takes in one round: a path and a little framing per file of
/// the manifest, signatures of about 1/16 of the file bytes (this backup's are ~1/40), and
/// [`limits::WANT_ROUND_SLACK`](crate::limits::WANT_ROUND_SLACK). Memory set by the manifest, not by the peer.
pub fn want_round_budget(m: &Manifest) -> u64 {
    let per_file: u64 = m
        .entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::File { .. }))
        .map(|e| e.path.as_str().len() as u64 + 64)
        .sum();
    crate::limits::WANT_ROUND_SLACK + per_file + m.file_bytes() / 16
}

/// Bytes the primary takes from a backup in one session: the rounds of wants, plus the
/// greeting, commit and restore report (a frame each at most) and an error.
pub fn primary_receive_budget(m: &Manifest) -> u64 {
    (1 + crate::limits::MAX_REFETCHES as u64) * want_round_budget(m)
        + 4 * crate::limits::MAX_FRAME as u64
}

/// When a primary session must be over: [`limits::SESSION_BASE`](crate::limits::SESSION_BASE) plus the payload (every file
/// sent `1 + MAX_REFETCHES` times, the worst an honest backup asks) at [`limits::MIN_THROUGHPUT`](crate::limits::MIN_THROUGHPUT).
pub fn session_deadline(m: &Manifest) -> std::time::Duration {
    let payload = m
        .file_bytes()
        .saturating_mul(1 + crate::limits::MAX_REFETCHES as u64)
        .saturating_add(m.entries.len() as u64 * 128);
    crate::limits::SESSION_BASE
        + std::time::Duration::from_secs(payload / crate::limits::MIN_THROUGHPUT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{dir, file, manifest};

    #[test]
    fn diff_finds_each_kind_of_change() {
        let old = manifest(vec![
            dir("etc"),
            file("etc/a", b"1"),
            file("etc/b", b"2"),
            file("etc/c", b"3"),
            file("etc/d", b"4"),
        ]);
        let mut b = file("etc/b", b"2");
        b.mode = 0o600;
        let new = manifest(vec![
            dir("etc"),
            file("etc/a", b"1x"),
            b.clone(),
            dir("etc/c"),
            file("etc/e", b"5"),
        ]);
        let ops = diff(&old, &new);
        assert!(matches!(&ops[0], Op::Content { new, .. } if new.path.as_str() == "etc/a"));
        assert_eq!(ops[1], Op::Meta(b));
        assert!(matches!(&ops[2], Op::TypeChange(e) if e.path.as_str() == "etc/c"));
        assert!(matches!(&ops[3], Op::Delete(e) if e.path.as_str() == "etc/d"));
        assert!(matches!(&ops[4], Op::Create(e) if e.path.as_str() == "etc/e"));
        assert_eq!(ops.len(), 5);
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn delta_reproduces_the_new_manifest() {
        let old = manifest(vec![dir("etc"), file("etc/a", b"1"), file("etc/d", b"4")]);
        let new = manifest(vec![dir("etc"), file("etc/a", b"2"), file("etc/b", b"3")]);
        let d = ManifestDelta::between(&old, &new);
        assert_eq!(d.base, old.root_hash());
        assert_eq!(d.apply(&old).unwrap().root_hash(), new.root_hash());
    }

    #[test]
    fn validate_refuses_entries_below_a_symlink_or_unsorted() {
        let mut link = file("etc/l", b"");
        link.kind = Kind::Symlink {
            target: "/etc".into(),
        };
        let m = manifest(vec![dir("etc"), link, file("etc/l/passwd", b"x")]);
        assert!(matches!(
            m.validate(),
            Err(ManifestError::ParentNotDir { .. })
        ));
        let m = manifest(vec![dir("etc"), file("etc/b", b""), file("etc/a", b"")]);
        assert!(matches!(m.validate(), Err(ManifestError::NotSorted(_))));
        let m = manifest(vec![file("var/x", b"")]);
        assert!(matches!(m.validate(), Err(ManifestError::NotListed(_))));
    }

    #[test]
    fn root_hash_changes_with_any_field() {
        let a = manifest(vec![dir("etc"), file("etc/a", b"1")]);
        let mut b = a.clone();
        b.entries[1].mtime_ns += 1;
        assert_ne!(a.root_hash(), b.root_hash());
        let mut c = a.clone();
        c.excludes.push("/etc/x".into());
        assert_ne!(a.root_hash(), c.root_hash());
        assert_eq!(Hash::from_hex(&a.root_hash().to_hex()), Some(a.root_hash()));
    }

    #[test]
    fn the_streamed_root_hash_is_the_hash_of_the_encoding() {
        // Past the hashing buffer's size, so the streamed hash spills more than once.
        let mut entries = vec![dir("etc")];
        entries.extend((0..2000).map(|i| file(&format!("etc/f{i:05}"), b"x")));
        for m in [manifest(vec![]), manifest(entries)] {
            assert_eq!(m.root_hash(), Hash::of(&m.encode()));
        }
    }

    fn raw(paths: &[&str], excludes: Vec<String>) -> Vec<u8> {
        use crate::testing::{RawEntry, RawItem, RawKind, RawManifest};
        RawManifest {
            list: vec![RawItem {
                path: "etc".into(),
                dir: true,
            }],
            excludes,
            entries: paths
                .iter()
                .map(|p| RawEntry::new(p, RawKind::Dir))
                .collect(),
        }
        .encode()
    }

    /// Issue 14, finding 8: each refusal names the entry and the rule, not "Serde
    /// Deserialization Error".
    #[test]
    fn refused_paths_say_which_and_why() {
        // The fault campaign's entry: 2,040 directories, 4,079 bytes.
        let campaign = vec!["d"; 2040].join("/");
        let deep = vec!["d"; 100].join("/");
        let long = format!("etc/{}", "x/".repeat(1600));
        for (bad, why) in [
            ("etc/../x", "has a '..' component"),
            ("/etc/x", "is absolute"),
            ("etc//x", "has an empty or '.' component"),
            ("etc/./x", "has an empty or '.' component"),
            ("etc/a\0b", "contains a NUL byte"),
            (long.as_str(), "is longer than the limit of 3072 bytes"),
            (deep.as_str(), "is deeper than the limit of 64 components"),
            (campaign.as_str(), "is longer than the limit of 3072 bytes"),
            (".ha-sync/manifest", "is reserved for ha-sync's own state"),
        ] {
            let err = Manifest::decode(&raw(&["etc", bad], vec![])).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(why), "{bad:?}: {msg}");
            let quoted = format!("{:?}", &bad[..bad.len().min(20)]);
            assert!(msg.contains(&quoted[..quoted.len() - 1]), "{bad:?}: {msg}");
            assert!(!msg.contains("Serde"), "{msg}");
        }
    }

    /// Issue 14, finding 4: a 400 MB exclude string is refused by its bound (here one byte
    /// over it), and so are too many of them, before anything is stored.
    #[test]
    fn excludes_and_lists_are_bounded() {
        let long = "x".repeat(MAX_EXCLUDE_LEN + 1);
        let err = Manifest::decode(&raw(&["etc"], vec![long])).unwrap_err();
        assert!(err.to_string().contains("exclude pattern \"xxxx"), "{err}");
        assert!(err.to_string().contains("limit of 4096 bytes"), "{err}");
        let many = vec!["/etc/x".to_string(); MAX_EXCLUDES + 1];
        let err = Manifest::decode(&raw(&["etc"], many)).unwrap_err();
        assert!(
            err.to_string()
                .contains("1025 exclude patterns is more than the limit of 1024"),
            "{err}"
        );
        assert!(Manifest::decode(&raw(&["etc"], vec!["/etc/x".into()])).is_ok());
        let mut m = manifest(vec![dir("etc")]);
        m.list = (0..MAX_LIST_ITEMS + 1)
            .map(|i| ListItem {
                path: RelPath::new(format!("etc/f{i}")).unwrap(),
                dir: false,
            })
            .collect();
        assert!(matches!(
            Manifest::decode(&m.encode()),
            Err(ManifestError::Encoding(e)) if e.contains("restore list items")
        ));
        // Fewer items, but longer than a restore list can be in all.
        m.list = (0..1600)
            .map(|i| ListItem {
                path: RelPath::new(format!("etc/{i}/{}", vec!["y".repeat(250); 11].join("/")))
                    .unwrap(),
                dir: false,
            })
            .collect();
        let err = m.validate().unwrap_err();
        assert!(
            matches!(
                err,
                ManifestError::OverLimit {
                    what: "restore list",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_delta_round_trips_and_is_bounded_like_a_manifest() {
        let old = manifest(vec![dir("etc"), file("etc/a", b"1")]);
        let mut new = manifest(vec![dir("etc"), file("etc/a", b"2")]);
        new.excludes = vec!["/etc/b".into()];
        let d = ManifestDelta::between(&old, &new);
        let back = ManifestDelta::decode(&postcard::to_allocvec(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        let mut bad = d.clone();
        bad.list = Some((new.list.clone(), vec!["y".repeat(MAX_EXCLUDE_LEN + 1)]));
        let err = ManifestDelta::decode(&postcard::to_allocvec(&bad).unwrap()).unwrap_err();
        assert!(err.to_string().contains("exclude pattern"), "{err}");
    }

    #[test]
    fn entry_counts_and_link_targets_are_refused_before_allocation() {
        // Empty list and excludes, then a count of entries one over the bound and no entry
        // (postcard wants as many bytes as elements left; zeros do): refused from the count.
        let mut bytes = vec![0u8, 0u8];
        let mut n = MAX_ENTRIES as u64 + 1;
        while n >= 0x80 {
            bytes.push((n as u8) | 0x80);
            n >>= 7;
        }
        bytes.push(n as u8);
        bytes.resize(bytes.len() + MAX_ENTRIES + 1, 0);
        let err = Manifest::decode(&bytes).unwrap_err().to_string();
        assert!(
            err.contains("1048577 manifest entries is more than the limit of 1048576"),
            "{err}"
        );
        use crate::testing::{RawEntry, RawItem, RawKind, RawManifest};
        let raw = RawManifest {
            list: vec![RawItem {
                path: "etc".into(),
                dir: true,
            }],
            excludes: vec![],
            entries: vec![RawEntry::new(
                "etc",
                RawKind::Symlink {
                    target: "t".repeat(MAX_LINK_TARGET + 1),
                },
            )],
        };
        let err = Manifest::decode(&raw.encode()).unwrap_err().to_string();
        assert!(err.contains("symlink target \"ttt"), "{err}");
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused() {
        let mut f = file("etc/a", b"");
        f.kind = Kind::File {
            size: MAX_FILE_SIZE + 1,
            hash: Hash::default(),
        };
        let m = manifest(vec![dir("etc"), f]);
        assert!(matches!(m.validate(), Err(ManifestError::FileTooLarge(_))));
    }
}
