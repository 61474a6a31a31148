//! The attic: every live version a restore replaces or deletes, kept (issue 11, item 4).
//!
//! An admin's hand edit on the backup, or the backup's own configuration when the primary's
//! generation lands on it, is never lost: before a restore writes over a live file or symlink,
//! or deletes one, a copy goes here, tagged with the generation that replaced it, the reason and
//! the time. `ha-sync attic` lists the copies and `ha-sync attic restore PATH [GEN]` puts one
//! back through the normal atomic write (the version it replaces is kept too).
//!
//! Layout under [`Node::attic_dir`] (persistent, on the same filesystem as the staging tree on
//! a router): `index`, one JSON line per kept version, appended and fsynced after its copy is
//! durable, so a torn line or a copy without a line is ignored, never half-trusted; and
//! `v/<seq>` the copies themselves. Bounded: the last [`DEFAULT_GENERATIONS`] generations and
//! [`DEFAULT_MAX_BYTES`] bytes (UCI `keepalived.ha_peer.attic_generations` and
//! `attic_max_bytes`), oldest pruned first; a single version larger than the byte bound is not
//! kept, and the restore says so.

use crate::clock;
use crate::fsx::{self, Dir, Durability, FileType, Meta};
use crate::node::Node;
use crate::path::RelPath;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Generations whose replaced versions are kept.
pub const DEFAULT_GENERATIONS: usize = 20;
/// Bytes of kept content.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;
const INDEX: &str = "index";
const VERSIONS: &str = "v";

#[derive(Debug, thiserror::Error)]
pub enum AtticError {
    #[error("attic {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attic: {path} is {size} bytes, more than the attic holds ({max} bytes)")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("attic: no kept version of {path}{}", .generation.as_deref().map(|g| format!(" from generation {g}")).unwrap_or_default())]
    NotFound {
        path: String,
        generation: Option<String>,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> AtticError + '_ {
    move |source| AtticError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Why a version was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// A restore of the primary's generation wrote over it or deleted it.
    Restore,
    /// `ha-sync attic restore` put another version in its place.
    Manual,
    /// Failback: a pull from the acting backup took its version (or merged it) here.
    Pull,
}

/// What a kept version was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum KeptKind {
    File { size: u64 },
    Symlink { target: String },
}

/// One kept version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub seq: u64,
    /// Router path, relative (`etc/config/firewall`).
    pub path: String,
    /// The generation whose restore replaced it (root hash, hex).
    pub generation: String,
    pub reason: Reason,
    /// When it was kept, seconds since the epoch.
    pub time: u64,
    #[serde(flatten)]
    pub kind: KeptKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
}

impl Kept {
    fn bytes(&self) -> u64 {
        match &self.kind {
            KeptKind::File { size } => *size,
            KeptKind::Symlink { target } => target.len() as u64,
        }
    }
}

/// A node's attic.
#[derive(Debug, Clone)]
pub struct Attic {
    dir: PathBuf,
    generations: usize,
    max_bytes: u64,
}

impl Attic {
    /// The attic of `node`, bounded by its UCI options (or the defaults).
    pub fn new(node: &Node) -> Attic {
        let uci = node.keepalived().ok();
        let opt = |name: &str| {
            uci.as_ref()
                .and_then(|p| p.get("ha_peer", name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Attic {
            dir: node.attic_dir(),
            generations: opt("attic_generations")
                .map_or(DEFAULT_GENERATIONS, |g| g.max(1) as usize),
            max_bytes: opt("attic_max_bytes").unwrap_or(DEFAULT_MAX_BYTES),
        }
    }

    /// An attic at `dir` with explicit bounds (tests, tools).
    pub fn at(dir: impl Into<PathBuf>, generations: usize, max_bytes: u64) -> Attic {
        Attic {
            dir: dir.into(),
            generations: generations.max(1),
            max_bytes,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps what `live` (a directory of the live tree) holds at `name` (router path `rel`)
    /// before it is replaced or deleted. A regular file or a symlink is copied; a directory or
    /// a missing path keeps nothing (`Ok(None)`). The copy is durable before this returns.
    pub fn keep(
        &self,
        rel: &RelPath,
        live: &Dir,
        name: &str,
        generation: &str,
        reason: Reason,
    ) -> Result<Option<Kept>, AtticError> {
        let _lock = self.lock()?;
        let k = self.keep_with(rel, live, name, generation, reason, Durability::Durable)?;
        self.prune()?;
        Ok(k)
    }

    /// [`Attic::keep`] without flushing the copy: for a batch (a directory a restore removes),
    /// made durable at once by [`Attic::flush`] before anything it copied is deleted.
    pub fn keep_unflushed(
        &self,
        rel: &RelPath,
        live: &Dir,
        name: &str,
        generation: &str,
        reason: Reason,
    ) -> Result<Option<Kept>, AtticError> {
        let _lock = self.lock()?;
        self.keep_with(rel, live, name, generation, reason, Durability::Visible)
    }

    /// Makes every copy kept so far durable (one flush of the attic's filesystem), then keeps
    /// the attic within its bounds.
    pub fn flush(&self) -> Result<(), AtticError> {
        Dir::open(&self.dir, false)
            .and_then(|d| d.sync_fs())
            .map_err(io_err(&self.dir))?;
        let _lock = self.lock()?;
        self.prune()
    }

    /// Copies what live holds at `name` (`rel`) into the attic and indexes it. Called with
    /// the attic's lock held.
    fn keep_with(
        &self,
        rel: &RelPath,
        live: &Dir,
        name: &str,
        generation: &str,
        reason: Reason,
        durability: Durability,
    ) -> Result<Option<Kept>, AtticError> {
        let here = live.path().join(name);
        let Some(st) = live.lstat(name).map_err(io_err(&here))? else {
            return Ok(None);
        };
        let (kind, data) = match st.kind {
            FileType::File => {
                if st.size > self.max_bytes {
                    return Err(AtticError::TooLarge {
                        path: rel.to_abs(),
                        size: st.size,
                        max: self.max_bytes,
                    });
                }
                let data = live
                    .read_file(name, self.max_bytes)
                    .map_err(io_err(&here))?;
                (
                    KeptKind::File {
                        size: data.len() as u64,
                    },
                    Some(data),
                )
            }
            FileType::Symlink => (
                KeptKind::Symlink {
                    target: live.read_link(name).map_err(io_err(&here))?,
                },
                None,
            ),
            _ => return Ok(None),
        };
        let seq = self.next_seq()?;
        let k = Kept {
            seq,
            path: rel.as_str().to_string(),
            generation: generation.to_string(),
            reason,
            time: clock::now_secs(),
            kind,
            mode: st.mode,
            uid: st.uid,
            gid: st.gid,
            mtime_ns: st.mtime_ns,
        };
        if let Some(data) = &data {
            let p = self.version_path(seq);
            fsx::write_atomic(&p, data, 0o600, durability).map_err(io_err(&p))?;
        }
        self.append(&k, durability)?;
        Ok(Some(k))
    }

    /// Every kept version (of `rel` only, when given), oldest first.
    pub fn list(&self, rel: Option<&RelPath>) -> Result<Vec<Kept>, AtticError> {
        let all = self.read_index()?;
        Ok(match rel {
            Some(r) => all.into_iter().filter(|k| k.path == r.as_str()).collect(),
            None => all,
        })
    }

    /// Puts a kept version of `rel` back in `node`'s live tree (the newest one, or the newest
    /// replaced by `generation`, a prefix of its hex being enough), through an atomic write
    /// with its mode, owner and mtime. What live holds there now is kept first.
    pub fn restore(
        &self,
        node: &Node,
        rel: &RelPath,
        generation: Option<&str>,
    ) -> Result<Kept, AtticError> {
        let found = self
            .list(Some(rel))?
            .into_iter()
            .rev()
            .find(|k| generation.is_none_or(|g| k.generation.starts_with(g)))
            .ok_or_else(|| AtticError::NotFound {
                path: rel.to_abs(),
                generation: generation.map(str::to_string),
            })?;
        let root = Dir::open(node.root(), false).map_err(io_err(node.root()))?;
        let live = root
            .parent_of(rel, true)
            .map_err(io_err(&node.root().join(rel.as_str())))?;
        let here = live.path().join(rel.file_name());
        self.keep(rel, &live, rel.file_name(), "manual", Reason::Manual)?;
        let meta = Meta {
            mode: found.mode,
            uid: found.uid,
            gid: found.gid,
            mtime_ns: found.mtime_ns,
        };
        match &found.kind {
            KeptKind::File { .. } => {
                let p = self.version_path(found.seq);
                let data = std::fs::read(&p).map_err(io_err(&p))?;
                live.write_file_atomic(rel.file_name(), &data, Some(meta))
                    .map_err(io_err(&here))?;
            }
            KeptKind::Symlink { target } => {
                live.symlink_atomic(target, rel.file_name(), Some(meta))
                    .map_err(io_err(&here))?;
            }
        }
        Ok(found)
    }

    fn version_path(&self, seq: u64) -> PathBuf {
        self.dir.join(VERSIONS).join(seq.to_string())
    }

    fn lock(&self) -> Result<fsx::Lock, AtticError> {
        let p = self.dir.join(".lock");
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        fsx::Lock::acquire(&p).map_err(io_err(&p))
    }

    fn next_seq(&self) -> Result<u64, AtticError> {
        Ok(self.read_index()?.last().map_or(1, |k| k.seq + 1))
    }

    /// The index; torn or foreign lines, and lines whose copy is missing, are skipped.
    fn read_index(&self) -> Result<Vec<Kept>, AtticError> {
        let p = self.dir.join(INDEX);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&p)(e)),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<Kept>(l).ok())
            .filter(|k| {
                matches!(k.kind, KeptKind::Symlink { .. }) || self.version_path(k.seq).exists()
            })
            .collect())
    }

    fn append(&self, k: &Kept, durability: Durability) -> Result<(), AtticError> {
        let p = self.dir.join(INDEX);
        let mut line = serde_json::to_vec(k).map_err(|e| io_err(&p)(io::Error::other(e)))?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io_err(&p))?;
        f.write_all(&line).map_err(io_err(&p))?;
        if durability == Durability::Durable {
            f.sync_all().map_err(io_err(&p))?;
        }
        Ok(())
    }

    /// Drops the oldest generations past the bound, then the oldest versions past the bytes.
    fn prune(&self) -> Result<(), AtticError> {
        let all = self.read_index()?;
        let mut gens: Vec<&str> = Vec::new();
        for k in all.iter().rev() {
            if !gens.contains(&k.generation.as_str()) {
                gens.push(&k.generation);
            }
        }
        let keep_gens: BTreeSet<&str> = gens.iter().take(self.generations).copied().collect();
        let mut kept: Vec<&Kept> = Vec::new();
        let mut bytes = 0u64;
        for k in all.iter().rev() {
            if keep_gens.contains(k.generation.as_str()) && bytes + k.bytes() <= self.max_bytes {
                bytes += k.bytes();
                kept.push(k);
            }
        }
        if kept.len() == all.len() {
            return Ok(());
        }
        kept.reverse();
        let mut text = Vec::new();
        for k in &kept {
            let mut line =
                serde_json::to_vec(k).map_err(|e| io_err(&self.dir)(io::Error::other(e)))?;
            line.push(b'\n');
            text.extend_from_slice(&line);
        }
        let p = self.dir.join(INDEX);
        // Not flushed: a crash that loses the shorter index leaves the longer one, whose lines
        // for copies deleted below are skipped when read.
        fsx::write_atomic(&p, &text, 0o600, Durability::Visible).map_err(io_err(&p))?;
        let live: BTreeSet<u64> = kept.iter().map(|k| k.seq).collect();
        for k in &all {
            if !live.contains(&k.seq) {
                let _ = std::fs::remove_file(self.version_path(k.seq));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
