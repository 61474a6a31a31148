//! A scripted hostile backup against a real primary (issue 14, finding 2): want storms,
//! repeated refetches, oversized and garbage frames, a backup that never answers and one
//! that answers a byte at a time. Each session ends within its bound with an error that
//! names the backup and the cause; none needs more than a few MiB or a second.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use sync_core::limits::{MAX_REFETCHES, MAX_SIGNATURE};
use sync_core::manifest::{Kind, Manifest};
use sync_core::path::RelPath;
use sync_core::runner::RecordingRunner;
use sync_core::session::{Primary, PrimaryState, SessionLimits, SyncError};
use sync_core::wire::{Conn, Msg, Want, WantKind, Welcome, MAGIC, PROTOCOL_VERSION};

const PEER: &str = "test-peer:65022";

/// A primary root with `n` small files under /etc/ha.
fn primary_root(dir: &Path, n: usize) -> Manifest {
    ha_sync_tests::router_root(dir, &["/etc/ha"], &[], &[]);
    std::fs::create_dir_all(dir.join("etc/ha")).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("etc/ha/f{i}")), format!("file {i}\n")).unwrap();
    }
    sync_core::prepare::prepare_saved(&sync_core::node::Node::new(dir), &RecordingRunner::new())
        .unwrap()
        .manifest
}

/// Runs a real primary for `files` files, within `deadline`, against `script` playing the
/// backup. Returns the primary's error (a hostile backup never lets it succeed).
fn against_primary(
    files: usize,
    deadline: Duration,
    script: impl FnOnce(&mut Conn<&UnixStream>, &UnixStream, &Manifest) + Send,
) -> SyncError {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("a");
    let m = primary_root(&root, files);
    let (a, b) = UnixStream::pair().unwrap();
    // The session checks its deadline between reads; a read timeout makes a read that
    // waits on a silent backup come back to that check.
    a.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    std::thread::scope(|s| {
        let (m, root, a) = (&m, &root, &a);
        let primary = s.spawn(move || {
            let state = PrimaryState::new(&root.join(sync_core::node::STATE_DIR));
            let limits = SessionLimits {
                peer: PEER.into(),
                deadline,
            };
            let r = Primary {
                root,
                manifest: m,
                state: &state,
                node: "primary",
                progress: &mut |_, _| {},
            }
            .run_within(a, &limits);
            // What a dropped connection does: the scripted backup sees the end.
            let _ = a.shutdown(std::net::Shutdown::Both);
            r
        });
        let mut c = Conn::new(&b);
        script(&mut c, &b, m);
        primary
            .join()
            .unwrap()
            .expect_err("a hostile backup never lets the session succeed")
    })
}

/// Takes Hello, answers Welcome (no staging root: a full manifest comes), takes the
/// manifest and the (empty) pushes.
fn greet(c: &mut Conn<&UnixStream>) {
    assert!(matches!(c.recv().unwrap(), Msg::Hello(_)));
    c.send(&welcome()).unwrap();
    c.flush().unwrap();
    let Msg::Manifest { len, .. } = c.recv().unwrap() else {
        panic!("no manifest")
    };
    c.recv_chunks(len, u64::MAX, "manifest").unwrap();
    assert_eq!(c.recv().unwrap(), Msg::EndOfPush);
}

fn welcome() -> Msg {
    Msg::Welcome(Welcome {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        staging_root: None,
        node: "evil".into(),
        restored: None,
    })
}

fn first_file(m: &Manifest) -> RelPath {
    m.entries
        .iter()
        .find(|e| matches!(e.kind, Kind::File { .. }))
        .unwrap()
        .path
        .clone()
}

fn whole(path: &RelPath) -> Msg {
    Msg::Want(Want {
        path: path.clone(),
        kind: WantKind::Whole,
    })
}

fn assert_names(err: &SyncError, cause: &str) {
    let msg = err.to_string();
    eprintln!("primary: {msg}");
    assert!(msg.contains(PEER), "the error names the peer: {msg}");
    assert!(msg.contains(cause), "the error says {cause:?}: {msg}");
}

/// One round of 3,000,000 wants for one file (the fault campaign's storm): refused at the
/// second, so the round never holds more than the manifest's files.
#[test]
fn a_want_storm_ends_at_the_first_repeat() {
    let err = against_primary(3, Duration::from_secs(60), |c, _, m| {
        greet(c);
        let w = whole(&first_file(m));
        for _ in 0..3_000_000 {
            if c.send(&w).is_err() {
                break; // the primary hung up
            }
        }
        let _ = c.flush();
    });
    assert_names(&err, "asked for twice in one round");
    assert_names(&err, "evil");
}

#[test]
fn wants_for_what_the_manifest_does_not_hold_are_refused() {
    let err = against_primary(3, Duration::from_secs(60), |c, _, _| {
        greet(c);
        let _ = c.send(&whole(&RelPath::new("etc/shadow").unwrap()));
        let _ = c.send(&Msg::EndOfWants);
        let _ = c.flush();
        let _ = c.recv();
    });
    assert_names(&err, "/etc/shadow: wanted, but not a file of the manifest");
}

/// Every delivered file answered by a new want for it (the campaign's 49,525 rounds in
/// 30 s): the primary sends a file at most 1 + MAX_REFETCHES times.
#[test]
fn a_backup_that_wants_the_same_file_forever_is_cut_off() {
    let mut rounds = 0;
    let err = against_primary(3, Duration::from_secs(60), |c, _, m| {
        greet(c);
        let w = whole(&first_file(m));
        'outer: loop {
            if c.send(&w).is_err() || c.send(&Msg::EndOfWants).is_err() || c.flush().is_err() {
                break;
            }
            loop {
                match c.recv() {
                    Ok(Msg::EndOfData) => break,
                    Ok(_) => {}
                    Err(_) => break 'outer,
                }
            }
            rounds += 1;
        }
    });
    assert_eq!(rounds, 1 + MAX_REFETCHES, "rounds answered");
    assert_names(&err, "asked for a 4th time");
}

#[test]
fn an_oversized_signature_is_refused() {
    let err = against_primary(3, Duration::from_secs(60), |c, _, m| {
        greet(c);
        let _ = c.send(&Msg::Want(Want {
            path: first_file(m),
            kind: WantKind::Rsync {
                signature: vec![0; MAX_SIGNATURE + 1],
                basis: Default::default(),
            },
        }));
        let _ = c.flush();
        let _ = c.recv();
    });
    assert_names(&err, "over the limit of 524288");
}

/// Each want within bounds, but a round's bytes past what the manifest accounts for.
#[test]
fn a_round_of_wants_is_bounded_by_the_manifest() {
    let err = against_primary(40, Duration::from_secs(60), |c, _, m| {
        greet(c);
        let sig = vec![0u8; MAX_SIGNATURE];
        for e in m
            .entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::File { .. }))
        {
            let w = Msg::Want(Want {
                path: e.path.clone(),
                kind: WantKind::Rsync {
                    signature: sig.clone(),
                    basis: Default::default(),
                },
            });
            if c.send(&w).is_err() {
                break;
            }
        }
        let _ = c.flush();
        let _ = c.recv();
    });
    assert_names(&err, "one round of wants took");
}

#[test]
fn an_oversized_frame_is_refused_before_it_is_read() {
    let err = against_primary(3, Duration::from_secs(60), |c, s, _| {
        greet(c);
        let mut s = s;
        let _ = s.write_all(&u32::MAX.to_le_bytes());
        let _ = s.read(&mut [0u8; 1]);
    });
    assert_names(&err, "frame of 4294967295 bytes is over the limit");
}

#[test]
fn a_garbage_frame_is_refused() {
    let err = against_primary(3, Duration::from_secs(60), |c, s, _| {
        assert!(matches!(c.recv().unwrap(), Msg::Hello(_)));
        let mut s = s;
        let _ = s.write_all(&5u32.to_le_bytes());
        let _ = s.write_all(&[0xff; 5]);
        let _ = s.read(&mut [0u8; 1]);
    });
    assert_names(&err, "malformed frame");
}

/// Takes Hello and says nothing more, holding the connection open.
#[test]
fn a_backup_that_never_answers_meets_the_deadline() {
    let err = against_primary(3, Duration::from_millis(300), |c, s, _| {
        assert!(matches!(c.recv().unwrap(), Msg::Hello(_)));
        // Until the primary hangs up.
        let _ = { s }.read_to_end(&mut Vec::new());
    });
    assert!(err.is_deadline(), "{err}");
    assert_names(&err, "deadline of 300ms passed");
}

/// Answers with a valid Welcome, one byte at a time (scaled down from a byte a second).
#[test]
fn a_backup_that_trickles_meets_the_deadline() {
    let err = against_primary(3, Duration::from_millis(300), |c, s, _| {
        assert!(matches!(c.recv().unwrap(), Msg::Hello(_)));
        let body = welcome().encode();
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        let mut s = s;
        for b in frame.iter().cycle() {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert!(err.is_deadline(), "{err}");
    assert_names(&err, "deadline");
}
