//! One sync, both ends: the primary (`Primary::run`) and the backup (`Backup::run`), each
//! over any byte stream. In-process they talk over a socket pair (`sync-local`); the agents
//! put them on an SSH channel. See `wire` for the conversation.

use crate::delta::{self, codec, Encoding, WHOLE_MAX};
use crate::limits::{self, MAX_REFETCHES, MAX_SIGNATURE};
use crate::manifest::{Entry, Hash, Kind, Manifest, ManifestDelta, Op};
use crate::path::RelPath;
use crate::scan::{self, ScanError};
use crate::staging::{ApplyError, Staging, Verified};
use crate::wire;
use crate::wire::{
    unexpected, Commit, Conn, FileHeader, Hello, ManifestForm, Msg, RestoreReport, Traffic, Want,
    WantKind, Welcome, WireError, MAGIC, MAX_MANIFEST, PROTOCOL_VERSION,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("{path}: {msg}")]
    Data { path: String, msg: String },
    #[error("manifest from the peer: {0}")]
    Manifest(String),
    #[error("state {path}: {source}")]
    State { path: PathBuf, source: io::Error },
    /// The peer went past one of the session's bounds (`limits`).
    #[error("{0}")]
    Limit(String),
    /// An error the peer caused (what it sent, or did not send in time), naming the peer.
    #[error("{peer}: {source}")]
    Peer {
        peer: String,
        #[source]
        source: Box<SyncError>,
    },
}

impl SyncError {
    /// Whether the session ended because its deadline passed.
    pub fn is_deadline(&self) -> bool {
        match self {
            SyncError::Wire(WireError::Deadline(_)) => true,
            SyncError::Peer { source, .. } => source.is_deadline(),
            _ => false,
        }
    }
}

/// The bounds of one primary session besides the fixed ones of `limits`.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// How the backup is named in errors (its address; empty: by its node name only).
    pub peer: String,
    /// How long the session may take; by default `manifest::session_deadline` of the manifest.
    pub deadline: Duration,
}

impl SessionLimits {
    /// The defaults for a session sending `m` to `peer`.
    pub fn for_manifest(peer: &str, m: &Manifest) -> SessionLimits {
        SessionLimits {
            peer: peer.to_string(),
            deadline: crate::manifest::session_deadline(m),
        }
    }
}

/// What the primary saw of one sync.
#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    pub root: Hash,
    /// Roots were equal: one round trip, nothing sent.
    pub up_to_date: bool,
    pub form: Option<ManifestForm>,
    pub files_sent: u64,
    /// File payload bytes (compressed) sent.
    pub payload_bytes: u64,
    pub traffic: Traffic,
    pub commit: Option<Commit>,
    pub restore: Option<RestoreReport>,
    /// The generation the backup's live tree holds, as it said in its Welcome.
    pub restored: Option<Hash>,
    pub elapsed: Duration,
}

/// The primary's state between syncs, under `var/run/ha-sync/` (RAM on a router: lost at a
/// reboot, which costs one full manifest, nothing else).
pub struct PrimaryState {
    dir: PathBuf,
}

/// Total size of the basis store (zstd copies of what the backup holds, for patches).
pub const BASIS_BUDGET: u64 = 64 << 20;

impl PrimaryState {
    pub fn new(dir: &Path) -> PrimaryState {
        PrimaryState {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn acked_path(&self) -> PathBuf {
        self.dir.join("acked")
    }

    fn acked_root_path(&self) -> PathBuf {
        self.dir.join("acked.root")
    }

    /// Root hash of the acked manifest, without decoding it (written before it; read
    /// back only when the manifest is there too).
    pub fn acked_root(&self) -> Option<Hash> {
        if !self.acked_path().exists() {
            return None;
        }
        let s = std::fs::read_to_string(self.acked_root_path()).ok()?;
        Hash::from_hex(s.trim())
    }

    fn basis_path(&self, h: &Hash) -> PathBuf {
        self.dir.join("basis").join(h.to_hex())
    }

    /// The manifest the backup last committed, as this primary sent it.
    pub fn acked(&self) -> Option<Manifest> {
        let b = std::fs::read(self.acked_path()).ok()?;
        Manifest::decode(&b).ok()
    }

    fn write(&self, path: &Path, data: &[u8]) -> Result<(), SyncError> {
        let err = |source| SyncError::State {
            path: path.to_path_buf(),
            source,
        };
        // RAM state (var/run): a reader sees the old or new one; a crash loses at most the
        // last acknowledgement, which costs one full manifest next time.
        crate::fsx::write_atomic(path, data, 0o600, crate::fsx::Durability::Visible).map_err(err)
    }

    fn set_acked(&self, m: Option<&Manifest>) -> Result<(), SyncError> {
        match m {
            Some(m) => {
                // Encoded once, hashed from the bytes: the root without a second pass.
                let bytes = m.encode();
                self.write(
                    &self.acked_root_path(),
                    Hash::of(&bytes).to_hex().as_bytes(),
                )?;
                self.write(&self.acked_path(), &bytes)
            }
            None => match std::fs::remove_file(self.acked_path()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SyncError::State {
                    path: self.acked_path(),
                    source: e,
                }),
                _ => Ok(()),
            },
        }
    }

    /// A file version the backup holds, if kept: zstd on disk, checked on the way out.
    fn basis(&self, h: &Hash, size: u64) -> Option<Vec<u8>> {
        let z = std::fs::read(self.basis_path(h)).ok()?;
        let data = delta::decompress(&z, size).ok()?;
        (Hash::of(&data) == *h).then_some(data)
    }

    fn keep_basis(&self, h: &Hash, compressed: &[u8]) {
        let p = self.basis_path(h);
        if !p.exists() {
            // Best effort: a missing basis only costs a bigger transfer later.
            let _ = self.write(&p, compressed);
        }
    }

    /// Drops basis copies the backup no longer holds, then the largest over the budget.
    fn prune_basis(&self, keep: &Manifest) {
        let Ok(rd) = std::fs::read_dir(self.dir.join("basis")) else {
            return;
        };
        let present: Vec<_> = rd.flatten().collect();
        if present.is_empty() {
            return;
        }
        // Per sync, on every entry of the tree: hashes compared as bytes, not as hex strings.
        let wanted: HashSet<Hash> = keep.entries.iter().filter_map(|e| e.file_hash()).collect();
        let mut kept = Vec::new();
        for ent in present {
            let name = ent.file_name().to_string_lossy().into_owned();
            if Hash::from_hex(&name).is_some_and(|h| wanted.contains(&h)) {
                kept.push((ent.metadata().map(|m| m.len()).unwrap_or(0), ent.path()));
            } else {
                let _ = std::fs::remove_file(ent.path());
            }
        }
        let mut total: u64 = kept.iter().map(|k| k.0).sum();
        kept.sort();
        while total > BASIS_BUDGET {
            let Some((len, p)) = kept.pop() else { break };
            let _ = std::fs::remove_file(p);
            total -= len;
        }
    }
}

/// Whether a file is worth a basis copy (small files go whole anyway).
fn wants_basis(size: u64) -> bool {
    size > WHOLE_MAX && size <= BASIS_BUDGET / 4
}

pub struct Primary<'a> {
    /// Where the manifest's paths live (the router's `/`).
    pub root: &'a Path,
    pub manifest: &'a Manifest,
    pub state: &'a PrimaryState,
    pub node: &'a str,
    /// Called as files go out: (files sent, payload bytes sent).
    pub progress: &'a mut dyn FnMut(u64, u64),
}

impl Primary<'_> {
    /// One session with the default bounds, the backup named by its node name in errors.
    pub fn run<S: Read + Write>(&mut self, stream: S) -> Result<SyncReport, SyncError> {
        let limits = SessionLimits::for_manifest("", self.manifest);
        self.run_within(stream, &limits)
    }

    /// One session within `limits` (and those of `limits`): whatever the backup does, it
    /// ends, and an error the backup caused names it.
    pub fn run_within<S: Read + Write>(
        &mut self,
        stream: S,
        limits: &SessionLimits,
    ) -> Result<SyncReport, SyncError> {
        let mut conn = Conn::new(stream);
        conn.set_deadline(limits.deadline);
        conn.set_receive_limit(crate::manifest::primary_receive_budget(self.manifest));
        let mut node = None;
        self.converse(&mut conn, &mut node).map_err(|e| match e {
            e @ (SyncError::Wire(_) | SyncError::Limit(_)) => SyncError::Peer {
                peer: match (node, limits.peer.as_str()) {
                    (Some(n), "") => format!("backup {n}"),
                    (Some(n), addr) => format!("backup {n} ({addr})"),
                    (None, "") => "backup".into(),
                    (None, addr) => format!("backup {addr}"),
                },
                source: Box::new(e),
            },
            e => e,
        })
    }

    /// The session, step by step: greet, send the manifest, push what changed, answer the
    /// wants, hear the commit and the restore.
    fn converse<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
        node: &mut Option<String>,
    ) -> Result<SyncReport, SyncError> {
        let start = Instant::now();
        let root = self.manifest.root_hash();
        let mut rep = SyncReport {
            root,
            ..SyncReport::default()
        };
        let welcome = self.greet(conn, node, root)?;
        rep.restored = welcome.restored;
        if welcome.staging_root == Some(root) {
            self.up_to_date(conn, root)?;
            rep.up_to_date = true;
            rep.traffic = conn.traffic;
            rep.elapsed = start.elapsed();
            return Ok(rep);
        }
        let base = self.send_manifest(conn, &welcome, &mut rep)?;
        let mut sends = self.push(conn, base.as_ref(), &mut rep)?;
        tracing::debug!("primary: manifest and pushes sent at {:?}", start.elapsed());
        self.answer_wants(conn, &mut sends, &mut rep)?;
        self.hear_commit(conn, &mut rep)?;
        tracing::debug!("primary: committed at {:?}", start.elapsed());
        rep.traffic = conn.traffic;
        rep.elapsed = start.elapsed();
        Ok(rep)
    }

    /// Hello (our root, the root we last saw the backup commit) and the backup's Welcome.
    fn greet<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
        node: &mut Option<String>,
        root: Hash,
    ) -> Result<Welcome, SyncError> {
        conn.send(&Msg::Hello(Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            root,
            acked: self.state.acked_root(),
            node: self.node.to_string(),
        }))?;
        conn.flush()?;
        let welcome = match conn.recv()? {
            Msg::Welcome(w) => w,
            other => return Err(unexpected("Welcome", &other).into()),
        };
        *node = Some(crate::bounded::head(&welcome.node));
        Ok(welcome)
    }

    /// The backup holds our manifest already: goodbye, and remember it holds it.
    fn up_to_date<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
        root: Hash,
    ) -> Result<(), SyncError> {
        conn.send(&Msg::Bye)?;
        conn.flush()?;
        if self.state.acked_root() != Some(root) {
            self.state.set_acked(Some(self.manifest))?;
        }
        Ok(())
    }

    /// The manifest: only the changes when the backup holds exactly what we last saw it
    /// commit (decoded only now: a no-change sync never needs it), else whole. Returns the
    /// base the changes are against.
    fn send_manifest<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
        welcome: &Welcome,
        rep: &mut SyncReport,
    ) -> Result<Option<Manifest>, SyncError> {
        let acked_root = self.state.acked_root();
        let base = if acked_root.is_some() && welcome.staging_root == acked_root {
            self.state
                .acked()
                .filter(|a| welcome.staging_root == Some(a.root_hash()))
        } else {
            None
        };
        let (form, body) = match &base {
            Some(b) => (
                ManifestForm::Delta,
                postcard::to_allocvec(&ManifestDelta::between(b, self.manifest)),
            ),
            None => (ManifestForm::Full, Ok(self.manifest.encode())),
        };
        rep.form = Some(form);
        let body = body.map_err(|e| SyncError::Manifest(e.to_string()))?;
        let z = delta::compress(&body);
        conn.send(&Msg::Manifest {
            form,
            len: z.len() as u64,
        })?;
        conn.send_chunks(&z)?;
        Ok(base)
    }

    /// With a delta manifest, the changed files go right away (no round trip for wants):
    /// small ones whole, others as deltas against the basis we kept. Returns how many times
    /// each file went out (bounded per file for the session).
    fn push<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
        base: Option<&Manifest>,
        rep: &mut SyncReport,
    ) -> Result<HashMap<RelPath, usize>, SyncError> {
        let mut sends: HashMap<RelPath, usize> = HashMap::new();
        if let Some(b) = base {
            for op in crate::manifest::diff(b, self.manifest) {
                if !op.needs_content() {
                    continue;
                }
                let new = op.target().expect("content ops have a target");
                let old = match &op {
                    Op::Content { old, .. } => Some(old),
                    _ => None,
                };
                let basis = old.and_then(|o| {
                    Some((o.file_hash()?, self.state.basis(&o.file_hash()?, o.size())?))
                });
                if basis.is_some() || new.size() <= WHOLE_MAX {
                    let enc = encode_file(
                        self.root,
                        self.state,
                        new,
                        basis.as_ref().map(|(h, d)| (*h, d.as_slice())),
                        None,
                    )?;
                    sends.insert(new.path.clone(), 1);
                    self.send_encoded(conn, enc, rep)?;
                }
            }
        }
        conn.send(&Msg::EndOfPush)?;
        conn.flush()?;
        Ok(sends)
    }

    /// Rounds of wants until the backup wants nothing more (bounded by `MAX_REFETCHES`).
    fn answer_wants<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
        sends: &mut HashMap<RelPath, usize>,
        rep: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let mut rounds = 0;
        loop {
            let wants = self.recv_wants(conn, sends)?;
            if wants.is_empty() {
                return Ok(());
            }
            rounds += 1;
            if rounds > 1 + MAX_REFETCHES {
                return Err(SyncError::Limit(format!(
                    "round {rounds} of wants; a session answers at most {} (limits::MAX_REFETCHES)",
                    1 + MAX_REFETCHES
                )));
            }
            self.send_wanted(conn, &wants, rep)?;
            conn.send(&Msg::EndOfData)?;
            conn.flush()?;
        }
    }

    /// The commit, recorded (only a commit of exactly our manifest lets the next sync send
    /// changes from it), then the restore's report.
    fn hear_commit<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
        rep: &mut SyncReport,
    ) -> Result<(), SyncError> {
        crate::fault::point(crate::fault::PRIMARY_AWAITING_COMMIT);
        let commit = match conn.recv()? {
            Msg::Committed(c) => c,
            other => return Err(unexpected("Committed", &other).into()),
        };
        crate::fault::point(crate::fault::PRIMARY_COMMITTED);
        if commit.root == rep.root {
            self.state.set_acked(Some(self.manifest))?;
            self.state.prune_basis(self.manifest);
        } else {
            self.state.set_acked(None)?;
        }
        rep.commit = Some(commit);
        match conn.recv()? {
            Msg::Restored(r) => rep.restore = Some(r),
            other => return Err(unexpected("Restored", &other).into()),
        }
        Ok(())
    }

    /// One round of wants, each checked as it comes: a file of the manifest, once a round,
    /// sent at most `1 + MAX_REFETCHES` times a session, with a signature of a bounded size,
    /// the round within `limits::want_round_budget`. So a round holds at most the
    /// manifest's files and its memory is set by the manifest, not by the backup.
    fn recv_wants<S: Read + Write>(
        &self,
        conn: &mut Conn<S>,
        sends: &mut HashMap<RelPath, usize>,
    ) -> Result<Vec<Want>, SyncError> {
        let budget = crate::manifest::want_round_budget(self.manifest);
        let start = conn.traffic.received;
        let mut wants = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let w = match conn.recv()? {
                Msg::Want(w) => w,
                Msg::EndOfWants => return Ok(wants),
                other => return Err(unexpected("Want or EndOfWants", &other).into()),
            };
            let refuse = |why: String| Err(SyncError::Limit(format!("{}: {why}", w.path.to_abs())));
            if !self
                .manifest
                .get(&w.path)
                .is_some_and(|e| matches!(e.kind, Kind::File { .. }))
            {
                return refuse("wanted, but not a file of the manifest".into());
            }
            if !seen.insert(w.path.clone()) {
                return refuse("asked for twice in one round".into());
            }
            if let WantKind::Rsync { signature, .. } = &w.kind {
                if signature.len() > MAX_SIGNATURE {
                    return refuse(format!(
                        "signature of {} bytes is over the limit of {MAX_SIGNATURE}",
                        signature.len()
                    ));
                }
            }
            let taken = conn.traffic.received - start;
            if taken > budget {
                return refuse(format!(
                    "one round of wants took {taken} bytes, over the limit of {budget} for this manifest"
                ));
            }
            let n = sends.entry(w.path.clone()).or_insert(0);
            *n += 1;
            if *n > 1 + MAX_REFETCHES {
                return refuse(format!(
                    "asked for a {}th time; a file is sent at most {} times a session \
                     (it never verifies on the backup?)",
                    *n,
                    1 + MAX_REFETCHES
                ));
            }
            wants.push(w);
        }
    }

    /// Encodes the wanted files on worker threads (compression is the costly part of a
    /// full sync) while this thread streams them out as they come, in any order: each
    /// file's messages stand on their own. Big files asked whole are streamed by this
    /// thread itself, block by block, so memory stays bounded whatever the file sizes.
    fn send_wanted<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
        wants: &[Want],
        rep: &mut SyncReport,
    ) -> Result<(), SyncError> {
        let is_big = |w: &Want| {
            matches!(w.kind, WantKind::Whole)
                && self
                    .manifest
                    .get(&w.path)
                    .is_some_and(|e| e.size() > STREAM_MIN)
        };
        let (big, small): (Vec<&Want>, Vec<&Want>) = wants.iter().partition(|w| is_big(w));
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 2)
            .min(small.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let (root, manifest, state) = (self.root, self.manifest, self.state);
        std::thread::scope(|s| {
            // Bounded: at most one encoded file per worker waits for the connection.
            let (tx, rx) =
                std::sync::mpsc::sync_channel::<Result<Encoded, SyncError>>(workers.max(1));
            for _ in 0..workers {
                let tx = tx.clone();
                let (next, small) = (&next, &small);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(w) = small.get(i) else { break };
                    let e = manifest.get(&w.path).expect("checked by the caller");
                    let r = match &w.kind {
                        WantKind::Whole => encode_file(root, state, e, None, None),
                        WantKind::Rsync { signature, basis } => {
                            match state.basis(basis, u64::MAX >> 1) {
                                Some(d) => encode_file(root, state, e, Some((*basis, &d)), None),
                                None => encode_file(root, state, e, None, Some(signature)),
                            }
                        }
                    };
                    if tx.send(r).is_err() {
                        break; // the sender gave up
                    }
                });
            }
            drop(tx);
            for w in big {
                while let Ok(r) = rx.try_recv() {
                    self.send_encoded(conn, r?, rep)?;
                }
                let e = manifest.get(&w.path).expect("checked by the caller");
                let sent = stream_whole(conn, root, state, e)?;
                rep.files_sent += 1;
                rep.payload_bytes += sent;
                (self.progress)(rep.files_sent, rep.payload_bytes);
            }
            for r in rx {
                self.send_encoded(conn, r?, rep)?;
            }
            Ok(())
        })
    }

    fn send_encoded<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
        enc: Encoded,
        rep: &mut SyncReport,
    ) -> Result<(), SyncError> {
        conn.send_file(enc.header, &enc.payload, enc.size, enc.hash)?;
        rep.files_sent += 1;
        rep.payload_bytes += enc.payload.len() as u64;
        (self.progress)(rep.files_sent, rep.payload_bytes);
        Ok(())
    }
}

/// A file ready for the wire.
struct Encoded {
    header: FileHeader,
    payload: Vec<u8>,
    size: u64,
    hash: Hash,
}

/// Files above this size, asked whole, are streamed rather than encoded in memory.
const STREAM_MIN: u64 = 256 << 10;

/// Reads, hashes, compresses and sends one file block by block (memory: one block and the
/// compressor's window). Returns the payload bytes sent. Keeps the compressed copy as a
/// basis for later patches when the file is worth it.
fn stream_whole<S: Read + Write>(
    conn: &mut Conn<S>,
    root: &Path,
    state: &PrimaryState,
    e: &Entry,
) -> Result<u64, SyncError> {
    use std::io::Write as _;
    let full = root.join(e.path.as_str());
    let io = |source| {
        SyncError::Scan(ScanError::Io {
            path: full.clone(),
            source,
        })
    };
    let mut f = scan::open_file(&full)?;
    conn.send(&Msg::File(FileHeader {
        path: e.path.clone(),
        encoding: Encoding::Whole,
    }))?;
    let mut z =
        zstd::stream::write::Encoder::new(Vec::with_capacity(wire::CHUNK + 4096), 1).map_err(io)?;
    let mut basis = wants_basis(e.size()).then(Vec::new);
    let mut hasher = blake3::Hasher::new();
    let mut block = vec![0u8; 256 << 10];
    let (mut size, mut sent) = (0u64, 0u64);
    let mut flush = |z: &mut Vec<u8>,
                     conn: &mut Conn<S>,
                     basis: &mut Option<Vec<u8>>|
     -> Result<(), SyncError> {
        conn.send_chunk(z)?;
        sent += z.len() as u64;
        if let Some(b) = basis {
            b.extend_from_slice(z);
        }
        z.clear();
        Ok(())
    };
    loop {
        let n = f.read(&mut block).map_err(io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > delta::MAX_FILE_SIZE {
            return Err(SyncError::Data {
                path: e.path.to_abs(),
                msg: format!("larger than {} bytes", delta::MAX_FILE_SIZE),
            });
        }
        hasher.update(&block[..n]);
        z.write_all(&block[..n]).map_err(io)?;
        if z.get_ref().len() >= wire::CHUNK {
            flush(z.get_mut(), conn, &mut basis)?;
        }
    }
    let mut rest = z.finish().map_err(io)?;
    flush(&mut rest, conn, &mut basis)?;
    let hash = Hash(*hasher.finalize().as_bytes());
    conn.send(&Msg::FileEnd { size, hash })?;
    crate::fault::point(crate::fault::PRIMARY_FILE_SENT);
    if let Some(b) = basis {
        state.keep_basis(&hash, &b);
    }
    Ok(sent)
}

/// Reads and encodes one file. `patch_from` is a version the backup holds; `signature` its
/// rsync signature. A file that changed since the scan goes with the hash of what was
/// read: the backup records that instead, and the next sync (the change woke a trigger
/// anyway) converges.
fn encode_file(
    root: &Path,
    state: &PrimaryState,
    e: &Entry,
    patch_from: Option<(Hash, &[u8])>,
    signature: Option<&Vec<u8>>,
) -> Result<Encoded, SyncError> {
    let full = root.join(e.path.as_str());
    let data = scan::read_file(&full, delta::MAX_FILE_SIZE)?;
    let hash = Hash::of(&data);
    let (encoding, payload) = match (patch_from, signature) {
        (Some((base, basis)), _) => (
            Encoding::Patch { base },
            codec(Encoding::Patch { base }).encode(&data, Some(basis)),
        ),
        (None, Some(sig)) => (
            Encoding::Rsync,
            codec(Encoding::Rsync).encode(&data, Some(sig)),
        ),
        (None, None) => (Encoding::Whole, codec(Encoding::Whole).encode(&data, None)),
    };
    let (encoding, payload) = match payload {
        Ok(p) => (encoding, p),
        // A signature we cannot use: send it whole.
        Err(_) => (
            Encoding::Whole,
            codec(Encoding::Whole)
                .encode(&data, None)
                .map_err(|err| SyncError::Data {
                    path: e.path.to_abs(),
                    msg: err.to_string(),
                })?,
        ),
    };
    if wants_basis(data.len() as u64) {
        if encoding == Encoding::Whole {
            state.keep_basis(&hash, &payload);
        } else {
            state.keep_basis(&hash, &delta::compress(&data));
        }
    }
    let header = FileHeader {
        path: e.path.clone(),
        encoding,
    };
    Ok(Encoded {
        header,
        payload,
        size: data.len() as u64,
        hash,
    })
}

/// What the backup saw of one sync.
#[derive(Debug, Default, Clone)]
pub struct BackupReport {
    pub peer: String,
    pub up_to_date: bool,
    pub commit: Option<Commit>,
    pub restore: Option<RestoreReport>,
    pub traffic: Traffic,
}

/// Runs after each commit: staging -> live. Returns what it did, for the primary.
pub type RestoreFn<'a> = dyn FnMut(&Manifest, &Commit) -> RestoreReport + 'a;

pub struct Backup<'a> {
    pub staging: &'a mut Staging,
    pub node: &'a str,
    pub restore: &'a mut RestoreFn<'a>,
}

impl Backup<'_> {
    pub fn run<S: Read + Write>(&mut self, stream: S) -> Result<BackupReport, SyncError> {
        let mut conn = Conn::new(stream);
        let res = self.converse(&mut conn);
        if let Err(e) = &res {
            // Tell the primary why, if the connection still works; the error stands anyway.
            if !matches!(
                e,
                SyncError::Wire(WireError::Io(_) | WireError::Closed(_) | WireError::Remote(_))
            ) {
                let _ = conn.send(&Msg::Error(e.to_string()));
                let _ = conn.flush();
            }
        }
        res.map(|mut r| {
            r.traffic = conn.traffic;
            r
        })
    }

    /// The session, step by step: welcome, take the manifest, lay out the structure, fetch
    /// the content (pushed, then wanted), commit, restore.
    fn converse<S: Read + Write>(&mut self, conn: &mut Conn<S>) -> Result<BackupReport, SyncError> {
        let t0 = Instant::now();
        let (hello, staging_root) = self.welcome(conn)?;
        let mut rep = BackupReport {
            peer: hello.node.clone(),
            ..BackupReport::default()
        };
        let Some(new) = self.receive_manifest(conn, &hello, staging_root)? else {
            rep.up_to_date = true;
            return Ok(rep);
        };
        tracing::debug!("backup: manifest decoded and checked at {:?}", t0.elapsed());
        let ops = self.plan(&new)?;
        tracing::debug!(
            "backup: manifest in, {} ops, diff {:?}",
            ops.len(),
            t0.elapsed()
        );
        self.staging.apply_structure(&ops)?;
        let mut touched: BTreeSet<RelPath> = ops.iter().map(|o| o.path().clone()).collect();
        // Files that still need content, with the staged copy's entry (delta basis).
        let mut needed: BTreeMap<RelPath, Option<Entry>> = ops
            .iter()
            .filter(|o| o.needs_content())
            .map(|o| match o {
                Op::Content { new, old } => (new.path.clone(), Some(old.clone())),
                o => (o.path().clone(), None),
            })
            .collect();
        let committed = self.fetch(conn, &new, &mut needed)?;
        touched.extend(
            committed
                .entries
                .iter()
                .filter(|e| needed.contains_key(&e.path))
                .map(|e| e.path.clone()),
        );
        self.staging.finish_dirs(&committed, &touched)?;
        let commit = Commit {
            root: self.commit(&ops, &committed)?,
            changed: touched.iter().map(RelPath::to_abs).collect(),
            files_written: ops.iter().filter(|o| o.needs_content()).count() as u64,
            deleted: ops.iter().filter(|o| matches!(o, Op::Delete(_))).count() as u64,
        };
        tracing::debug!("backup: committed {:?} after the manifest", t0.elapsed());
        conn.send(&Msg::Committed(commit.clone()))?;
        conn.flush()?;
        let restore = (self.restore)(&committed, &commit);
        conn.send(&Msg::Restored(restore.clone()))?;
        conn.flush()?;
        rep.commit = Some(commit);
        rep.restore = Some(restore);
        Ok(rep)
    }

    /// The primary's Hello, and our Welcome: what staging holds and what live holds.
    fn welcome<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> Result<(Hello, Option<Hash>), SyncError> {
        let hello = match conn.recv()? {
            Msg::Hello(h) => h,
            other => return Err(unexpected("Hello", &other).into()),
        };
        let staging_root = self.staging.root();
        conn.send(&Msg::Welcome(Welcome {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            staging_root,
            node: self.node.to_string(),
            restored: self.staging.restored_root(),
        }))?;
        conn.flush()?;
        Ok((hello, staging_root))
    }

    /// The manifest, whole or as the changes from what staging holds, checked against the
    /// root the Hello announced; `None` when the primary says goodbye (nothing to send).
    fn receive_manifest<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
        hello: &Hello,
        staging_root: Option<Hash>,
    ) -> Result<Option<Manifest>, SyncError> {
        let (form, len) = match conn.recv()? {
            Msg::Bye => return Ok(None),
            Msg::Manifest { form, len } => (form, len),
            other => return Err(unexpected("Manifest or Bye", &other).into()),
        };
        let z = conn.recv_chunks(len, MAX_MANIFEST, "manifest")?;
        let body = zstd::bulk::decompress(&z, MAX_MANIFEST as usize)
            .map_err(|e| SyncError::Manifest(format!("decompress: {e}")))?;
        let new = match form {
            ManifestForm::Full => {
                Manifest::decode(&body).map_err(|e| SyncError::Manifest(e.to_string()))?
            }
            ManifestForm::Delta => {
                let d =
                    ManifestDelta::decode(&body).map_err(|e| SyncError::Manifest(e.to_string()))?;
                let base = self
                    .staging
                    .committed()
                    .filter(|_| staging_root == Some(d.base))
                    .ok_or_else(|| {
                        SyncError::Manifest(
                            "a delta against a manifest this backup does not hold".into(),
                        )
                    })?;
                d.apply(base)
                    .map_err(|e| SyncError::Manifest(e.to_string()))?
            }
        };
        if new.root_hash() != hello.root {
            return Err(SyncError::Manifest(
                "does not match the root hash announced in Hello".into(),
            ));
        }
        Ok(Some(new))
    }

    /// What staging must do to hold `new`.
    fn plan(&mut self, new: &Manifest) -> Result<Vec<Op>, SyncError> {
        Ok(match self.staging.current(&new.list) {
            Ok(cur) => crate::manifest::diff(&cur, new),
            Err(e) => {
                // Staging that cannot even be rescanned must not wedge every later sync
                // (issue 14, finding 6): empty it and take everything again.
                tracing::warn!("staging cannot be rescanned ({e}): emptied for a full sync");
                self.staging.reset()?;
                crate::manifest::diff(&Manifest::default(), new)
            }
        })
    }

    /// The content of `needed`: the files pushed, then rounds of wants until every one is
    /// verified. Returns the manifest as staged (a file the primary changed under its scan
    /// is recorded as received).
    fn fetch<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
        new: &Manifest,
        needed: &mut BTreeMap<RelPath, Option<Entry>>,
    ) -> Result<Manifest, SyncError> {
        let mut committed = new.clone();
        let mut refetch: Vec<RelPath> = Vec::new();
        self.receive_files(
            conn,
            new,
            &mut committed,
            needed,
            &mut refetch,
            Msg::EndOfPush,
        )?;
        let mut round = 0;
        loop {
            let wants = self.wants(needed, &refetch);
            // Given up before asking again: the primary answers at most 1 + MAX_REFETCHES
            // sends of a file, and would refuse one more.
            if !wants.is_empty() && round == MAX_REFETCHES {
                let p = needed.keys().next().expect("wants not empty").to_abs();
                return Err(SyncError::Data {
                    path: p,
                    msg: "content never matched its hash; giving up".into(),
                });
            }
            for w in &wants {
                conn.send(&Msg::Want(w.clone()))?;
            }
            conn.send(&Msg::EndOfWants)?;
            if wants.is_empty() {
                return Ok(committed);
            }
            round += 1;
            conn.flush()?;
            refetch.clear();
            self.receive_files(
                conn,
                new,
                &mut committed,
                needed,
                &mut refetch,
                Msg::EndOfData,
            )?;
        }
    }

    /// One round of wants: a large file whose staged copy is intact as an rsync delta
    /// against it, anything else (or one that failed to rebuild) whole.
    fn wants(&self, needed: &BTreeMap<RelPath, Option<Entry>>, refetch: &[RelPath]) -> Vec<Want> {
        needed
            .iter()
            .map(|(p, old)| {
                let kind = match old
                    .as_ref()
                    .filter(|o| o.size() > WHOLE_MAX && !refetch.contains(p))
                {
                    Some(o) => match self.staging.read(p, delta::MAX_FILE_SIZE) {
                        Some(b) if Some(Hash::of(&b)) == o.file_hash() => WantKind::Rsync {
                            signature: delta::signature(&b),
                            basis: Hash::of(&b),
                        },
                        _ => WantKind::Whole,
                    },
                    None => WantKind::Whole,
                };
                Want {
                    path: p.clone(),
                    kind,
                }
            })
            .collect()
    }

    /// Commits `committed` (nothing to write when staging holds it already).
    fn commit(&mut self, ops: &[Op], committed: &Manifest) -> Result<Hash, SyncError> {
        Ok(
            if ops.is_empty() && self.staging.root() == Some(committed.root_hash()) {
                committed.root_hash()
            } else {
                self.staging.commit(committed)?
            },
        )
    }

    /// Reads `File`s until `end`. A file that does not rebuild to its hash goes to `refetch`
    /// (and stays in `needed`); one that does is written and leaves `needed`.
    fn receive_files<S: Read + Write>(
        &mut self,
        conn: &mut Conn<S>,
        new: &Manifest,
        committed: &mut Manifest,
        needed: &mut BTreeMap<RelPath, Option<Entry>>,
        refetch: &mut Vec<RelPath>,
        end: Msg,
    ) -> Result<(), SyncError> {
        loop {
            let h = match conn.recv()? {
                Msg::File(h) => h,
                m if m == end => return Ok(()),
                other => return Err(unexpected(end.name(), &other).into()),
            };
            // Checked before a byte of it is taken (issue 14, finding 4): a path the manifest
            // has as a file this sync needs, a payload bounded by that file's size.
            let Some(entry) = new
                .get(&h.path)
                .filter(|e| matches!(e.kind, Kind::File { .. }))
            else {
                return Err(SyncError::Data {
                    path: h.path.to_abs(),
                    msg: "file sent that is not a file in the manifest".into(),
                });
            };
            if !needed.contains_key(&h.path) {
                return Err(SyncError::Data {
                    path: h.path.to_abs(),
                    msg: "file sent that was not needed".into(),
                });
            }
            let limit = limits::max_payload(entry.size());
            let (payload, size, hash) = conn.recv_file_payload(limit).map_err(|e| match e {
                e @ WireError::TooLarge { .. } => SyncError::Data {
                    path: h.path.to_abs(),
                    msg: e.to_string(),
                },
                e => e.into(),
            })?;
            if size > limit {
                return Err(SyncError::Data {
                    path: h.path.to_abs(),
                    msg: format!(
                        "declared {size} bytes; the manifest says {}, so at most {limit}",
                        entry.size()
                    ),
                });
            }
            let basis = match h.encoding {
                Encoding::Whole => None,
                _ => self.staging.read(&h.path, delta::MAX_FILE_SIZE),
            };
            let data = match codec(h.encoding).decode(&payload, basis.as_deref(), size) {
                Ok(d) => d,
                // A delta against a basis we no longer hold as the primary saw it: whole next.
                Err(_) if h.encoding != Encoding::Whole => {
                    refetch.push(h.path.clone());
                    continue;
                }
                Err(e) => {
                    return Err(SyncError::Data {
                        path: h.path.to_abs(),
                        msg: e.to_string(),
                    })
                }
            };
            // Only content whose blake3 is the announced one is staged; other bytes are
            // fetched again, whole.
            let Some(v) = Verified::check(entry, &data, hash).filter(|v| v.entry().size() == size)
            else {
                refetch.push(h.path.clone());
                continue;
            };
            self.staging.write_file(&v)?;
            let e = v.entry().clone();
            if e != *entry {
                // The primary's file changed under its scan: record what we really hold.
                if let Ok(i) = committed.entries.binary_search_by(|x| x.path.cmp(&e.path)) {
                    committed.entries[i] = e;
                }
            }
            needed.remove(&h.path);
        }
    }
}
