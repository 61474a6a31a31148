//! Turns a russh channel into a blocking, buffered byte stream for code running on a
//! blocking thread.
//!
//! A pump task owns the channel's read half: it forwards data to the blocking reader through
//! a small bounded queue (backpressure reaches the peer through russh's channel buffer and
//! the TCP socket), keeps stderr text and the exit status, and cancels the writer when the
//! channel closes so a write can never wait forever for window space from a peer that left.
//! Writes go straight to the channel's write half through `Handle::block_on`.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{MAX_STDERR, STREAM_BUFFER};

/// Messages queued between the pump and the blocking reader.
const QUEUE: usize = 16;

/// What the remote side reported on a channel besides data.
#[derive(Debug, Default, Clone)]
pub(crate) struct RemoteReport {
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    pub stderr: Vec<u8>,
    pub eof: bool,
    pub closed: bool,
}

impl RemoteReport {
    pub(super) fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }
}

/// State shared by the pump, the reader and the writer of one channel.
#[derive(Clone)]
pub(crate) struct Shared {
    /// Cancelled when the channel or the connection is gone.
    pub closed: CancellationToken,
    eof: Arc<AtomicBool>,
    pub report: Arc<Mutex<RemoteReport>>,
    /// When the reader began waiting for the peer (ms on [`clock`]), 0 when it is not.
    waiting_since: Arc<AtomicU64>,
    /// The peer kept the reader waiting too long: the pump was stopped.
    stalled: Arc<AtomicBool>,
}

/// Milliseconds since the first call, never 0 (0 means "not waiting").
fn clock() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

impl Shared {
    pub(super) fn new(closed: CancellationToken) -> Self {
        Shared {
            closed,
            eof: Arc::new(AtomicBool::new(false)),
            report: Arc::new(Mutex::new(RemoteReport::default())),
            waiting_since: Arc::new(AtomicU64::new(0)),
            stalled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// How long the reader has been waiting for the peer's next bytes, if it is.
    pub(super) fn waiting_for(&self) -> Option<std::time::Duration> {
        match self.waiting_since.load(Ordering::SeqCst) {
            0 => None,
            t => Some(std::time::Duration::from_millis(clock().saturating_sub(t))),
        }
    }

    /// Marks the stream stalled; the caller stops the pump, and the reader reports it.
    pub(super) fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub(super) fn report(&self) -> RemoteReport {
        match self.report.lock() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut RemoteReport)) {
        match self.report.lock() {
            Ok(mut r) => f(&mut r),
            Err(p) => f(&mut p.into_inner()),
        }
    }
}

/// Reads the channel until it closes. `early` are messages already taken off the channel
/// (e.g. while waiting for the reply to a subsystem request).
pub(crate) async fn pump(
    mut read: ChannelReadHalf,
    early: Vec<ChannelMsg>,
    data_tx: mpsc::Sender<Bytes>,
    shared: Shared,
) {
    let mut data_tx = Some(data_tx);
    let mut early = early.into_iter();
    loop {
        let msg = match early.next() {
            Some(m) => Some(m),
            // Not raced against `closed`: Close (or None when the connection is gone) always
            // arrives here, after the exit status and stderr that preceded it.
            None => read.wait().await,
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                // Not raced against `closed` either: data that arrived before a close is
                // still delivered. Only a reader that is gone stops the forwarding.
                if let Some(tx) = &data_tx {
                    if tx.send(data).await.is_err() {
                        data_tx = None;
                    }
                }
            }
            Some(ChannelMsg::ExtendedData { data, ext: 1 }) => shared.update(|r| {
                let room = MAX_STDERR.saturating_sub(r.stderr.len());
                r.stderr.extend_from_slice(&data[..data.len().min(room)]);
            }),
            Some(ChannelMsg::Eof) => {
                shared.eof.store(true, Ordering::SeqCst);
                shared.update(|r| r.eof = true);
                data_tx = None;
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                shared.update(|r| r.exit_status = Some(exit_status))
            }
            Some(ChannelMsg::ExitSignal {
                signal_name,
                error_message,
                ..
            }) => shared.update(|r| {
                r.exit_signal = Some(
                    format!("{signal_name:?} {error_message}")
                        .trim()
                        .to_string(),
                )
            }),
            Some(ChannelMsg::Close) | None => {
                shared.update(|r| r.closed = true);
                break;
            }
            Some(_) => {}
        }
    }
    drop(data_tx);
    shared.closed.cancel();
}

/// Blocking reader fed by the pump.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
    shared: Shared,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.cur.is_empty() {
            self.shared.waiting_since.store(clock(), Ordering::SeqCst);
            let got = self.rx.blocking_recv();
            self.shared.waiting_since.store(0, Ordering::SeqCst);
            match got {
                Some(b) => self.cur = b,
                None if self.shared.stalled.load(Ordering::SeqCst) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer sent nothing for too long: session ended",
                    ))
                }
                None if self.shared.eof.load(Ordering::SeqCst) => return Ok(0),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "ssh channel closed by the peer before end of stream",
                    ))
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// Blocking writer: each write becomes channel data (split into packets by russh).
pub(crate) struct ChannelWriter<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> {
    write: Arc<ChannelWriteHalf<S>>,
    rt: Handle,
    closed: CancellationToken,
}

fn broken_pipe() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "ssh channel closed by the peer")
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> Write for ChannelWriter<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.closed.is_cancelled() {
            return Err(broken_pipe());
        }
        let data = Bytes::copy_from_slice(buf);
        let write = &self.write;
        let closed = &self.closed;
        self.rt.block_on(async {
            tokio::select! {
                r = write.data_bytes(data) => r.map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string())),
                () = closed.cancelled() => Err(broken_pipe()),
            }
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The stream handed to protocol code: buffered both ways; a read that must wait for the
/// peer first flushes what was written.
pub(crate) struct BlockingStream<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> {
    reader: BufReader<ChannelReader>,
    writer: BufWriter<ChannelWriter<S>>,
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> BlockingStream<S> {
    /// Must be called inside the tokio runtime (it keeps its handle).
    pub(super) fn new(
        rx: mpsc::Receiver<Bytes>,
        write: Arc<ChannelWriteHalf<S>>,
        shared: Shared,
    ) -> Self {
        let closed = shared.closed.clone();
        BlockingStream {
            reader: BufReader::with_capacity(
                STREAM_BUFFER,
                ChannelReader {
                    rx,
                    cur: Bytes::new(),
                    shared,
                },
            ),
            writer: BufWriter::with_capacity(
                STREAM_BUFFER,
                ChannelWriter {
                    write,
                    rt: Handle::current(),
                    closed,
                },
            ),
        }
    }

    fn flush_before_wait(&mut self) -> io::Result<()> {
        if self.reader.buffer().is_empty() && !self.writer.buffer().is_empty() {
            self.writer.flush()?;
        }
        Ok(())
    }
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> Read for BlockingStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.flush_before_wait()?;
        self.reader.read(buf)
    }
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> BufRead for BlockingStream<S> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.flush_before_wait()?;
        self.reader.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.reader.consume(amt)
    }
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> Write for BlockingStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.writer.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// Splits `channel`, starts its pump and returns the blocking stream plus the write half
/// (for EOF / exit status / close) and the shared state.
pub(crate) fn start<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static>(
    channel: russh::Channel<S>,
    early: Vec<ChannelMsg>,
    closed: CancellationToken,
) -> (
    BlockingStream<S>,
    Arc<ChannelWriteHalf<S>>,
    Shared,
    tokio::task::JoinHandle<()>,
) {
    let (read, write) = channel.split();
    let write = Arc::new(write);
    let shared = Shared::new(closed);
    let (tx, rx) = mpsc::channel(QUEUE);
    let pump = tokio::spawn(pump(read, early, tx, shared.clone()));
    let stream = BlockingStream::new(rx, write.clone(), shared.clone());
    (stream, write, shared, pump)
}

/// Sends `msg` on the channel unless it closed meanwhile.
pub(crate) async fn send_or_closed<F>(closed: &CancellationToken, fut: F) -> bool
where
    F: std::future::Future<Output = Result<(), russh::Error>>,
{
    tokio::select! {
        r = fut => r.is_ok(),
        () = closed.cancelled() => false,
    }
}
