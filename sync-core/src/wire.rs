//! The wire format: versioned, length-framed messages over any byte stream.
//!
//! A frame is a little-endian `u32` length followed by that many bytes of a postcard-encoded
//! [`Msg`]. Postcard is not self-describing, so a new field breaks old readers: both sides
//! say their protocol version in the first frame (`Hello`/`Welcome`, whose first fields never
//! change) and refuse another one with a clear error, since the nodes of a cluster are
//! upgraded one at a time.
//!
//! Every length is bounded before anything is allocated: a frame by [`MAX_FRAME`], a file by
//! `delta::MAX_FILE_SIZE`, a manifest by [`MAX_MANIFEST`]. Big payloads (manifests, files)
//! travel as a header followed by `Chunk` frames, so no frame needs to hold a whole file.
//!
//! The conversation (DESIGN.md), primary P and backup B, each turn one flush:
//! ```text
//! P: Hello                              B: Welcome            (equal roots: P says Bye)
//! P: Manifest+chunks, pushed File+chunks..., EndOfPush
//!                                       B: Want..., EndOfWants
//! P: File+chunks..., EndOfData          B: (Want... again for refetches) | Committed
//!                                       B: Restored
//! ```
//! No message is per-file round trip: wants and files are streamed in batches.

use crate::delta::{Encoding, MAX_FILE_SIZE};
use crate::manifest::Hash;
use crate::path::RelPath;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};

pub use crate::limits::{MAX_FRAME, MAX_MANIFEST, MAX_TEXT};
use std::time::{Duration, Instant};

pub const MAGIC: [u8; 4] = *b"HAS\x01";
/// 2: `Welcome.restored`.
pub const PROTOCOL_VERSION: u32 = 2;
/// Payload bytes per chunk frame.
pub const CHUNK: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed by the peer{0}")]
    Closed(&'static str),
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME}")]
    FrameTooLarge(u64),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("peer speaks protocol {theirs}, this side {ours}: upgrade both nodes to the same ha-sync version")]
    Version { ours: u32, theirs: u32 },
    #[error("not an ha-sync peer (bad magic)")]
    BadMagic,
    #[error("protocol violation: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("{what} of {len} bytes is over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("peer reported an error: {0}")]
    Remote(String),
    #[error("the session's deadline of {0:?} passed (the peer answers too slowly or not at all)")]
    Deadline(Duration),
    #[error("the peer sent more than the {0} bytes this session may take")]
    Budget(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u32,
    /// Root hash of the primary's manifest.
    pub root: Hash,
    /// The backup root this primary last saw committed (it can send changes since then).
    pub acked: Option<Hash>,
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub magic: [u8; 4],
    pub version: u32,
    /// Root hash of the staging tree's committed manifest; `None` when there is none or it
    /// cannot be trusted (an interrupted sync).
    pub staging_root: Option<Hash>,
    pub node: String,
    /// The generation the backup's live tree holds (its last completed restore): the
    /// primary's "up to date" means restored, not only staged.
    pub restored: Option<Hash>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManifestForm {
    /// postcard `Manifest`, zstd.
    Full,
    /// postcard `ManifestDelta` against the backup's committed manifest, zstd.
    Delta,
}

/// Starts a file: `Chunk`s of its payload follow, then `FileEnd`. The size and hash come
/// last so that a big file can be read, hashed and compressed as it streams out, in
/// bounded memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    pub path: RelPath,
    pub encoding: Encoding,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WantKind {
    Whole,
    /// fast_rsync signature of the backup's copy, whose blake3 is `basis` (the primary may
    /// answer with a zstd patch instead when it still holds that version).
    Rsync {
        signature: Vec<u8>,
        basis: Hash,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    pub path: RelPath,
    pub kind: WantKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Commit {
    pub root: Hash,
    /// Router paths that changed in staging with this commit.
    pub changed: Vec<String>,
    pub files_written: u64,
    pub deleted: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RestoreReport {
    pub root: Hash,
    /// Restore applied (or had nothing to do).
    pub applied: bool,
    /// Why it was not applied (e.g. this node is VRRP master).
    pub refused: Option<String>,
    pub changed: Vec<String>,
    /// (router path, error) per path that could not be restored.
    pub errors: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Hello(Hello),
    Welcome(Welcome),
    Manifest {
        form: ManifestForm,
        len: u64,
    },
    File(FileHeader),
    Chunk(Vec<u8>),
    EndOfPush,
    Want(Want),
    EndOfWants,
    EndOfData,
    Committed(Commit),
    Restored(RestoreReport),
    Error(String),
    Bye,
    /// Ends a file: its size and blake3 once rebuilt (of the bytes the sender read).
    FileEnd {
        size: u64,
        hash: Hash,
    },
}

impl Msg {
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello(_) => "Hello",
            Msg::Welcome(_) => "Welcome",
            Msg::Manifest { .. } => "Manifest",
            Msg::File(_) => "File",
            Msg::Chunk(_) => "Chunk",
            Msg::EndOfPush => "EndOfPush",
            Msg::Want(_) => "Want",
            Msg::EndOfWants => "EndOfWants",
            Msg::EndOfData => "EndOfData",
            Msg::Committed(_) => "Committed",
            Msg::Restored(_) => "Restored",
            Msg::Error(_) => "Error",
            Msg::Bye => "Bye",
            Msg::FileEnd { .. } => "FileEnd",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("message serializes to memory")
    }

    /// Decodes one frame's body: every field checked (paths validated by `RelPath`).
    pub fn decode(body: &[u8]) -> Result<Msg, WireError> {
        let (msg, rest): (Msg, &[u8]) = postcard::take_from_bytes(body)
            .map_err(|e| WireError::Malformed(crate::bounded::explain(e)))?;
        if !rest.is_empty() {
            return Err(WireError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        match &msg {
            Msg::Hello(h) => check_greeting(h.magic, h.version, &h.node)?,
            Msg::Welcome(w) => check_greeting(w.magic, w.version, &w.node)?,
            Msg::Error(s) if s.len() > MAX_TEXT => {
                return Err(WireError::TooLarge {
                    what: "error text",
                    len: s.len() as u64,
                    limit: MAX_TEXT as u64,
                })
            }
            Msg::FileEnd { size, .. } if *size > MAX_FILE_SIZE => {
                return Err(WireError::TooLarge {
                    what: "file",
                    len: *size,
                    limit: MAX_FILE_SIZE,
                })
            }
            Msg::Manifest { len, .. } if *len > MAX_MANIFEST => {
                return Err(WireError::TooLarge {
                    what: "manifest",
                    len: *len,
                    limit: MAX_MANIFEST,
                })
            }
            _ => {}
        }
        Ok(msg)
    }
}

fn check_greeting(magic: [u8; 4], version: u32, node: &str) -> Result<(), WireError> {
    if magic != MAGIC {
        return Err(WireError::BadMagic);
    }
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    if node.len() > MAX_TEXT {
        return Err(WireError::TooLarge {
            what: "node name",
            len: node.len() as u64,
            limit: MAX_TEXT as u64,
        });
    }
    Ok(())
}

/// Byte counters of a connection, both ways.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    pub sent: u64,
    pub received: u64,
    /// Times this side flushed and then waited for the peer: round trips, seen from here.
    pub round_trips: u64,
}

/// A framed connection over any `Read + Write`, buffered both ways.
pub struct Conn<S: Read + Write> {
    stream: S,
    out: Vec<u8>,
    pub traffic: Traffic,
    flushed_since_read: bool,
    /// Past it, every read and write fails with `Deadline` (with the session's length).
    deadline: Option<(Instant, Duration)>,
    /// Most bytes this side takes from the peer.
    receive_limit: Option<u64>,
}

impl<S: Read + Write> Conn<S> {
    pub fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            out: Vec::with_capacity(64 << 10),
            traffic: Traffic::default(),
            flushed_since_read: false,
            deadline: None,
            receive_limit: None,
        }
    }

    /// Ends the conversation with `WireError::Deadline` once `within` has passed from now.
    /// Checked before every read and write of the stream: a peer that trickles bytes is
    /// caught within one read. A read that blocks forever is only caught when the stream
    /// has a read timeout (sockets: `set_read_timeout`), or by whoever owns the transport.
    pub fn set_deadline(&mut self, within: Duration) {
        self.deadline = Some((Instant::now() + within, within));
    }

    /// Ends the conversation with `WireError::Budget` once the peer sent more than `bytes`.
    pub fn set_receive_limit(&mut self, bytes: u64) {
        self.receive_limit = Some(bytes);
    }

    fn check_deadline(&self) -> Result<(), WireError> {
        match self.deadline {
            Some((at, within)) if Instant::now() >= at => Err(WireError::Deadline(within)),
            _ => Ok(()),
        }
    }

    /// Whether an error of a stream read or write means "nothing yet, check the deadline".
    fn is_wait(&self, e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::Interrupted
            || (self.deadline.is_some()
                && matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ))
    }

    /// Reads exactly `buf`, checking the deadline before each read of the stream.
    fn fill(&mut self, buf: &mut [u8], when: &'static str) -> Result<(), WireError> {
        let mut got = 0;
        while got < buf.len() {
            self.check_deadline()?;
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => return Err(WireError::Closed(when)),
                Ok(n) => got += n,
                Err(e) if self.is_wait(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Queues a message; written when the buffer grows or at `flush`.
    pub fn send(&mut self, msg: &Msg) -> Result<(), WireError> {
        let body = msg.encode();
        if body.len() > MAX_FRAME {
            return Err(WireError::FrameTooLarge(body.len() as u64));
        }
        self.out
            .extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.out.extend_from_slice(&body);
        if self.out.len() >= 256 << 10 {
            self.write_out()?;
        }
        Ok(())
    }

    /// Sends a payload as `Chunk` frames.
    pub fn send_chunks(&mut self, payload: &[u8]) -> Result<(), WireError> {
        for c in payload.chunks(CHUNK) {
            self.send_chunk(c)?;
        }
        Ok(())
    }

    /// One `Chunk` frame, encoded in place: the bytes are copied once, into the output
    /// buffer (file data is most of what a full sync moves).
    pub fn send_chunk(&mut self, data: &[u8]) -> Result<(), WireError> {
        let mut head = [0u8; 11];
        head[0] = CHUNK_TAG;
        let n = 1 + varint(data.len() as u64, &mut head[1..]);
        let body = n + data.len();
        if body > MAX_FRAME {
            return Err(WireError::FrameTooLarge(body as u64));
        }
        self.out.extend_from_slice(&(body as u32).to_le_bytes());
        self.out.extend_from_slice(&head[..n]);
        self.out.extend_from_slice(data);
        if self.out.len() >= 256 << 10 {
            self.write_out()?;
        }
        Ok(())
    }

    /// A whole in-memory file: header, chunks, end.
    pub fn send_file(
        &mut self,
        header: FileHeader,
        payload: &[u8],
        size: u64,
        hash: Hash,
    ) -> Result<(), WireError> {
        self.send(&Msg::File(header))?;
        self.send_chunks(payload)?;
        self.send(&Msg::FileEnd { size, hash })
    }

    fn write_out(&mut self) -> Result<(), WireError> {
        let mut done = 0;
        while done < self.out.len() {
            self.check_deadline()?;
            match self.stream.write(&self.out[done..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => done += n,
                Err(e) if self.is_wait(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.traffic.sent += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Ends this side's turn: everything queued goes out.
    pub fn flush(&mut self) -> Result<(), WireError> {
        self.write_out()?;
        self.stream.flush()?;
        self.flushed_since_read = true;
        Ok(())
    }

    pub fn recv(&mut self) -> Result<Msg, WireError> {
        if self.flushed_since_read {
            self.traffic.round_trips += 1;
            self.flushed_since_read = false;
        }
        let mut len = [0u8; 4];
        self.fill(&mut len, " before a frame")?;
        let len = u32::from_le_bytes(len) as u64;
        if len as usize > MAX_FRAME {
            return Err(WireError::FrameTooLarge(len));
        }
        if let Some(limit) = self.receive_limit {
            if self.traffic.received + 4 + len > limit {
                return Err(WireError::Budget(limit));
            }
        }
        let mut body = vec![0u8; len as usize];
        self.fill(&mut body, " in the middle of a frame")?;
        self.traffic.received += 4 + len;
        let msg = Msg::decode(&body)?;
        if let Msg::Error(e) = msg {
            return Err(WireError::Remote(e));
        }
        Ok(msg)
    }

    /// Reads a file's payload after its `File` header: chunks up to `limit` bytes, then
    /// `FileEnd`. Returns payload, size and hash.
    pub fn recv_file_payload(&mut self, limit: u64) -> Result<(Vec<u8>, u64, Hash), WireError> {
        let mut buf = Vec::new();
        loop {
            match self.recv()? {
                Msg::Chunk(c) => {
                    if buf.len() as u64 + c.len() as u64 > limit {
                        return Err(WireError::TooLarge {
                            what: "file payload",
                            len: buf.len() as u64 + c.len() as u64,
                            limit,
                        });
                    }
                    buf.extend_from_slice(&c);
                }
                Msg::FileEnd { size, hash } => return Ok((buf, size, hash)),
                other => return Err(unexpected("Chunk or FileEnd", &other)),
            }
        }
    }

    /// Reads `len` bytes of `Chunk` frames into one buffer.
    pub fn recv_chunks(
        &mut self,
        len: u64,
        limit: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, WireError> {
        if len > limit {
            return Err(WireError::TooLarge { what, len, limit });
        }
        let mut buf = Vec::with_capacity(len.min(CHUNK as u64 * 4) as usize);
        while (buf.len() as u64) < len {
            match self.recv()? {
                Msg::Chunk(c) => {
                    if buf.len() as u64 + c.len() as u64 > len {
                        return Err(WireError::Malformed(format!(
                            "{what}: chunks longer than announced {len} bytes"
                        )));
                    }
                    buf.extend_from_slice(&c);
                }
                other => return Err(unexpected("Chunk", &other)),
            }
        }
        Ok(buf)
    }
}

/// postcard's variant index of `Msg::Chunk` (checked by a test).
const CHUNK_TAG: u8 = 4;

/// postcard's unsigned varint (LEB128); returns the bytes used.
fn varint(mut v: u64, out: &mut [u8]) -> usize {
    let mut i = 0;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out[i] = b;
            return i + 1;
        }
        out[i] = b | 0x80;
        i += 1;
    }
}

pub fn unexpected(expected: &'static str, got: &Msg) -> WireError {
    WireError::Unexpected {
        expected,
        got: got.name().to_string(),
    }
}

/// Fuzz entry: decoding any frame stream never panics and never allocates past the limits.
pub fn fuzz_frames(data: &[u8]) {
    struct R<'a>(&'a [u8]);
    impl Read for R<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl Write for R<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut c = Conn::new(R(data));
    for _ in 0..64 {
        if c.recv().is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    struct Pipe(Cursor<Vec<u8>>);
    impl Read for Pipe {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Pipe {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.get_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn hello() -> Msg {
        Msg::Hello(Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            root: Hash::of(b"x"),
            acked: None,
            node: "fw1".into(),
        })
    }

    fn conn_with(bytes: Vec<u8>) -> Conn<Pipe> {
        Conn::new(Pipe(Cursor::new(bytes)))
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let mut c = conn_with(Vec::new());
        let msgs = vec![
            hello(),
            Msg::EndOfPush,
            Msg::Want(Want {
                path: RelPath::new("etc/x").unwrap(),
                kind: WantKind::Whole,
            }),
            Msg::Bye,
        ];
        for m in &msgs {
            c.send(m).unwrap();
        }
        c.send_chunks(&vec![1u8; CHUNK + 10]).unwrap();
        c.flush().unwrap();
        let bytes = c.into_inner().0.into_inner();
        let mut r = conn_with(bytes);
        for m in &msgs {
            assert_eq!(&r.recv().unwrap(), m);
        }
        assert_eq!(
            r.recv_chunks(CHUNK as u64 + 10, u64::MAX, "test")
                .unwrap()
                .len(),
            CHUNK + 10
        );
        assert!(matches!(r.recv(), Err(WireError::Closed(_))));
    }

    #[test]
    fn oversized_truncated_and_garbage_frames_are_clean_errors() {
        let mut big = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        big.extend_from_slice(&[0; 16]);
        assert!(matches!(
            conn_with(big).recv(),
            Err(WireError::FrameTooLarge(_))
        ));

        let body = hello().encode();
        let mut trunc = (body.len() as u32).to_le_bytes().to_vec();
        trunc.extend_from_slice(&body[..body.len() - 3]);
        assert!(matches!(
            conn_with(trunc).recv(),
            Err(WireError::Closed(" in the middle of a frame"))
        ));

        let mut garbage = 5u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(&[0xff; 5]);
        assert!(matches!(
            conn_with(garbage).recv(),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_version_and_bad_magic_are_refused() {
        let mut h = Hello {
            magic: MAGIC,
            version: 99,
            root: Hash::default(),
            acked: None,
            node: String::new(),
        };
        let frame = |m: &Msg| {
            let b = m.encode();
            let mut v = (b.len() as u32).to_le_bytes().to_vec();
            v.extend_from_slice(&b);
            v
        };
        let err = conn_with(frame(&Msg::Hello(h.clone()))).recv().unwrap_err();
        assert!(matches!(
            err,
            WireError::Version {
                ours: PROTOCOL_VERSION,
                theirs: 99
            }
        ));
        assert!(err.to_string().contains("upgrade both nodes"));
        h.version = PROTOCOL_VERSION;
        h.magic = *b"SSH-";
        assert!(matches!(
            conn_with(frame(&Msg::Hello(h))).recv(),
            Err(WireError::BadMagic)
        ));
    }

    #[test]
    fn hostile_paths_never_decode() {
        for bad in ["../x", "/etc/x", "a/../../b", "a\0b"] {
            // Build the frame by hand: a Want whose path is a plain string on the wire.
            #[derive(Serialize)]
            enum FakeMsg {
                _H,
                _W,
                _M,
                _F,
                _C,
                _E,
                Want(String, u8),
            }
            let body = postcard::to_allocvec(&FakeMsg::Want(bad.into(), 0)).unwrap();
            let mut v = (body.len() as u32).to_le_bytes().to_vec();
            v.extend_from_slice(&body);
            assert!(
                matches!(conn_with(v).recv(), Err(WireError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn hand_encoded_chunks_decode_as_postcard_chunks() {
        for len in [0usize, 1, 127, 128, 300, CHUNK] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut c = conn_with(Vec::new());
            c.send_chunk(&data).unwrap();
            c.flush().unwrap();
            let bytes = c.into_inner().0.into_inner();
            assert_eq!(
                &bytes[4..],
                Msg::Chunk(data.clone()).encode().as_slice(),
                "len {len}"
            );
        }
    }

    #[test]
    fn the_receive_limit_and_the_deadline_end_a_conversation() {
        let mut c = conn_with(Vec::new());
        for _ in 0..10 {
            c.send(&hello()).unwrap();
        }
        c.flush().unwrap();
        let bytes = c.into_inner().0.into_inner();
        let frame = bytes.len() as u64 / 10;
        let mut r = conn_with(bytes.clone());
        r.set_receive_limit(3 * frame);
        for _ in 0..3 {
            r.recv().unwrap();
        }
        assert!(matches!(r.recv(), Err(WireError::Budget(_))));
        let mut r = conn_with(bytes);
        r.set_deadline(std::time::Duration::ZERO);
        assert!(matches!(r.recv(), Err(WireError::Deadline(_))));
    }

    #[test]
    fn chunks_longer_than_announced_are_refused() {
        let mut c = conn_with(Vec::new());
        c.send_chunks(&[1u8; 100]).unwrap();
        c.flush().unwrap();
        let mut r = conn_with(c.into_inner().0.into_inner());
        assert!(matches!(
            r.recv_chunks(50, 1000, "file"),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            conn_with(vec![]).recv_chunks(5000, 1000, "file"),
            Err(WireError::TooLarge { .. })
        ));
    }
}
