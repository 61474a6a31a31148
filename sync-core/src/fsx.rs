//! File operations relative to an open directory that never follow a symlink.
//!
//! Writing `<staging>/etc/config/x` with ordinary paths would follow `etc` if a hostile
//! peer (or a stale tree) had made it a symlink to `/`. Here every component is opened with
//! `openat(O_NOFOLLOW | O_DIRECTORY)` from the tree's own descriptor, so a write can only land
//! inside the tree. Files appear only by `renameat` of a fsynced temp file from the same
//! directory: a reader sees the old or the new file, never half of one.

use crate::path::RelPath;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory held open by descriptor, plus its path for error messages.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What `lstat` says of a name inside a `Dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: FileType,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub dev: u64,
    pub ino: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    File,
    Dir,
    Symlink,
    Other,
}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn ns(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

pub(crate) fn stat_from(st: &libc::stat) -> Stat {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => FileType::File,
        libc::S_IFDIR => FileType::Dir,
        libc::S_IFLNK => FileType::Symlink,
        _ => FileType::Other,
    };
    Stat {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
        ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Name of a temp file beside `name`: hidden, unique per process and call.
fn temp_name(name: &str) -> String {
    let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let short: String = name.chars().take(100).collect();
    format!(".{short}.ha-sync-tmp.{}.{n}", std::process::id())
}

/// Refuses FIFOs, sockets and devices (opened `O_NONBLOCK`, so the open itself returned).
/// O_NONBLOCK means nothing for regular files and directories, so it stays set.
pub fn only_files_and_dirs(f: &File) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = f.metadata()?.file_type();
    let what = if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        return Ok(());
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}, not a regular file"),
    ))
}

/// Reads a config file as text without ever blocking in `open()`: a FIFO put where a UCI
/// file belongs (root can) would otherwise hang whoever reads it (issue 14, finding 7).
/// Symlinks are followed, as the router's own tools do.
pub fn read_text(path: &Path) -> io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    only_files_and_dirs(&f)?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

/// Whether `name` is one of our temp files (left by a crash: safe to remove).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".ha-sync-tmp.")
}

/// Metadata to set on an entry.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
}

impl Dir {
    /// Opens (creating with parents when `create`) the top directory of a tree. The path
    /// itself is trusted: it is ours (staging, root), not a peer's.
    pub fn open(path: &Path, create: bool) -> io::Result<Dir> {
        if create {
            std::fs::create_dir_all(path)?;
        }
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: c is a valid C string; the fd is owned right after.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fd was just returned by open and is ours.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Opens the child directory `name`, never through a symlink.
    pub fn open_dir(&self, name: &str) -> io::Result<Dir> {
        let c = cstr(name)?;
        // SAFETY: valid fd and C string.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: fd is fresh and ours.
        Ok(Dir {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: self.path.join(name),
        })
    }

    /// Walks to the directory holding `path`'s last component, creating missing directories
    /// (mode 0755) when `create`. Fails with `ELOOP`/`ENOTDIR` if any step is not a real
    /// directory, which is exactly the "never through a symlink" rule.
    pub fn parent_of(&self, path: &RelPath, create: bool) -> io::Result<Dir> {
        let mut comps: Vec<&str> = path.components().collect();
        comps.pop();
        let mut cur = self.open_dir(".")?;
        for c in comps {
            cur = match cur.open_dir(c) {
                Ok(d) => d,
                Err(e) if create && e.raw_os_error() == Some(libc::ENOENT) => {
                    cur.mkdir(c, 0o755)?;
                    cur.open_dir(c)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(cur)
    }

    /// Opens the directory at `path` itself (all components real directories).
    pub fn open_rel_dir(&self, path: &RelPath) -> io::Result<Dir> {
        self.parent_of(path, false)?.open_dir(path.file_name())
    }

    pub fn lstat(&self, name: &str) -> io::Result<Option<Stat>> {
        let c = cstr(name)?;
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: valid fd, C string and out pointer.
        let r = unsafe {
            libc::fstatat(
                self.raw(),
                c.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: fstatat succeeded and filled st.
        Ok(Some(stat_from(unsafe { &st.assume_init() })))
    }

    /// Opens a file or directory for reading (or for fchmod/fchown/futimens), refusing a
    /// symlink.
    /// Opens `name` for reading (or for its metadata): never through a symlink, and never
    /// blocking: a FIFO at a listed path (root can put one there) would hold the restore in
    /// `open()` forever. What is not a regular file or a directory is refused.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let c = cstr(name)?;
        // SAFETY: valid fd and C string.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        })?;
        // SAFETY: fresh fd.
        let f = unsafe { File::from_raw_fd(fd) };
        only_files_and_dirs(&f)?;
        Ok(f)
    }

    pub fn read_file(&self, name: &str, limit: u64) -> io::Result<Vec<u8>> {
        let f = self.open_file(name)?;
        let mut buf = Vec::new();
        f.take(limit + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "file larger than limit",
            ));
        }
        Ok(buf)
    }

    pub fn mkdir(&self, name: &str, mode: u32) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid fd and C string.
        check(unsafe { libc::mkdirat(self.raw(), c.as_ptr(), mode as libc::mode_t) }).map(drop)
    }

    /// Writes `data` as `name` atomically: temp file beside it, metadata set on the temp
    /// file, fsync, rename over whatever `name` was (file or symlink; a directory there is
    /// an error the caller resolves first).
    pub fn write_file_atomic(&self, name: &str, data: &[u8], meta: Option<Meta>) -> io::Result<()> {
        self.write_file_replace(name, data, meta, true)
    }

    /// `write_file_atomic` with the fsync left to the caller, who must make the whole
    /// filesystem durable (`sync_fs`) before anything depends on the file being there: one
    /// journal flush instead of one per file.
    pub fn write_file_replace(
        &self,
        name: &str,
        data: &[u8],
        meta: Option<Meta>,
        fsync: bool,
    ) -> io::Result<()> {
        self.write_temp_then_rename(name, data, fsync, |f| match meta {
            Some(m) => set_meta_fd(f, m),
            None => Ok(()),
        })
    }

    /// Writes `data` to a fresh temp file beside `name`, lets `fixup` set its metadata,
    /// optionally fsyncs it, and renames it over `name`. The temp file never outlives an error.
    /// A new temp file beside `name` (exclusive, never through a symlink, 0600), and its name.
    fn create_temp(&self, name: &str) -> io::Result<(String, File)> {
        let tmp = temp_name(name);
        let c = cstr(&tmp)?;
        // SAFETY: valid fd and C string.
        let fd = check(unsafe {
            libc::openat(
                self.raw(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        })?;
        // SAFETY: fresh fd.
        Ok((tmp, unsafe { File::from_raw_fd(fd) }))
    }

    /// Writes `data` as a temp file beside `name`, its metadata set, neither fsynced nor
    /// renamed: for a batch whose data the caller makes durable at once ([`Dir::sync_fs`])
    /// before renaming each into place ([`Dir::rename`]). Returns the temp's name.
    pub fn write_temp(&self, name: &str, data: &[u8], meta: Option<Meta>) -> io::Result<String> {
        let (tmp, mut f) = self.create_temp(name)?;
        let res = f.write_all(data).and_then(|()| match meta {
            Some(m) => set_meta_fd(&f, m),
            None => Ok(()),
        });
        match res {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = self.unlink(&tmp);
                Err(e)
            }
        }
    }

    fn write_temp_then_rename(
        &self,
        name: &str,
        data: &[u8],
        fsync: bool,
        fixup: impl FnOnce(&File) -> io::Result<()>,
    ) -> io::Result<()> {
        let (tmp, mut f) = self.create_temp(name)?;
        let res = (|| {
            f.write_all(data)?;
            fixup(&f)?;
            if fsync {
                f.sync_all()?;
            }
            self.rename(&tmp, name)
        })();
        if res.is_err() {
            let _ = self.unlink(&tmp);
        }
        res
    }

    /// Creates the symlink `name -> target` atomically (temp link + rename).
    pub fn symlink_atomic(&self, target: &str, name: &str, meta: Option<Meta>) -> io::Result<()> {
        let tmp = temp_name(name);
        let (t, c) = (cstr(target)?, cstr(&tmp)?);
        // SAFETY: valid fd and C strings.
        check(unsafe { libc::symlinkat(t.as_ptr(), self.raw(), c.as_ptr()) })?;
        let res = (|| {
            if let Some(m) = meta {
                self.set_meta(&tmp, m, true)?;
            }
            self.rename(&tmp, name)
        })();
        if res.is_err() {
            let _ = self.unlink(&tmp);
        }
        res
    }

    /// Makes `to` a second name of the file `from` (hard link to a temp name, renamed over
    /// `to`): the same bytes without writing them again.
    pub fn link_atomic(&self, from: &str, to: &str) -> io::Result<()> {
        let tmp = temp_name(to);
        let (a, t) = (cstr(from)?, cstr(&tmp)?);
        // SAFETY: valid fds and C strings; no AT_SYMLINK_FOLLOW: a symlink is linked as itself.
        check(unsafe { libc::linkat(self.raw(), a.as_ptr(), self.raw(), t.as_ptr(), 0) })?;
        self.rename(&tmp, to).inspect_err(|_| {
            let _ = self.unlink(&tmp);
        })
    }

    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (cstr(from)?, cstr(to)?);
        // SAFETY: valid fds and C strings.
        check(unsafe { libc::renameat(self.raw(), a.as_ptr(), self.raw(), b.as_ptr()) }).map(drop)
    }

    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid fd and C string.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), 0) }).map(drop)
    }

    pub fn rmdir(&self, name: &str) -> io::Result<()> {
        let c = cstr(name)?;
        // SAFETY: valid fd and C string.
        check(unsafe { libc::unlinkat(self.raw(), c.as_ptr(), libc::AT_REMOVEDIR) }).map(drop)
    }

    /// Removes `name` whatever it is; a directory with everything below it (no symlink
    /// followed). Missing is fine.
    pub fn remove_all(&self, name: &str) -> io::Result<()> {
        match self.lstat(name)? {
            None => Ok(()),
            Some(st) if st.kind == FileType::Dir => {
                let sub = self.open_dir(name)?;
                for child in sub.list()? {
                    sub.remove_all(&child)?;
                }
                self.rmdir(name)
            }
            Some(_) => self.unlink(name),
        }
    }

    /// Names in this directory (no `.`/`..`), sorted.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        // Read through /proc-free path: re-open "." as a std ReadDir via the fd path is not
        // possible, so use fdopendir on a dup.
        // SAFETY: dup of a valid fd; fdopendir takes ownership of the dup.
        let dupfd = check(unsafe { libc::fcntl(self.raw(), libc::F_DUPFD_CLOEXEC, 0) })?;
        // SAFETY: dupfd is ours; on failure we close it.
        let dirp = unsafe { libc::fdopendir(dupfd) };
        if dirp.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: dupfd still ours when fdopendir failed.
            unsafe { libc::close(dupfd) };
            return Err(e);
        }
        // SAFETY: dirp is a valid DIR*; rewinddir so a reused offset doesn't hide names.
        unsafe { libc::rewinddir(dirp) };
        loop {
            // SAFETY: dirp valid until closedir below.
            let ent = unsafe { libc::readdir(dirp) };
            if ent.is_null() {
                break;
            }
            // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated.
            let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) };
            let b = name.to_bytes();
            if b == b"." || b == b".." {
                continue;
            }
            out.push(String::from_utf8_lossy(b).into_owned());
        }
        // SAFETY: closes dirp and the dup'd fd.
        unsafe { libc::closedir(dirp) };
        out.sort();
        Ok(out)
    }

    /// Sets mode, owner and mtime on `name` without following a symlink. chmod does not apply
    /// to symlinks on Linux, so a symlink gets owner and mtime only.
    pub fn set_meta(&self, name: &str, m: Meta, is_symlink: bool) -> io::Result<()> {
        let c = cstr(name)?;
        if is_symlink {
            set_owner_at(self.raw(), &c, m)?;
        } else {
            let d = self.open_file(name)?;
            return set_meta_fd(&d, m);
        }
        set_mtime_at(self.raw(), &c, m.mtime_ns)
    }

    pub fn read_link(&self, name: &str) -> io::Result<String> {
        let c = cstr(name)?;
        let mut buf = vec![0u8; 4097];
        // SAFETY: valid fd, C string and buffer of the given length.
        let n =
            unsafe { libc::readlinkat(self.raw(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        String::from_utf8(buf)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "symlink target not UTF-8"))
    }

    /// Flushes the whole filesystem this directory is on.
    pub fn sync_fs(&self) -> io::Result<()> {
        // SAFETY: valid fd.
        check(unsafe { libc::syncfs(self.raw()) }).map(drop)
    }

    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: valid fd.
        check(unsafe { libc::fsync(self.raw()) }).map(drop)
    }

    pub fn set_own_meta(&self, m: Meta) -> io::Result<()> {
        let f = self.open_file(".")?;
        set_meta_fd(&f, m)
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn set_meta_fd(f: &File, m: Meta) -> io::Result<()> {
    let fd = f.as_raw_fd();
    // Only root may give files away; as another user keep our own ids (demo, tests).
    if is_root() {
        // SAFETY: valid fd.
        check(unsafe { libc::fchown(fd, m.uid, m.gid) })?;
    }
    // fchown clears setuid bits, so chmod after it.
    // SAFETY: valid fd.
    check(unsafe { libc::fchmod(fd, (m.mode & 0o7777) as libc::mode_t) })?;
    let ts = timespec(m.mtime_ns);
    // SAFETY: valid fd and a 2-element array.
    check(unsafe { libc::futimens(fd, ts.as_ptr()) }).map(drop)
}

fn set_owner_at(dirfd: RawFd, c: &CString, m: Meta) -> io::Result<()> {
    if is_root() {
        // SAFETY: valid fd and C string.
        check(unsafe {
            libc::fchownat(dirfd, c.as_ptr(), m.uid, m.gid, libc::AT_SYMLINK_NOFOLLOW)
        })?;
    }
    Ok(())
}

fn set_mtime_at(dirfd: RawFd, c: &CString, mtime_ns: i64) -> io::Result<()> {
    let ts = timespec(mtime_ns);
    // SAFETY: valid fd, C string and 2-element array.
    check(unsafe { libc::utimensat(dirfd, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map(drop)
}

fn timespec(mtime_ns: i64) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as _,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as libc::c_long,
    };
    // atime: leave alone.
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    [omit, t]
}

/// Whether this process may set owners (decides if uid/gid are compared after apply).
pub fn can_chown() -> bool {
    is_root()
}

// ---------------------------------------------------------------------------------------------
// Whole files of our own (keys, UCI, state, caches): one atomic write and one lock for all.

/// What an atomic write must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync of the file and of its directory before returning: it survives a power cut
    /// (keys, UCI files, keepalived.conf, anything on flash that must be there after a reboot).
    Durable,
    /// rename only: a reader never sees half of it, but a crash may lose the new version
    /// (state under `var/run`, which is RAM on a router, and rebuildable caches).
    Visible,
}

/// Replaces `path` with `data` atomically: a temp file in the same directory (created with
/// `O_EXCL | O_NOFOLLOW`, so a planted symlink is never written through), exactly `mode`
/// (the umask does not apply), then rename. Missing parent directories are created.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32, durability: Durability) -> io::Result<()> {
    let (dir, name) = split_path(path)?;
    std::fs::create_dir_all(dir)?;
    let d = Dir::open(dir, false)?;
    let durable = durability == Durability::Durable;
    d.write_temp_then_rename(name, data, durable, |f| {
        // SAFETY: valid fd owned by `f`.
        check(unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) }).map(drop)
    })?;
    if durable {
        d.sync()?;
    }
    Ok(())
}

/// The mode of the file at `path`, or `default` when there is none (a rewrite keeps the
/// mode an admin gave the file).
pub fn mode_or(path: &Path, default: u32) -> io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.permissions().mode() & 0o7777),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(default),
        Err(e) => Err(e),
    }
}

fn split_path(path: &Path) -> io::Result<(&Path, &str)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no UTF-8 file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// An exclusive `flock` held until dropped.
///
/// The lock file is opened close-on-exec, so no command started meanwhile (an init script's
/// daemon) inherits it and keeps the lock; `O_NOFOLLOW`, so a symlink planted at its place
/// is refused. The kernel releases it when the process dies, however it dies.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Waits for the lock (retrying when a signal interrupts the wait).
    pub fn acquire(path: &Path) -> io::Result<Lock> {
        let file = Self::open(path)?;
        loop {
            // SAFETY: flock on a descriptor owned by `file`, which outlives the call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Lock { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Takes the lock if it is free; `None` when another holder has it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<Lock>> {
        let file = Self::open(path)?;
        loop {
            // SAFETY: as in `acquire`.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(Lock { _file: file }));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => return Ok(None),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
    }

    fn open(path: &Path) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_writes_through_a_symlinked_directory() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("etc")).unwrap();
        let d = Dir::open(&tree, false).unwrap();
        let p = RelPath::new("etc/passwd").unwrap();
        let err = d.parent_of(&p, true).unwrap_err();
        assert!(
            matches!(err.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn atomic_write_replaces_a_symlink_instead_of_following_it() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::os::unix::fs::symlink(&victim, tree.join("f")).unwrap();
        let d = Dir::open(&tree, false).unwrap();
        let meta = Meta {
            mode: 0o640,
            uid: 0,
            gid: 0,
            mtime_ns: 1_500_000_000_123_456_789,
        };
        d.write_file_atomic("f", b"new", Some(meta)).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(tree.join("f")).unwrap(), b"new");
        let st = d.lstat("f").unwrap().unwrap();
        assert_eq!(
            (st.kind, st.mode, st.mtime_ns),
            (FileType::File, 0o640, meta.mtime_ns)
        );
        assert!(d.list().unwrap().iter().all(|n| !is_temp_name(n)));
    }

    #[test]
    fn write_atomic_sets_the_exact_mode_and_never_follows_a_planted_symlink() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = t.path().join("sub/key");
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomic(&path, b"secret", 0o600, Durability::Durable).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_file());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        assert_eq!(mode_or(&path, 0o644).unwrap(), 0o600);
        assert_eq!(mode_or(&t.path().join("none"), 0o644).unwrap(), 0o644);
        let names: Vec<_> = std::fs::read_dir(t.path().join("sub")).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left beside the key");
    }

    #[test]
    fn a_lock_excludes_a_second_holder_until_dropped() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("run/x.lock");
        let held = Lock::acquire(&path).unwrap();
        assert!(Lock::try_acquire(&path).unwrap().is_none());
        drop(held);
        assert!(Lock::try_acquire(&path).unwrap().is_some());
    }

    #[test]
    fn symlink_and_remove_all() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path(), false).unwrap();
        let p = RelPath::new("a/b/c").unwrap();
        let parent = d.parent_of(&p, true).unwrap();
        parent.symlink_atomic("../../x", "c", None).unwrap();
        assert_eq!(parent.read_link("c").unwrap(), "../../x");
        d.remove_all("a").unwrap();
        assert!(d.lstat("a").unwrap().is_none());
    }
}
