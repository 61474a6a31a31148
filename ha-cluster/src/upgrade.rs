//! `upgrade-remote`: the primary sends a firmware image to the backup's agent, which checks
//! it (size, blake3, free space, `sysupgrade -T`) and installs it with `sysupgrade` (settings
//! kept: the backup must come back as the same cluster node).
//!
//! On the wire (exec `ha-sync-cluster upgrade`, cluster key only):
//! one JSON line, the [`ImageHeader`] `{"name", "size", "blake3"}`, then exactly `size` bytes
//! of image; the answer is one JSON document, an [`UploadAnswer`]. The backup answers before
//! it installs: sysupgrade ends every process, the agent and its connection included.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sync_agent::transport::ReadWrite;
use sync_core::runner::{Cmd, Runner};

use crate::request::{ImageHeader, Peer, UploadAnswer, MAX_IMAGE};
use crate::services::run_checked;
use crate::{keepalived, load_uci, ClusterError, Ctx, Role};
/// Longest header line.
const MAX_HEADER: u64 = 4096;
/// Where the backup keeps the image it received, relative to the root (RAM on OpenWrt, as
/// sysupgrade wants).
pub const IMAGE_PATH: &str = "tmp/ha-sync-upgrade.img";
const PART_PATH: &str = "tmp/.ha-sync-upgrade.img.part";
pub const SYSUPGRADE: &str = "/sbin/sysupgrade";
/// NethSecurity's downloader: `ns-download -f -l` fetches the latest image, prints its path.
pub const DOWNLOADER: &str = "ns-download";
/// Time given to the answer to reach the primary before sysupgrade stops everything.
const INSTALL_DELAY: Duration = Duration::from_secs(1);

/// What the primary learns.
#[derive(Debug, Clone)]
pub struct UpgradeReport {
    /// The image sent (downloaded first when none was given).
    pub image: PathBuf,
    pub downloaded: bool,
    pub header: ImageHeader,
    /// The backup's answer.
    pub answer: UploadAnswer,
}

/// The primary's side: finds the image (or downloads the latest with `ns-download`), then
/// has `peer` check and install it.
pub fn upgrade_remote(
    ctx: &Ctx,
    peer: &dyn Peer,
    image: Option<&Path>,
) -> Result<UpgradeReport, ClusterError> {
    let (image, downloaded) = match image {
        Some(p) => (p.to_path_buf(), false),
        None => (download_latest(ctx)?, true),
    };
    let header = ImageHeader::of(&image)?;
    let answer = peer.send_image(&header, &image)?;
    Ok(UpgradeReport {
        image,
        downloaded,
        header,
        answer,
    })
}

fn download_latest(ctx: &Ctx) -> Result<PathBuf, ClusterError> {
    if !ctx.runner.exists(DOWNLOADER) {
        return Err(ClusterError::Invalid(format!(
            "no image given and {DOWNLOADER} (NethSecurity's image downloader) is not \
             available here: give the image file, `ns-ha-config upgrade-remote <image>`"
        )));
    }
    let cmd = Cmd::new(DOWNLOADER).args(["-f", "-l"]);
    let out = run_checked(ctx, "downloading the latest image", &cmd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text.lines().rev().map(str::trim).find(|l| !l.is_empty());
    match path {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        _ => Err(ClusterError::Command {
            action: "downloading the latest image",
            cmd: cmd.line(),
            detail: format!("printed no image path (output: {:?})", text.trim()),
        }),
    }
}

fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct from a NUL-terminated path that outlives it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The backup's side, step 1: reads the header and the image from `input` into
/// [`IMAGE_PATH`] (through a partial file: a cut upload leaves no image), checks size, hash
/// and free space, and has `sysupgrade -T` test it. Returns the image's path.
pub fn receive_image(ctx: &Ctx, input: &mut dyn Read) -> Result<PathBuf, ClusterError> {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    (&mut input)
        .take(MAX_HEADER)
        .read_until(b'\n', &mut line)
        .map_err(ClusterError::io("upload header"))?;
    if line.last() != Some(&b'\n') {
        return Err(ClusterError::Invalid(
            "upload without a header line (or one over 4 KiB)".into(),
        ));
    }
    let header: ImageHeader = serde_json::from_slice(&line)
        .map_err(|e| ClusterError::Invalid(format!("bad upload header: {e}")))?;
    if header.size > MAX_IMAGE {
        return Err(ClusterError::Invalid(format!(
            "image of {} bytes refused: {MAX_IMAGE} bytes at most",
            header.size
        )));
    }
    let tmp = ctx.path("tmp");
    fs::create_dir_all(&tmp).map_err(ClusterError::io(&tmp))?;
    if let Some(free) = free_space(&tmp) {
        if free < header.size {
            return Err(ClusterError::Invalid(format!(
                "not enough space in {} for the image: {} bytes needed, {free} free",
                tmp.display(),
                header.size
            )));
        }
    }
    let part = ctx.path(PART_PATH);
    let image = ctx.path(IMAGE_PATH);
    let result = (|| {
        let mut f = File::create(&part).map_err(ClusterError::io(&part))?;
        let mut hasher = blake3::Hasher::new();
        let mut tee = Tee(&mut f, &mut hasher);
        let n = std::io::copy(&mut (&mut input).take(header.size), &mut tee)
            .map_err(ClusterError::io(&part))?;
        if n != header.size {
            return Err(ClusterError::Invalid(format!(
                "upload cut short: {n} of {} bytes of {} arrived",
                header.size, header.name
            )));
        }
        let got = hasher.finalize().to_hex().to_string();
        if got != header.blake3 {
            return Err(ClusterError::Invalid(format!(
                "image {} damaged in transit: blake3 {got}, the primary sent {}",
                header.name, header.blake3
            )));
        }
        f.sync_all().map_err(ClusterError::io(&part))?;
        fs::rename(&part, &image).map_err(ClusterError::io(&image))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    tracing::info!(
        "received image {} ({} bytes, blake3 {})",
        header.name,
        header.size,
        header.blake3
    );
    if !ctx.runner.exists(SYSUPGRADE) {
        let _ = fs::remove_file(&image);
        return Err(ClusterError::Invalid(format!(
            "{SYSUPGRADE} not found on the backup: only an OpenWrt node can be upgraded this way"
        )));
    }
    let test = Cmd::new(SYSUPGRADE).arg("-T").arg(path_arg(ctx, &image));
    if let Err(e) = run_checked(ctx, "testing the image", &test) {
        let _ = fs::remove_file(&image);
        return Err(e);
    }
    Ok(image)
}

/// The image as the router sees it (the root stripped: commands run on the real system).
fn path_arg(ctx: &Ctx, path: &Path) -> String {
    match path.strip_prefix(ctx.root) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => path.display().to_string(),
    }
}

/// The backup's side, step 2: `sysupgrade <image>` after [`INSTALL_DELAY`], on a thread of
/// its own so the answer leaves first. Settings are kept (no `-n`).
pub(crate) fn install_later(root: PathBuf, runner: std::sync::Arc<dyn Runner>, image: PathBuf) {
    std::thread::spawn(move || {
        std::thread::sleep(INSTALL_DELAY);
        let ctx = Ctx {
            root: &root,
            runner: runner.as_ref(),
        };
        let cmd = Cmd::new(SYSUPGRADE).arg(path_arg(&ctx, &image));
        tracing::warn!("installing {}: {}", image.display(), cmd.line());
        if let Err(e) = run_checked(&ctx, "installing the image", &cmd) {
            tracing::error!("{e}");
        }
    });
}

/// Serves one upload for the agent: receive, check, answer, then install.
pub(crate) fn serve_upload(
    root: &Path,
    runner: std::sync::Arc<dyn Runner>,
    stream: &mut dyn ReadWrite,
) -> Result<(), String> {
    let ctx = Ctx {
        root,
        runner: runner.as_ref(),
    };
    let pkg = load_uci(&ctx).map_err(|e| e.to_string())?;
    if keepalived::role_of(&pkg) == Some(Role::Primary) {
        return Err(
            "this node is configured as the primary; upgrade it with sysupgrade, \
                    upgrade-remote is for the backup"
                .into(),
        );
    }
    let image = receive_image(&ctx, stream).map_err(|e| e.to_string())?;
    let answer = UploadAnswer {
        result: "installing".into(),
        image: path_arg(&ctx, &image),
    };
    let text = answer.to_wire().map_err(|e| e.to_string())?;
    stream
        .write_all(&text)
        .and_then(|()| stream.flush())
        .map_err(|e| format!("sending the answer: {e}"))?;
    install_later(root.to_path_buf(), runner, image);
    Ok(())
}

/// Writes to a file and a hasher at once.
struct Tee<'a>(&'a mut File, &'a mut blake3::Hasher);

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
