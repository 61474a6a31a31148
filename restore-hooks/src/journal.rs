//! The restore journal: how a restore killed at any point is finished at the next start.
//!
//! Every file is replaced atomically, but a generation is many files: a restore killed half
//! way leaves live with some files of the new generation and some of the old one, a mix no
//! primary ever had. The journal, `<staging>/.ha-sync/restore-journal` (on flash, beside the
//! staging tree it refers to), closes that window:
//!
//! 1. before the first change to live, the header (`root <hash>`, `phase restore`) is written
//!    atomically and fsynced; every live path is then appended before it is touched;
//! 2. when live holds the whole generation (directories fsynced), the journal is rewritten as
//!    `phase notify` with the changed paths, and the NOTIFY_SYNC actions run;
//! 3. `.ha-sync/restored` (the generation now live, used to find files the primary deleted)
//!    is written, then the journal is removed.
//!
//! `recover` at the next start of the agent or a hook finds the journal and restores the
//! committed generation again. The restore is idempotent (it compares before writing), so
//! redoing it converges whatever point the crash hit. The paths the lost run had already
//! written no longer differ from staging, so the changed set is rebuilt from the journal's
//! lines plus the manifest difference between the last restored generation and this one, and
//! the NOTIFY_SYNC actions run on it: a crash never swallows a reload.
//!
//! A restore that finds nothing to change writes no journal at all.

use crate::{at, HookError};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use sync_core::fsx::Dir;
use sync_core::manifest::Hash;

pub use sync_core::staging::layout::{JOURNAL, RESTORED};
const MAGIC: &str = "ha-sync restore journal 1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Restore,
    Notify,
}

/// What a journal left by an earlier run says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub root: Hash,
    pub phase: Phase,
    /// Router paths noted (restore phase) or changed (notify phase).
    pub paths: Vec<String>,
}

/// The journal of one restore, created on the first change.
pub struct Journal<'a> {
    state: &'a Dir,
    path: PathBuf,
    root: Hash,
    file: Option<File>,
    /// Paths an interrupted run had noted: carried into this run's journal, so a second
    /// crash during recovery does not forget them.
    seed: Vec<String>,
}

impl<'a> Journal<'a> {
    /// `state` is the staging tree's `.ha-sync` directory.
    pub fn new(state: &'a Dir, root: Hash) -> Journal<'a> {
        Journal {
            state,
            path: state.path().join(JOURNAL),
            root,
            file: None,
            seed: Vec::new(),
        }
    }

    pub fn with_seed(mut self, paths: &[String]) -> Journal<'a> {
        self.seed = paths.to_vec();
        self
    }

    pub fn started(&self) -> bool {
        self.file.is_some()
    }

    fn header(&self, phase: Phase) -> String {
        let phase = match phase {
            Phase::Restore => "restore",
            Phase::Notify => "notify",
        };
        format!("{MAGIC}\nroot {}\nphase {phase}\n", self.root)
    }

    /// Writes the header if not yet done; durable before returning.
    pub fn start(&mut self) -> Result<(), HookError> {
        if self.file.is_some() {
            return Ok(());
        }
        let mut text = self.header(Phase::Restore);
        for p in &self.seed {
            text.push_str(&escape(p));
            text.push('\n');
        }
        self.state
            .write_file_atomic(JOURNAL, text.as_bytes(), None)
            .map_err(at(&self.path))?;
        self.state.sync().map_err(at(self.state.path()))?;
        let f = OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(at(&self.path))?;
        self.file = Some(f);
        Ok(())
    }

    /// Notes `abs` before it is touched. Not fsynced: a killed process loses nothing written,
    /// and after a power cut the changed set is rebuilt from the manifests anyway.
    pub fn note(&mut self, abs: &str) -> Result<(), HookError> {
        self.start()?;
        let f = self.file.as_mut().expect("started above");
        f.write_all(format!("{}\n", escape(abs)).as_bytes())
            .map_err(at(&self.path))
    }

    /// Live holds the whole generation: record what changed for the NOTIFY_SYNC actions.
    pub fn to_notify(&mut self, changed: &[String]) -> Result<(), HookError> {
        let mut text = self.header(Phase::Notify);
        for c in changed {
            text.push_str(&escape(c));
            text.push('\n');
        }
        self.file = None;
        self.state
            .write_file_atomic(JOURNAL, text.as_bytes(), None)
            .map_err(at(&self.path))?;
        self.state.sync().map_err(at(self.state.path()))?;
        self.file = Some(File::open(&self.path).map_err(at(&self.path))?);
        Ok(())
    }
}

/// Removes the journal (the restore is complete); missing is fine.
pub fn clear(state: &Dir) -> Result<(), HookError> {
    let path = state.path().join(JOURNAL);
    match state.unlink(JOURNAL) {
        Ok(()) => state.sync().map_err(at(state.path())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(at(path)(e)),
    }
}

/// Reads the journal an earlier run left, if any.
pub fn read(state: &Dir) -> Result<Option<Pending>, HookError> {
    let path = state.path().join(JOURNAL);
    let bytes = match state.read_file(JOURNAL, 64 << 20) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(at(&path)(e)),
    };
    parse(&String::from_utf8_lossy(&bytes), &path).map(Some)
}

fn parse(text: &str, path: &Path) -> Result<Pending, HookError> {
    let bad = |msg: &str| HookError::Journal {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    };
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(bad("not an ha-sync restore journal"));
    }
    let root = lines
        .next()
        .and_then(|l| l.strip_prefix("root "))
        .and_then(Hash::from_hex)
        .ok_or_else(|| bad("no generation hash"))?;
    let phase = match lines.next() {
        Some("phase restore") => Phase::Restore,
        Some("phase notify") => Phase::Notify,
        _ => return Err(bad("no phase")),
    };
    // The last line may be cut short by the crash: a path that is not absolute is dropped.
    let paths = lines.map(unescape).filter(|p| p.starts_with('/')).collect();
    Ok(Pending { root, phase, paths })
}

/// Paths may hold newlines; one line per path.
fn escape(p: &str) -> String {
    p.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unescape(l: &str) -> String {
    let mut out = String::with_capacity(l.len());
    let mut chars = l.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_through_both_phases() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path(), false).unwrap();
        assert_eq!(read(&d).unwrap(), None);
        let root = Hash::of(b"gen");
        let mut j = Journal::new(&d, root);
        j.note("/etc/config/firewall").unwrap();
        j.note("/etc/odd\nname").unwrap();
        let p = read(&d).unwrap().unwrap();
        assert_eq!((p.root, p.phase), (root, Phase::Restore));
        assert_eq!(p.paths, ["/etc/config/firewall", "/etc/odd\nname"]);
        j.to_notify(&["/etc/config/firewall".to_string()]).unwrap();
        let p = read(&d).unwrap().unwrap();
        assert_eq!((p.phase, p.paths.len()), (Phase::Notify, 1));
        clear(&d).unwrap();
        assert_eq!(read(&d).unwrap(), None);
        clear(&d).unwrap();
    }

    #[test]
    fn garbage_journal_is_an_error_naming_the_file() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(JOURNAL), b"junk").unwrap();
        let d = Dir::open(t.path(), false).unwrap();
        let e = read(&d).unwrap_err().to_string();
        assert!(
            e.contains("restore-journal") && e.contains("not an ha-sync"),
            "{e}"
        );
    }
}
