//! Interactive shell sessions on the agent (`ns-ha-config ssh-remote`): a login shell on a
//! pseudo-terminal (or on pipes when the client asked for no terminal), for the keys a
//! [`ShellPolicy`] allows. Without a policy the server refuses every shell request.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::bridge;
use super::{PeerInfo, EXIT_ERROR};

/// What a shell session runs.
#[derive(Debug, Clone)]
pub struct ShellCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment (nothing is inherited from the agent); `TERM` is added from the
    /// client's terminal request.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
}

/// Decides whether `peer` may have a shell, and which.
pub trait ShellPolicy: Send + Sync + 'static {
    fn shell(&self, peer: &PeerInfo) -> Result<ShellCommand, String>;
}

impl<F> ShellPolicy for F
where
    F: Fn(&PeerInfo) -> Result<ShellCommand, String> + Send + Sync + 'static,
{
    fn shell(&self, peer: &PeerInfo) -> Result<ShellCommand, String> {
        self(peer)
    }
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtySize {
    pub cols: u16,
    pub rows: u16,
}

impl PtySize {
    /// From the SSH request's u32 fields; 0 (unknown) becomes the classic 80x24.
    pub fn from_request(cols: u32, rows: u32) -> PtySize {
        let clamp = |v: u32, default: u16| {
            if v == 0 {
                default
            } else {
                v.min(u32::from(u16::MAX)) as u16
            }
        };
        PtySize {
            cols: clamp(cols, 80),
            rows: clamp(rows, 24),
        }
    }

    fn winsize(self) -> libc::winsize {
        libc::winsize {
            ws_row: self.rows,
            ws_col: self.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }
}

/// A client's `pty-req`, kept until its shell request.
#[derive(Debug, Clone)]
pub(crate) struct PtyRequest {
    pub term: String,
    pub size: PtySize,
}

/// How long output is still forwarded after the shell exited (a background job may keep the
/// terminal open forever; its later output is dropped with the session).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(300);

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a pseudo-terminal pair of `size`: (master, slave), both close-on-exec.
fn open_pty(size: PtySize) -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    let ws = size.winsize();
    // SAFETY: openpty writes two descriptors into the out-pointers; the name buffer is null
    // (not wanted) and the termios pointer null (defaults).
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded: both descriptors are open and now owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    set_cloexec(master.as_raw_fd())?;
    set_cloexec(slave.as_raw_fd())?;
    Ok((master, slave))
}

fn resize(master: RawFd, size: PtySize) {
    let ws = size.winsize();
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    if unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) } < 0 {
        tracing::debug!("resizing the terminal: {}", io::Error::last_os_error());
    }
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// The running shell and its ends.
struct Spawned {
    child: tokio::process::Child,
    input: Option<Writer>,
    output: Reader,
    errors: Option<Reader>,
    /// The terminal's master side, for resizes (pty sessions only).
    master: Option<RawFd>,
    /// Keeps the master open as long as the session (the reader and writer are clones).
    _master: Option<OwnedFd>,
}

fn spawn(cmd: &ShellCommand, pty: Option<&PtyRequest>) -> io::Result<Spawned> {
    let mut c = tokio::process::Command::new(&cmd.program);
    c.args(&cmd.args)
        .env_clear()
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&cmd.cwd)
        .kill_on_drop(true);
    match pty {
        Some(req) => {
            let (master, slave) = open_pty(req.size)?;
            c.env("TERM", &req.term)
                .stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                c.pre_exec(|| {
                    // A session of its own with the terminal as controlling tty, so ^C
                    // and job control reach the shell's foreground job.
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = c.spawn()?;
            let raw = master.as_raw_fd();
            let output = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
            let input = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
            Ok(Spawned {
                child,
                input: Some(Box::new(input)),
                output: Box::new(output),
                errors: None,
                master: Some(raw),
                _master: Some(master),
            })
        }
        None => {
            c.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = c.spawn()?;
            let input = child.stdin.take().map(|w| Box::new(w) as Writer);
            let output = child.stdout.take().map(|r| Box::new(r) as Reader);
            let errors = child.stderr.take().map(|r| Box::new(r) as Reader);
            let output = output.ok_or_else(|| io::Error::other("no stdout pipe"))?;
            Ok(Spawned {
                child,
                input,
                output,
                errors,
                master: None,
                _master: None,
            })
        }
    }
}

/// The status reported to the client: the exit code, or 128 + signal as shells do.
fn exit_code(status: ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u32,
        (None, Some(s)) => 128 + s as u32,
        _ => EXIT_ERROR,
    }
}

/// Runs `cmd` for the client on `channel` until the shell exits or the client goes.
pub(crate) async fn serve(
    channel: Channel<Msg>,
    cmd: ShellCommand,
    pty: Option<PtyRequest>,
    peer: PeerInfo,
    closed: CancellationToken,
) {
    let (mut read, write) = channel.split();
    let mut shell = match spawn(&cmd, pty.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            let text = format!("cannot start {}: {e}\n", cmd.program.display());
            tracing::warn!("shell for {}: {}", peer.addr, text.trim_end());
            bridge::send_or_closed(&closed, write.extended_data_bytes(1, text.into_bytes())).await;
            bridge::send_or_closed(&closed, write.exit_status(EXIT_ERROR)).await;
            bridge::send_or_closed(&closed, write.close()).await;
            closed.cancel();
            return;
        }
    };
    tracing::info!(
        "shell {} for {} ({}){}",
        cmd.program.display(),
        peer.addr,
        peer.key_fingerprint,
        if pty.is_some() { " on a terminal" } else { "" }
    );
    let mut out_buf = vec![0u8; 32 * 1024];
    let mut err_buf = vec![0u8; 8 * 1024];
    let mut out_done = false;
    let mut err_done = shell.errors.is_none();
    let mut status: Option<u32> = None;
    let drain = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(drain);
    loop {
        if out_done && err_done && status.is_some() {
            break;
        }
        tokio::select! {
            msg = read.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(w) = shell.input.as_mut() {
                        if w.write_all(&data).await.is_err() || w.flush().await.is_err() {
                            shell.input = None;
                        }
                    }
                }
                // On pipes EOF closes the shell's stdin; on a terminal the client's ^D is
                // data and its EOF changes nothing (as OpenSSH's sshd).
                Some(ChannelMsg::Eof) if shell.master.is_none() => shell.input = None,
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    if let Some(m) = shell.master {
                        resize(m, PtySize::from_request(col_width, row_height));
                    }
                }
                Some(ChannelMsg::Close) | None => {
                    tracing::info!("shell for {}: client left, hanging up", peer.addr);
                    let _ = shell.child.start_kill();
                    let _ = shell.child.wait().await;
                    closed.cancel();
                    return;
                }
                Some(_) => {}
            },
            n = shell.output.read(&mut out_buf), if !out_done => match n {
                // EIO: the terminal's last slave descriptor closed.
                Ok(0) | Err(_) => out_done = true,
                Ok(n) => {
                    let data = bytes::Bytes::copy_from_slice(&out_buf[..n]);
                    if !bridge::send_or_closed(&closed, write.data_bytes(data)).await {
                        break;
                    }
                }
            },
            n = async {
                match shell.errors.as_mut() {
                    Some(r) => r.read(&mut err_buf).await,
                    None => std::future::pending().await,
                }
            }, if !err_done => match n {
                Ok(0) | Err(_) => err_done = true,
                Ok(n) => {
                    let data = bytes::Bytes::copy_from_slice(&err_buf[..n]);
                    if !bridge::send_or_closed(&closed, write.extended_data_bytes(1, data)).await {
                        break;
                    }
                }
            },
            st = shell.child.wait(), if status.is_none() => {
                status = Some(st.map(exit_code).unwrap_or(EXIT_ERROR));
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            },
            () = &mut drain, if status.is_some() => break,
        }
    }
    let code = match status {
        Some(c) => c,
        None => {
            let _ = shell.child.start_kill();
            shell
                .child
                .wait()
                .await
                .map(exit_code)
                .unwrap_or(EXIT_ERROR)
        }
    };
    tracing::info!("shell for {} ended with status {code}", peer.addr);
    bridge::send_or_closed(&closed, write.eof()).await;
    bridge::send_or_closed(&closed, write.exit_status(code)).await;
    bridge::send_or_closed(&closed, write.close()).await;
    closed.cancel();
}
