//! Sync over real SSH: loopback always, two network namespaces when they can be made.

use ha_sync_tests::cluster::{self, Keys, NetnsPair};
use ha_sync_tests::{assert_same_tree, snapshot};
use std::io::{Read, Write};
use std::path::Path;
use sync_core::node::Node;
use sync_core::sample;
use sync_core::wire::{Conn, Hello, Msg, MAGIC, PROTOCOL_VERSION};

fn primary(dir: &Path) {
    sample::write_router_config(dir, "fw1").unwrap();
    sample::generate(dir, 1).unwrap();
}

fn check_staged(a: &Path, b: &Path) {
    for d in [
        "etc/config/cfg3",
        "etc/ssl",
        "etc/misc",
        "etc/banip",
        "etc/db",
        "etc/links",
    ] {
        let (x, y) = (a.join(d), Node::new(b).staging_dir().join(d));
        if x.is_dir() {
            assert_same_tree(&x, &y);
        } else {
            assert_eq!(
                std::fs::read(&x).unwrap(),
                std::fs::read(&y).unwrap(),
                "{d}"
            );
        }
    }
    let openvpn = a.join("etc/openvpn");
    assert_same_tree(&openvpn, &Node::new(b).staging_dir().join("etc/openvpn"));
}

/// All scenarios of the benchmark, each a new connection, trees compared after each.
fn scenarios(a: &Path, b: &Path, keys: &Keys, peer: &str, ns: Option<&str>) {
    let (_, full) = cluster::now(a, keys.client(peer), ns).expect("full sync");
    assert!(full.commit.is_some() && full.files_sent > 1900);
    check_staged(a, b);
    let (_, nochange) = cluster::now(a, keys.client(peer), ns).expect("nochange");
    assert!(nochange.up_to_date);
    assert_eq!(nochange.traffic.round_trips, 1);
    for m in ["edit", "bigedit", "delete", "add", "touch"] {
        sample::mutate(a, m).unwrap();
        let (_, r) = cluster::now(a, keys.client(peer), ns).unwrap_or_else(|e| panic!("{m}: {e}"));
        assert_eq!(r.commit.as_ref().map(|c| c.root), Some(r.root), "{m}");
        assert!(
            r.traffic.round_trips <= 3,
            "{m}: {} round trips",
            r.traffic.round_trips
        );
        check_staged(a, b);
    }
    assert!(!Node::new(b).staging_dir().join("etc/openvpn/ccd").exists());
}

#[test]
fn every_scenario_over_ssh_on_loopback() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    primary(&a);
    let keys = Keys::new(&t.path().join("keys"));
    let addr = cluster::spawn_backup(&b, &keys, "127.0.0.1:0", None);
    keys.pin("127.0.0.1", addr.port());
    scenarios(&a, &b, &keys, &addr.to_string(), None);
}

#[test]
fn every_scenario_between_two_network_namespaces() {
    let pair = match NetnsPair::create("s", 7) {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED every_scenario_between_two_network_namespaces: cannot create network namespaces: {why}");
            return;
        }
    };
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    primary(&a);
    let keys = Keys::new(&t.path().join("keys"));
    let addr = cluster::spawn_backup(&b, &keys, &format!("{}:65022", pair.addr_b), Some(&pair.b));
    keys.pin(&pair.addr_b, addr.port());
    scenarios(&a, &b, &keys, &addr.to_string(), Some(&pair.a));
}

#[test]
fn an_unknown_client_key_and_a_changed_host_key_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    ha_sync_tests::router_root(&a, &["/etc/ha"], &[], &[]);
    std::fs::create_dir_all(a.join("etc/ha")).unwrap();
    let keys = Keys::new(&t.path().join("keys"));
    let addr = cluster::spawn_backup(&b, &keys, "127.0.0.1:0", None);
    keys.pin("127.0.0.1", addr.port());

    let stranger = Keys::new(&t.path().join("stranger"));
    let mut c = keys.client(&addr.to_string());
    c.key = stranger.id.clone();
    let err = cluster::now(&a, c, None).unwrap_err().to_string();
    assert!(err.to_lowercase().contains("auth"), "{err}");

    // A pinned key that is not the server's: refused, with how to re-pin.
    stranger.pin("127.0.0.1", addr.port());
    let mut c = keys.client(&addr.to_string());
    c.known_hosts = stranger.known_hosts.clone();
    let err = cluster::now(&a, c, None).unwrap_err().to_string();
    assert!(
        err.contains("HOST KEY CHANGED") && err.contains("ha-sync pin"),
        "{err}"
    );
    assert!(
        !Node::new(&b)
            .staging_dir()
            .join("tmp/restore_list")
            .exists(),
        "nothing may have been synced"
    );
}

/// Runs raw protocol bytes through the real subsystem.
fn raw_session(
    keys: &Keys,
    peer: &str,
    f: impl FnOnce(&mut dyn sync_agent::transport::ReadWrite) + Send + 'static,
) -> Result<(), String> {
    let cfg = keys.client(peer);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(sync_agent::transport::run(&cfg, move |s| f(s)))
        .map_err(|e| e.to_string())
}

#[test]
fn a_hostile_client_gets_errors_and_the_agent_serves_the_next_honest_one() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    ha_sync_tests::router_root(&a, &["/etc/ha"], &[], &[]);
    std::fs::create_dir_all(a.join("etc/ha")).unwrap();
    std::fs::write(a.join("etc/ha/x"), b"honest").unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let keys = Keys::new(&t.path().join("keys"));
    let addr = cluster::spawn_backup(&b, &keys, "127.0.0.1:0", None);
    keys.pin("127.0.0.1", addr.port());
    let peer = addr.to_string();

    // Garbage instead of a Hello.
    let err = raw_session(&keys, &peer, |s| {
        s.write_all(&7u32.to_le_bytes()).unwrap();
        s.write_all(b"garbage").unwrap();
        s.flush().unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    })
    .unwrap_err();
    assert!(err.contains("malformed") || err.contains("magic"), "{err}");

    // A frame over the limit.
    let err = raw_session(&keys, &peer, |s| {
        s.write_all(&(64u32 << 20).to_le_bytes()).unwrap();
        s.flush().unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    })
    .unwrap_err();
    assert!(err.contains("over the limit"), "{err}");

    // Manifests naming ../x, /etc/x and a path through a staged symlink.
    for bad in ["../x", "/etc/x", "etc/l/x"] {
        let bad = bad.to_string();
        let target = outside.to_string_lossy().into_owned();
        let err = raw_session(&keys, &peer, move |s| {
            let mut c = Conn::new(s);
            use sync_core::testing::{RawEntry, RawItem, RawKind, RawManifest};
            let m = RawManifest {
                list: vec![
                    RawItem {
                        path: "etc".into(),
                        dir: true,
                    },
                    RawItem {
                        path: bad.clone(),
                        dir: false,
                    },
                ],
                excludes: vec![],
                entries: vec![
                    RawEntry::new("etc", RawKind::Dir),
                    RawEntry::new("etc/l", RawKind::Symlink { target }),
                    RawEntry::new(&bad, RawKind::Dir),
                ],
            };
            let body = m.encode();
            let root = sync_core::manifest::Hash::of(&body);
            c.send(&Msg::Hello(Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                root,
                acked: None,
                node: "evil".into(),
            }))
            .unwrap();
            c.flush().unwrap();
            let _ = c.recv();
            let z = zstd::bulk::compress(&body, 3).unwrap();
            c.send(&Msg::Manifest {
                form: sync_core::wire::ManifestForm::Full,
                len: z.len() as u64,
            })
            .unwrap();
            c.send_chunks(&z).unwrap();
            c.send(&Msg::EndOfPush).unwrap();
            c.flush().unwrap();
            while c.recv().is_ok() {}
        })
        .unwrap_err();
        assert!(err.contains("manifest"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    // The honest primary still gets through.
    let (_, r) =
        cluster::now(&a, keys.client(&peer), None).expect("honest sync after hostile ones");
    assert!(r.commit.is_some());
    assert_eq!(
        std::fs::read(Node::new(&b).staging_dir().join("etc/ha/x")).unwrap(),
        b"honest"
    );
}

/// A stream that dies after `budget` written bytes, like a client killed mid-transfer.
struct Cut<'a> {
    inner: &'a mut dyn sync_agent::transport::ReadWrite,
    budget: usize,
}

impl Read for Cut<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for Cut<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.budget == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "cut",
            ));
        }
        let n = buf.len().min(self.budget);
        self.budget -= n;
        self.inner.write(&buf[..n])
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn a_connection_cut_mid_transfer_leaves_whole_files_and_the_old_commit_then_converges() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    ha_sync_tests::router_root(&a, &["/etc/ha"], &[], &[]);
    std::fs::create_dir_all(a.join("etc/ha")).unwrap();
    // Incompressible content, so every budget below cuts the transfer somewhere.
    let version = |v: u64| -> Vec<(String, Vec<u8>)> {
        (0..40u64)
            .map(|i| {
                (
                    format!("f{i}"),
                    sample::Rng::new(v * 1000 + i).bytes(20_000 + i as usize * 500),
                )
            })
            .collect()
    };
    for (n, c) in version(1) {
        std::fs::write(a.join("etc/ha").join(n), c).unwrap();
    }
    let keys = Keys::new(&t.path().join("keys"));
    let addr = cluster::spawn_backup(&b, &keys, "127.0.0.1:0", None);
    keys.pin("127.0.0.1", addr.port());
    let peer = addr.to_string();
    cluster::now(&a, keys.client(&peer), None).expect("first sync");
    let old_manifest =
        std::fs::read(Node::new(&b).staging_dir().join(".ha-sync/manifest")).unwrap();
    let (v1, v2): (Vec<_>, Vec<_>) = (version(1), version(2));

    for budget in [200, 5_000, 40_000, 120_000, 400_000] {
        for (n, c) in &v2 {
            std::fs::write(a.join("etc/ha").join(n), c).unwrap();
        }
        let root = a.clone();
        let state = a.join(sync_core::node::STATE_DIR);
        let prepared = sync_core::prepare::prepare_saved(
            &Node::new(&root),
            &sync_core::runner::RecordingRunner::new(),
        )
        .unwrap();
        let m = prepared.manifest.clone();
        let cut_short = raw_session(&keys, &peer, move |s| {
            let st = sync_core::session::PrimaryState::new(&state);
            let mut cut = Cut { inner: s, budget };
            let r = sync_core::session::Primary {
                root: &root,
                manifest: &m,
                state: &st,
                node: "p",
                progress: &mut |_, _| {},
            }
            .run(&mut cut);
            assert!(r.is_err(), "budget {budget} should cut the sync short");
        });
        assert!(
            cut_short.is_ok() || cut_short.as_ref().is_err_and(|e| !e.contains("should cut")),
            "{cut_short:?}"
        );
        // Each staged file is whole: the old or the new version; the commit point is old.
        for ((n, c1), (_, c2)) in v1.iter().zip(&v2) {
            let got = std::fs::read(Node::new(&b).staging_dir().join("etc/ha").join(n)).unwrap();
            assert!(
                got == *c1 || got == *c2,
                "budget {budget}: {n} is neither version"
            );
        }
        let now = std::fs::read(Node::new(&b).staging_dir().join(".ha-sync/manifest")).unwrap();
        assert!(
            now == old_manifest,
            "budget {budget}: the commit point moved"
        );
        for (n, c) in &v1 {
            std::fs::write(a.join("etc/ha").join(n), c).unwrap();
        }
    }
    // The next clean sync converges.
    for (n, c) in &v2 {
        std::fs::write(a.join("etc/ha").join(n), c).unwrap();
    }
    let (_, r) = cluster::now(&a, keys.client(&peer), None).expect("clean sync");
    assert_eq!(r.commit.map(|c| c.root), Some(r.root));
    assert_same_tree(
        &a.join("etc/ha"),
        &Node::new(&b).staging_dir().join("etc/ha"),
    );
    assert!(snapshot(&Node::new(&b).staging_dir().join("etc/ha")).len() == 41);
}

#[test]
fn concurrent_now_runs_on_the_primary_are_serialized_not_refused_as_busy() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    ha_sync_tests::router_root(&a, &["/etc/ha"], &[], &[]);
    std::fs::create_dir_all(a.join("etc/ha")).unwrap();
    for i in 0..30 {
        std::fs::write(
            a.join(format!("etc/ha/f{i}")),
            sample::Rng::new(i).bytes(50_000),
        )
        .unwrap();
    }
    let keys = Keys::new(&t.path().join("keys"));
    let addr = cluster::spawn_backup(&b, &keys, "127.0.0.1:0", None);
    keys.pin("127.0.0.1", addr.port());
    let peer = addr.to_string();
    // Without the primary's lock the second session would meet the agent's "busy" refusal.
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let (a, c) = (a.clone(), keys.client(&peer));
            std::thread::spawn(move || cluster::now(&a, c, None).map(|(_, r)| r))
        })
        .collect();
    for r in runs {
        let rep = r.join().unwrap().expect("every concurrent run succeeds");
        assert!(rep.up_to_date || rep.commit.is_some());
    }
    assert_same_tree(
        &a.join("etc/ha"),
        &Node::new(&b).staging_dir().join("etc/ha"),
    );
}
