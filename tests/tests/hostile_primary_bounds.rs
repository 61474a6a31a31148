//! Issue 14, the backup's side: what a hostile primary sends is checked before it is
//! buffered and bounded by the manifest (finding 4), deep paths are refused and a staging
//! tree that cannot be rescanned is repaired by the next sync (finding 6), and every refusal
//! names the entry and the rule, on both sides (finding 8).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use sync_core::delta::Encoding;
use sync_core::limits::{self, MAX_EXCLUDE_LEN};
use sync_core::manifest::{Entry, Hash, Kind, ListItem, Manifest};
use sync_core::path::RelPath;
use sync_core::session::{Backup, SyncError};
use sync_core::staging::Staging;
use sync_core::testing::{RawEntry, RawItem, RawKind, RawManifest};
use sync_core::wire::{
    Conn, FileHeader, Hello, ManifestForm, Msg, WireError, MAGIC, PROTOCOL_VERSION,
};

/// Runs a backup on a fresh staging tree against `script` playing the primary; returns the
/// backup's result and what the script returned.
fn against_backup<T: Send>(
    script: impl FnOnce(&mut Conn<&UnixStream>) -> T + Send,
) -> (Result<(), SyncError>, T) {
    let t = tempfile::tempdir().unwrap();
    let staging = t.path().join("b/usr/share/keepalived/rsync");
    let (a, b) = UnixStream::pair().unwrap();
    // A backup that waited for bytes it should have refused would hang the test: fail it.
    a.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut st = Staging::open(&staging).unwrap();
            let mut restore = sync_core::local::staging_only;
            let r = Backup {
                staging: &mut st,
                node: "backup",
                restore: &mut restore,
            }
            .run(&b)
            .map(drop);
            let _ = b.shutdown(std::net::Shutdown::Both);
            r
        });
        let mut c = Conn::new(&a);
        let out = script(&mut c);
        let _ = a.shutdown(std::net::Shutdown::Write);
        (h.join().unwrap(), out)
    })
}

/// Hello, Welcome, then the manifest `body` (postcard) as the full form.
fn send_manifest(c: &mut Conn<&UnixStream>, root: Hash, body: &[u8]) {
    c.send(&Msg::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        root,
        acked: None,
        node: "evil".into(),
    }))
    .unwrap();
    c.flush().unwrap();
    assert!(matches!(c.recv().unwrap(), Msg::Welcome(_)));
    let z = zstd::bulk::compress(body, 3).unwrap();
    c.send(&Msg::Manifest {
        form: ManifestForm::Full,
        len: z.len() as u64,
    })
    .unwrap();
    c.send_chunks(&z).unwrap();
}

/// The first message the backup sends after the script's last flush: its error text.
fn backup_says(c: &mut Conn<&UnixStream>) -> String {
    loop {
        match c.recv() {
            Ok(_) => continue,
            Err(WireError::Remote(e)) => return e,
            Err(e) => panic!("the backup closed without saying why: {e}"),
        }
    }
}

fn etc_with(entries: Vec<Entry>) -> Manifest {
    let mut all = vec![entry("etc", Kind::Dir)];
    all.extend(entries);
    Manifest {
        list: vec![ListItem {
            path: RelPath::new("etc").unwrap(),
            dir: true,
        }],
        excludes: vec![],
        entries: all,
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

fn small_file(size: u64) -> Kind {
    Kind::File {
        size,
        hash: Hash::of(b"x"),
    }
}

/// Finding 4: a file for a path the manifest does not hold is refused at its header,
/// before any chunk (the campaign buffered 2 GiB of them first). The script sends the
/// header alone and waits: a backup that waited for chunks would never answer.
#[test]
fn a_file_outside_the_manifest_is_refused_before_its_payload() {
    let m = etc_with(vec![entry("etc/a", small_file(1))]);
    let (res, said) = against_backup(|c| {
        send_manifest(c, m.root_hash(), &m.encode());
        c.send(&Msg::File(FileHeader {
            path: RelPath::new("etc/shadow").unwrap(),
            encoding: Encoding::Whole,
        }))
        .unwrap();
        c.flush().unwrap();
        backup_says(c)
    });
    let err = res.unwrap_err().to_string();
    assert!(
        err.contains("/etc/shadow: file sent that is not a file in the manifest"),
        "{err}"
    );
    assert!(said.contains("/etc/shadow"), "{said}");
}

/// Finding 4: the payload of a file is bounded by the size the manifest gives it.
#[test]
fn a_payload_past_what_the_manifest_allows_is_refused() {
    let m = etc_with(vec![entry("etc/a", small_file(10))]);
    let limit = limits::max_payload(10);
    let (res, said) = against_backup(|c| {
        send_manifest(c, m.root_hash(), &m.encode());
        c.send(&Msg::File(FileHeader {
            path: RelPath::new("etc/a").unwrap(),
            encoding: Encoding::Whole,
        }))
        .unwrap();
        // One chunk more than the bound, never the gigabytes it could have been.
        for _ in 0..=limit / (64 << 10) {
            if c.send_chunk(&[0u8; 64 << 10]).is_err() {
                break;
            }
        }
        let _ = c.flush();
        backup_says(c)
    });
    let err = res.unwrap_err().to_string();
    assert!(err.contains("/etc/a: file payload of"), "{err}");
    assert!(err.contains(&format!("over the limit of {limit}")), "{err}");
    assert!(said.contains("/etc/a"), "{said}");
}

/// Finding 4: a size declared far past the manifest's is refused before anything is
/// decoded (the campaign's 64 KB payload declared 1 GiB expanded to 2 GiB).
#[test]
fn a_declared_size_past_the_manifest_is_refused_before_decoding() {
    let m = etc_with(vec![entry("etc/a", small_file(10))]);
    let (res, _) = against_backup(|c| {
        send_manifest(c, m.root_hash(), &m.encode());
        let payload = zstd::bulk::compress(b"0123456789", 3).unwrap();
        let h = FileHeader {
            path: RelPath::new("etc/a").unwrap(),
            encoding: Encoding::Rsync,
        };
        c.send_file(h, &payload, 1 << 30, Hash::of(b"x")).unwrap();
        c.flush().unwrap();
        backup_says(c)
    });
    let err = res.unwrap_err().to_string();
    assert!(
        err.contains("/etc/a: declared 1073741824 bytes; the manifest says 10"),
        "{err}"
    );
}

/// Finding 4: one exclude string past its bound (the campaign's was 400 MB in a 12 KB
/// manifest): refused by name, nothing stored.
#[test]
fn an_oversized_exclude_is_refused_and_nothing_is_stored() {
    let raw = RawManifest {
        list: vec![RawItem {
            path: "etc".into(),
            dir: true,
        }],
        excludes: vec!["x".repeat(MAX_EXCLUDE_LEN + 1)],
        entries: vec![RawEntry::new("etc", RawKind::Dir)],
    };
    let body = raw.encode();
    let (res, said) = against_backup(|c| {
        send_manifest(c, Hash::of(&body), &body);
        c.send(&Msg::EndOfPush).unwrap();
        c.flush().unwrap();
        backup_says(c)
    });
    let err = res.unwrap_err().to_string();
    for text in [&err, &said] {
        assert!(
            text.contains("exclude pattern \"xxx") && text.contains("limit of 4096 bytes"),
            "{text}"
        );
    }
}

/// Finding 8: each refused path says which entry and which rule, on the backup and in the
/// error the primary receives, never "Serde Deserialization Error". Finding 6: the
/// campaign's 2,040-deep entry is one of them.
#[test]
fn refusals_name_the_entry_and_the_rule_on_both_sides() {
    let deep = vec!["d"; 2040].join("/");
    let cases = [
        ("etc/../x", "has a '..' component"),
        ("/etc/x", "is absolute"),
        ("etc//x", "has an empty or '.' component"),
        ("etc/./x", "has an empty or '.' component"),
        ("etc/a\0b", "contains a NUL byte"),
        (deep.as_str(), "is longer than the limit of 3072 bytes"),
        (".ha-sync/manifest", "is reserved for ha-sync's own state"),
    ];
    for (bad, rule) in cases {
        let raw = RawManifest {
            list: vec![RawItem {
                path: "etc".into(),
                dir: true,
            }],
            excludes: vec![],
            entries: vec![
                RawEntry::new("etc", RawKind::Dir),
                RawEntry::new(bad, RawKind::Dir),
            ],
        };
        let body = raw.encode();
        let (res, said) = against_backup(|c| {
            send_manifest(c, Hash::of(&body), &body);
            c.send(&Msg::EndOfPush).unwrap();
            c.flush().unwrap();
            backup_says(c)
        });
        let err = res.unwrap_err().to_string();
        let quoted = format!("{:?}", &bad[..bad.len().min(20)]);
        for text in [&err, &said] {
            assert!(text.contains(rule), "{bad:?}: {text}");
            assert!(
                text.contains(&quoted[..quoted.len() - 1]),
                "{bad:?}: {text}"
            );
            assert!(!text.contains("Serde"), "{text}");
        }
    }
}

/// Makes `depth` directories of 250-byte names below `top` by handle (the full path is
/// longer than PATH_MAX, so no path-based call could).
fn make_too_deep(top: &Path, depth: usize) {
    let mut d = sync_core::fsx::Dir::open(top, false).unwrap();
    let name = "n".repeat(250);
    for _ in 0..depth {
        d.mkdir(&name, 0o755).unwrap();
        d = d.open_dir(&name).unwrap();
    }
}

/// Finding 6: staging holding a path past PATH_MAX after an interrupted sync made every
/// later rescan fail with "File name too long"; the next sync now empties it and converges.
#[test]
fn staging_that_cannot_be_rescanned_is_repaired_by_the_next_sync() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    ha_sync_tests::router_root(&a, &["/etc/ha"], &[], &[]);
    std::fs::create_dir_all(a.join("etc/ha/sub")).unwrap();
    std::fs::write(a.join("etc/ha/sub/f"), b"config\n").unwrap();
    std::fs::write(a.join("etc/ha/g"), b"more\n").unwrap();
    let runner = sync_core::runner::RecordingRunner::new();
    let mut restore = sync_core::local::staging_only;
    sync_core::local::sync_local(&a, &b, &runner, &mut restore).expect("first sync");
    let staging = sync_core::node::Node::new(&b).staging_dir();
    // What an old version (or anything else) left: 20 x 251 bytes, past PATH_MAX.
    make_too_deep(&staging.join("etc/ha/sub"), 20);
    std::fs::write(staging.join(".ha-sync/dirty"), b"").unwrap();
    std::fs::write(a.join("etc/ha/g"), b"changed\n").unwrap();

    let r = sync_core::local::sync_local(&a, &b, &runner, &mut restore).expect("repairing sync");
    assert_eq!(r.primary.commit.map(|c| c.root), Some(r.primary.root));
    ha_sync_tests::assert_same_tree(&a.join("etc/ha"), &staging.join("etc/ha"));
    assert!(!staging.join(".ha-sync/dirty").exists());
    let again = sync_core::local::sync_local(&a, &b, &runner, &mut restore).expect("next sync");
    assert!(again.primary.up_to_date);
}

/// Finding 6, the general case: whatever makes the rescan of an interrupted staging tree
/// fail (here a listed file below what became a regular file: ENOTDIR), the next sync
/// empties staging and takes everything again instead of failing for good.
#[test]
fn any_rescan_failure_is_repaired_by_a_full_sync() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    ha_sync_tests::router_root(&a, &[], &["/etc/ha/x"], &[]);
    std::fs::create_dir_all(a.join("etc/ha")).unwrap();
    std::fs::write(a.join("etc/ha/x"), b"x\n").unwrap();
    let runner = sync_core::runner::RecordingRunner::new();
    let mut restore = sync_core::local::staging_only;
    sync_core::local::sync_local(&a, &b, &runner, &mut restore).expect("first sync");
    let staging = sync_core::node::Node::new(&b).staging_dir();
    std::fs::remove_dir_all(staging.join("etc/ha")).unwrap();
    std::fs::write(staging.join("etc/ha"), b"not a directory").unwrap();
    std::fs::write(staging.join(".ha-sync/dirty"), b"").unwrap();
    let st = Staging::open(&staging).unwrap();
    assert!(st.current(&[]).is_err(), "the rescan fails as staged");
    drop(st);

    let r = sync_core::local::sync_local(&a, &b, &runner, &mut restore).expect("repairing sync");
    assert_eq!(r.primary.commit.map(|c| c.root), Some(r.primary.root));
    assert_eq!(std::fs::read(staging.join("etc/ha/x")).unwrap(), b"x\n");
    assert!(!staging.join(".ha-sync/dirty").exists());
}
