//! A hostile primary speaking the protocol directly to a backup: every bad input is a clear
//! error and nothing is written outside the staging tree.

use std::os::unix::net::UnixStream;
use std::path::Path;
use sync_core::manifest::{Entry, Hash, Kind, ListItem, Manifest};
use sync_core::path::RelPath;
use sync_core::session::{Backup, SyncError};
use sync_core::staging::Staging;
use sync_core::testing::{RawEntry, RawItem, RawKind, RawManifest};
use sync_core::wire::{Conn, FileHeader, Hello, ManifestForm, Msg, MAGIC, PROTOCOL_VERSION};

/// Runs a backup on `staging` against a scripted primary; returns the backup's result and
/// what the primary side received.
fn against_backup(
    staging: &Path,
    script: impl FnOnce(&mut Conn<&UnixStream>) + Send,
) -> Result<(), SyncError> {
    let (a, b) = UnixStream::pair().unwrap();
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let mut st = Staging::open(staging).unwrap();
            let mut restore = sync_core::local::staging_only;
            Backup {
                staging: &mut st,
                node: "backup",
                restore: &mut restore,
            }
            .run(&b)
            .map(drop)
        });
        let mut c = Conn::new(&a);
        script(&mut c);
        let _ = a.shutdown(std::net::Shutdown::Write);
        h.join().unwrap()
    })
}

fn hello(root: Hash) -> Msg {
    Msg::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        root,
        acked: None,
        node: "evil".into(),
    })
}

fn send_manifest_bytes(c: &mut Conn<&UnixStream>, root: Hash, body: &[u8]) {
    c.send(&hello(root)).unwrap();
    c.flush().unwrap();
    let _welcome = c.recv().unwrap();
    let z = zstd::bulk::compress(body, 3).unwrap();
    c.send(&Msg::Manifest {
        form: ManifestForm::Full,
        len: z.len() as u64,
    })
    .unwrap();
    c.send_chunks(&z).unwrap();
    c.send(&Msg::EndOfPush).unwrap();
    let _ = c.flush();
}

fn outside_is_untouched(outside: &Path) {
    assert_eq!(
        std::fs::read_dir(outside).unwrap().count(),
        1,
        "something was written outside staging"
    );
    assert_eq!(
        std::fs::read(outside.join("passwd")).unwrap(),
        b"root:x:0:0\n"
    );
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("passwd"), b"root:x:0:0\n").unwrap();
    let staging = t.path().join("b/usr/share/keepalived/rsync");
    (t, staging, outside)
}

#[test]
fn manifests_with_escaping_paths_are_refused() {
    for bad in [
        "../x",
        "/etc/x",
        "a/../../b",
        "etc/a\0b",
        "../outside/passwd",
    ] {
        let (_t, staging, outside) = setup();
        let m = RawManifest {
            list: vec![RawItem {
                path: bad.into(),
                dir: false,
            }],
            excludes: vec![],
            entries: vec![RawEntry::new(
                bad,
                RawKind::File {
                    size: 1,
                    hash: Hash::default(),
                },
            )],
        };
        let body = m.encode();
        let err = against_backup(&staging, |c| send_manifest_bytes(c, Hash::of(&body), &body))
            .unwrap_err();
        assert!(err.to_string().contains("manifest"), "{bad}: {err}");
        outside_is_untouched(&outside);
    }
}

fn entry(p: &str, kind: Kind) -> Entry {
    Entry {
        path: RelPath::new(p).unwrap(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 1,
    }
}

#[test]
fn a_file_below_a_symlink_of_the_same_manifest_is_refused() {
    let (_t, staging, outside) = setup();
    let m = Manifest {
        list: vec![ListItem {
            path: RelPath::new("etc").unwrap(),
            dir: true,
        }],
        excludes: vec![],
        entries: vec![
            entry("etc", Kind::Dir),
            entry(
                "etc/l",
                Kind::Symlink {
                    target: outside.to_string_lossy().into_owned(),
                },
            ),
            entry(
                "etc/l/passwd",
                Kind::File {
                    size: 4,
                    hash: Hash::of(b"evil"),
                },
            ),
        ],
    };
    let body = m.encode();
    let err =
        against_backup(&staging, |c| send_manifest_bytes(c, m.root_hash(), &body)).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    outside_is_untouched(&outside);
}

#[test]
fn a_symlink_already_in_staging_is_never_written_through() {
    let (_t, staging, outside) = setup();
    // Staging holds a symlink to the outside where the new manifest has a directory.
    std::fs::create_dir_all(staging.join("etc")).unwrap();
    std::os::unix::fs::symlink(&outside, staging.join("etc/l")).unwrap();
    let m = Manifest {
        list: vec![ListItem {
            path: RelPath::new("etc").unwrap(),
            dir: true,
        }],
        excludes: vec![],
        entries: vec![
            entry("etc", Kind::Dir),
            entry("etc/l", Kind::Dir),
            entry(
                "etc/l/passwd",
                Kind::File {
                    size: 4,
                    hash: Hash::of(b"evil"),
                },
            ),
        ],
    };
    let body = m.encode();
    let res = against_backup(&staging, |c| {
        send_manifest_bytes(c, m.root_hash(), &body);
        // Whatever the backup wants, send the file.
        while let Ok(msg) = c.recv() {
            if msg == Msg::EndOfWants {
                break;
            }
        }
        let payload = zstd::bulk::compress(b"evil", 3).unwrap();
        let h = FileHeader {
            path: RelPath::new("etc/l/passwd").unwrap(),
            encoding: sync_core::delta::Encoding::Whole,
        };
        c.send_file(h, &payload, 4, Hash::of(b"evil")).unwrap();
        c.send(&Msg::EndOfData).unwrap();
        c.flush().unwrap();
        let _ = c.recv();
        let _ = c.recv();
    });
    res.unwrap();
    outside_is_untouched(&outside);
    // The symlink was replaced by a real directory inside staging.
    assert!(staging.join("etc/l").symlink_metadata().unwrap().is_dir());
    assert_eq!(
        std::fs::read(staging.join("etc/l/passwd")).unwrap(),
        b"evil"
    );
}

#[test]
fn a_file_not_in_the_manifest_is_refused() {
    let (_t, staging, outside) = setup();
    let m = Manifest {
        list: vec![ListItem {
            path: RelPath::new("etc").unwrap(),
            dir: true,
        }],
        excludes: vec![],
        entries: vec![entry("etc", Kind::Dir)],
    };
    let body = m.encode();
    let err = against_backup(&staging, |c| {
        c.send(&hello(m.root_hash())).unwrap();
        c.flush().unwrap();
        let _ = c.recv();
        let z = zstd::bulk::compress(&body, 3).unwrap();
        c.send(&Msg::Manifest {
            form: ManifestForm::Full,
            len: z.len() as u64,
        })
        .unwrap();
        c.send_chunks(&z).unwrap();
        let payload = zstd::bulk::compress(b"x", 3).unwrap();
        let h = FileHeader {
            path: RelPath::new("etc/shadow").unwrap(),
            encoding: sync_core::delta::Encoding::Whole,
        };
        c.send_file(h, &payload, 1, Hash::of(b"x")).unwrap();
        c.send(&Msg::EndOfPush).unwrap();
        c.flush().unwrap();
    })
    .unwrap_err();
    assert!(err.to_string().contains("/etc/shadow"), "{err}");
    assert!(!staging.join("etc/shadow").exists());
    outside_is_untouched(&outside);
}

#[test]
fn garbage_and_oversized_frames_end_the_session_cleanly() {
    let (_t, staging, _outside) = setup();
    let err = against_backup(&staging, |c| {
        let _ = c; // raw bytes below
    });
    assert!(err.unwrap_err().to_string().contains("closed"));

    let (a, b) = UnixStream::pair().unwrap();
    use std::io::Write;
    (&a).write_all(&u32::MAX.to_le_bytes()).unwrap();
    let mut st = Staging::open(&staging).unwrap();
    let mut restore = sync_core::local::staging_only;
    let err = Backup {
        staging: &mut st,
        node: "b",
        restore: &mut restore,
    }
    .run(&b)
    .unwrap_err();
    assert!(err.to_string().contains("over the limit"), "{err}");

    let (a, b) = UnixStream::pair().unwrap();
    (&a).write_all(&8u32.to_le_bytes()).unwrap();
    (&a).write_all(b"SSH-2.0-").unwrap();
    let err = Backup {
        staging: &mut st,
        node: "b",
        restore: &mut restore,
    }
    .run(&b)
    .unwrap_err();
    assert!(
        err.to_string().contains("malformed") || err.to_string().contains("magic"),
        "{err}"
    );
}
