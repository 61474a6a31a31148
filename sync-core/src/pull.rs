//! Failback's first half (issue 11, item 2): what the acting backup changed while it was the
//! authority goes to the returning primary before the primary pushes again.
//!
//! The backup holds the common base: the generation committed in its staging tree is the last
//! one both nodes agreed on. Its [`Offer`] lists every listed path whose live state differs
//! from that base, with the live content and, for UCI files, the base content too (the
//! primary needs all three versions to merge). The primary decides per path with [`decide`]:
//! one side changed, that side wins; both changed a UCI file, three-way merge
//! ([`crate::uci_merge`]); both changed anything else, the authority (the backup, master
//! when the change was made) wins and the primary's version goes to its attic as a conflict.
//!
//! On the wire: one exec request for the offer, one to say it was taken ([`Taken`]); both
//! postcard, the offer zstd-compressed and bounded. This module is the pure part (no
//! network, no live tree); `restore_hooks::authority` builds and applies offers.

use crate::manifest::{Entry, Hash, Kind};
use crate::path::RelPath;
use serde::{Deserialize, Serialize};

/// The backup's exec command that answers with its [`Offer`].
pub const OFFER_COMMAND: &str = "ha-sync-pull-offer";
/// The backup's exec command that takes a [`Taken`] on stdin.
pub const TAKEN_COMMAND: &str = "ha-sync-pull-taken";
/// Bound on an offer, compressed and decompressed: configuration, not data.
pub const MAX_OFFER: usize = 64 << 20;
/// The backup's exec command that answers with its [`LiveView`] (`ha-sync diff`).
pub const LIVE_COMMAND: &str = "ha-sync-live";
/// Largest file an offer carries, and the most file bytes in one offer: configuration, not
/// data (a larger file the acting backup changed stays there, see `restore_hooks::authority`).
pub const MAX_OFFERED_FILE: u64 = 8 << 20;
pub const MAX_OFFERED_BYTES: u64 = 48 << 20;
/// Bumped when [`Offer`] or [`Taken`] change shape.
pub const PULL_VERSION: u32 = 1;

/// What the backup changed since the base.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub version: u32,
    /// The backup's node name, for messages.
    pub node: String,
    /// When the backup became the authority (VRRP master) since the base, seconds since the
    /// epoch; `None`: it was not, and `changes` is empty (its differences are drift, healed
    /// from the base, not the admin's work on an active node).
    pub authority_since: Option<u64>,
    /// Whether the backup is master as it answers.
    pub master: bool,
    /// The generation the changes are against (the backup's committed staging root).
    pub base: Hash,
    /// Root hash of the backup's live manifest at the offer: named back in [`Taken`].
    pub live_root: Hash,
    pub changes: Vec<Change>,
}

/// One path whose live state on the backup differs from the base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub path: RelPath,
    /// The base's entry; `None`: the path is new on the backup.
    pub base: Option<Entry>,
    /// The backup's live entry; `None`: deleted there.
    pub live: Option<Entry>,
    /// The live content, when `live` is a regular file.
    pub data: Option<Vec<u8>>,
    /// The base content, when both are regular files of a UCI package (for the merge).
    pub base_data: Option<Vec<u8>>,
}

/// The primary's word after applying an offer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    pub version: u32,
    /// The offer's `live_root`: the backup's live tree as the primary now holds it.
    pub live_root: Hash,
}

/// The backup's live tree as failback compares it, for `ha-sync diff`: every listed path's
/// state, and the content of its UCI files (small) for an option-level comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveView {
    pub version: u32,
    pub node: String,
    /// The generation it last restored.
    pub base: Hash,
    pub entries: Vec<Entry>,
    pub uci: Vec<(RelPath, Vec<u8>)>,
}

impl LiveView {
    pub fn encode(&self) -> Vec<u8> {
        compressed(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<LiveView, PullError> {
        let v: LiveView = decompressed(bytes)?;
        if v.version != PULL_VERSION {
            return Err(PullError::Version(v.version));
        }
        Ok(v)
    }
}

/// postcard, then zstd: how an offer or a live view travels.
fn compressed<T: Serialize>(v: &T) -> Vec<u8> {
    let raw = postcard::to_allocvec(v).unwrap_or_default();
    zstd::bulk::compress(&raw, 3).unwrap_or_default()
}

/// The other way, bounded by [`MAX_OFFER`] before and after decompression.
fn decompressed<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, PullError> {
    if bytes.len() > MAX_OFFER {
        return Err(PullError::TooLarge(bytes.len()));
    }
    let raw = zstd::bulk::decompress(bytes, MAX_OFFER)
        .map_err(|e| PullError::Malformed(format!("zstd: {e}")))?;
    postcard::from_bytes(&raw).map_err(|e| PullError::Malformed(crate::bounded::explain(e)))
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("pull offer: {0}")]
    Malformed(String),
    #[error("pull offer of {0} bytes or more, over the bound of {MAX_OFFER}")]
    TooLarge(usize),
    #[error("pull protocol version {0}, this node speaks {PULL_VERSION}")]
    Version(u32),
}

impl Offer {
    pub fn encode(&self) -> Vec<u8> {
        compressed(self)
    }

    /// Decodes a peer's offer: bounded, every path validated (`RelPath`), each change
    /// consistent with itself.
    pub fn decode(bytes: &[u8]) -> Result<Offer, PullError> {
        let o: Offer = decompressed(bytes)?;
        if o.version != PULL_VERSION {
            return Err(PullError::Version(o.version));
        }
        for c in &o.changes {
            c.check()?;
        }
        Ok(o)
    }
}

impl Taken {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Taken, PullError> {
        let t: Taken = postcard::from_bytes(bytes)
            .map_err(|e| PullError::Malformed(crate::bounded::explain(e)))?;
        if t.version != PULL_VERSION {
            return Err(PullError::Version(t.version));
        }
        Ok(t)
    }
}

impl Change {
    fn check(&self) -> Result<(), PullError> {
        let bad = |msg: &str| Err(PullError::Malformed(format!("{}: {msg}", self.path)));
        for e in [&self.base, &self.live].into_iter().flatten() {
            if e.path != self.path {
                return bad("entry names another path");
            }
        }
        match (&self.live, &self.data) {
            (Some(e), Some(d)) => match e.kind {
                Kind::File { size, hash } => {
                    if size != d.len() as u64 || Hash::of(d) != hash {
                        return bad("content does not match its entry (size or blake3)");
                    }
                }
                _ => return bad("content sent for something not a file"),
            },
            (Some(e), None) if matches!(e.kind, Kind::File { .. }) => {
                return bad("a changed file without its content")
            }
            (None, Some(_)) => return bad("content sent for a deleted path"),
            _ => {}
        }
        if let (Some(b), Some(d)) = (&self.base, &self.base_data) {
            if b.file_hash() != Some(Hash::of(d)) {
                return bad("base content does not match the base entry");
            }
        }
        Ok(())
    }
}

/// Whether two states of a path are the same for failback: type, content or target, and
/// permissions (times and owners are not the admin's edits).
pub fn same_state(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.kind == b.kind && (a.mode == b.mode || a.kind == Kind::Dir),
        _ => false,
    }
}

/// Whether `path` is a UCI package (merged at option level when both sides changed it).
pub fn is_uci(path: &RelPath) -> bool {
    path.as_str()
        .strip_prefix("etc/config/")
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// What the primary does with one offered change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The primary has the backup's state already (or both made the same change).
    Nothing,
    /// Only the backup changed it: its state goes live on the primary.
    TakeTheirs,
    /// Both changed a UCI file: merge the three versions.
    Merge,
    /// Both changed something that cannot be merged: the backup's (the authority's) state
    /// goes live, the primary's is kept in the attic, a conflict is recorded.
    Conflict,
}

/// Decides one change against the primary's live state `ours`.
pub fn decide(c: &Change, ours: Option<&Entry>) -> Decision {
    if same_state(ours, c.live.as_ref()) {
        return Decision::Nothing;
    }
    if same_state(ours, c.base.as_ref()) {
        return Decision::TakeTheirs;
    }
    let file = |e: Option<&Entry>| e.is_some_and(|e| matches!(e.kind, Kind::File { .. }));
    // Both changed. A UCI file edited on both (or created on both) merges; a deletion on one
    // side against an edit on the other is a conflict, decided for the authority.
    if is_uci(&c.path) && file(ours) && file(c.live.as_ref()) {
        return Decision::Merge;
    }
    Decision::Conflict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> Entry {
        Entry {
            path: RelPath::new(path).unwrap(),
            kind: Kind::File {
                size: data.len() as u64,
                hash: Hash::of(data),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
        }
    }

    fn change(path: &str, base: Option<&[u8]>, live: Option<&[u8]>) -> Change {
        Change {
            path: RelPath::new(path).unwrap(),
            base: base.map(|d| file(path, d)),
            live: live.map(|d| file(path, d)),
            data: live.map(<[u8]>::to_vec),
            base_data: base.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn one_side_changed_wins_both_changed_merges_or_conflicts() {
        let c = change("etc/config/firewall", Some(b"a"), Some(b"b"));
        let p = "etc/config/firewall";
        assert_eq!(decide(&c, Some(&file(p, b"a"))), Decision::TakeTheirs);
        assert_eq!(decide(&c, Some(&file(p, b"b"))), Decision::Nothing);
        assert_eq!(decide(&c, Some(&file(p, b"c"))), Decision::Merge);
        assert_eq!(decide(&c, None), Decision::Conflict);
        let new = change("etc/app/new", None, Some(b"x"));
        assert_eq!(decide(&new, None), Decision::TakeTheirs);
        assert_eq!(
            decide(&new, Some(&file("etc/app/new", b"y"))),
            Decision::Conflict
        );
        let gone = change("etc/app/old", Some(b"x"), None);
        assert_eq!(
            decide(&gone, Some(&file("etc/app/old", b"x"))),
            Decision::TakeTheirs
        );
        assert_eq!(decide(&gone, None), Decision::Nothing);
    }

    #[test]
    fn offers_round_trip_and_lies_are_refused() {
        let mut o = Offer {
            version: PULL_VERSION,
            node: "b".into(),
            authority_since: Some(5),
            master: true,
            changes: vec![change("etc/config/x", Some(b"1"), Some(b"2"))],
            ..Offer::default()
        };
        assert_eq!(Offer::decode(&o.encode()).unwrap(), o);
        o.changes[0].data = Some(b"3".to_vec());
        let e = Offer::decode(&o.encode()).unwrap_err().to_string();
        assert!(e.contains("etc/config/x") && e.contains("blake3"), "{e}");
        assert!(Offer::decode(b"not zstd").is_err());
        assert!(is_uci(&RelPath::new("etc/config/dhcp").unwrap()));
        assert!(!is_uci(&RelPath::new("etc/config/x/y").unwrap()));
        assert!(!is_uci(&RelPath::new("etc/app").unwrap()));
    }
}
