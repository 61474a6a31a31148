//! kill -9 of a restore at random points, then the next start: live holds one whole
//! generation. Alone in its test binary: it forks, and a forked child must not share the
//! process with other tests' threads.

mod common;

use common::*;
use restore_hooks::{recover, restore_after_commit, run_hook, Ctx, Event};
use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};
use sync_core::manifest::{Kind, Manifest};
use sync_core::runner::{Cmd, CmdOutput, RecordingRunner, Runner};

const ITERATIONS: usize = 50;
const BIG_FILES: usize = 200;

/// Each command takes a little while, as init scripts do: the kill lands in the NOTIFY_SYNC
/// phase too.
struct SlowRunner;

impl Runner for SlowRunner {
    fn run(&self, _: &Cmd) -> io::Result<CmdOutput> {
        std::thread::sleep(Duration::from_millis(3));
        Ok(CmdOutput::ok(Vec::new()))
    }

    fn exists(&self, _: &str) -> bool {
        false
    }
}

/// Small deterministic PRNG (the seed is printed, so a failure can be replayed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn big(root: &Path, gen: u32) {
    for i in 0..BIG_FILES {
        // Generation 2 changes two thirds, deletes a sixth and adds new files.
        let keep = i % 3 == 0;
        if gen == 2 && i % 6 == 5 {
            continue;
        }
        let g = if keep { 1 } else { gen };
        write(
            root,
            &format!("etc/big/d{}/f{i}", i % 10),
            &format!("gen {g} file {i} {}\n", "x".repeat(2000)),
        );
        age(
            root,
            &format!("etc/big/d{}/f{i}", i % 10),
            1_600_000_000 + i as i64 * (g as i64),
        );
    }
    if gen == 2 {
        for i in 0..30 {
            write(root, &format!("etc/big/new/n{i}"), &format!("new {i}\n"));
        }
    }
}

fn primaries(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (dir.join("p1"), dir.join("p2"));
    primary_root(&a);
    primary_root(&b);
    for r in [&a, &b] {
        let k = read(r, "etc/config/keepalived").replace(
            "list sync_list '/etc/ha'",
            "list sync_list '/etc/ha'\n\tlist sync_list '/etc/big'",
        );
        write(r, "etc/config/keepalived", &k);
    }
    big(&a, 1);
    big(&b, 2);
    write(
        &b,
        "etc/config/firewall",
        "\nconfig defaults\n\toption input 'DROP'\n",
    );
    write(
        &b,
        "etc/ha/wan_interfaces",
        r#"{"wan": {"device": "eth1", "proto": "static", "ipaddr": "198.51.100.7/24"}}"#,
    );
    std::fs::remove_file(b.join("etc/backup.pass")).unwrap();
    std::fs::remove_file(b.join("etc/openvpn/ccd/client1")).unwrap();
    std::os::unix::fs::symlink("ccd", b.join("etc/openvpn/ccd-link")).unwrap();
    (a, b)
}

/// Whether live under `root` is exactly generation `m` (as far as a restore decides it).
fn is_generation(root: &Path, m: &Manifest) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for e in &m.entries {
        let rel = e.path.as_str();
        if restore_hooks::identity::is_per_node(&e.path) {
            continue;
        }
        let full = root.join(rel);
        let md = full
            .symlink_metadata()
            .map_err(|err| format!("{rel}: {err}"))?;
        let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
        match &e.kind {
            Kind::Dir if md.is_dir() => {}
            Kind::Symlink { target } if md.file_type().is_symlink() => {
                if std::fs::read_link(&full).unwrap().to_str() != Some(target) {
                    return Err(format!("{rel}: other target"));
                }
            }
            Kind::File { hash, .. } if md.is_file() => {
                let bytes = std::fs::read(&full).unwrap();
                let transformed = rel == "etc/config/system" || rel == "etc/crontabs/root";
                if !transformed && sync_core::manifest::Hash::of(&bytes) != *hash {
                    return Err(format!("{rel}: other content"));
                }
            }
            _ => return Err(format!("{rel}: other kind")),
        }
        if mtime != e.mtime_ns || (!md.file_type().is_symlink() && md.mode() & 0o7777 != e.mode) {
            return Err(format!("{rel}: other metadata"));
        }
    }
    // Mirrored directories hold nothing else (but excluded files and our temp files, none).
    for item in m.list.iter().filter(|i| i.dir) {
        for ent in walkdir::WalkDir::new(root.join(item.path.as_str())) {
            let ent = ent.unwrap();
            let rel = ent.path().strip_prefix(root).unwrap().to_str().unwrap();
            let p = sync_core::path::RelPath::new(rel).unwrap();
            if m.get(&p).is_none() && !rel.ends_with(".local") {
                return Err(format!("{rel}: not in the generation"));
            }
        }
    }
    // The single file the generation no longer lists.
    let listed: BTreeSet<&str> = m.entries.iter().map(|e| e.path.as_str()).collect();
    if !listed.contains("etc/backup.pass") && root.join("etc/backup.pass").exists() {
        return Err("etc/backup.pass: deleted on the primary, still live".into());
    }
    if !read(root, "etc/config/system").contains("'fw-backup'") {
        return Err("hostname lost".into());
    }
    Ok(())
}

#[test]
fn a_restore_killed_at_any_point_is_completed_at_the_next_start() {
    // On tmpfs when there is one: a killed process loses nothing the page cache holds, so
    // fsync plays no part here (power loss is another matter), and it would make 50 rounds
    // of three syncs and restores crawl on a busy disk.
    let shm = Path::new("/dev/shm");
    let tmp = match shm.is_dir() {
        true => tempfile::tempdir_in(shm).unwrap_or_else(|_| tempfile::tempdir().unwrap()),
        false => tempfile::tempdir().unwrap(),
    };
    let (p1, p2) = primaries(tmp.path());

    // Calibrate: how long one whole restore of generation 2 over generation 1 takes.
    let setup = |name: &str| {
        let b = tmp.path().join(name);
        backup_root(&b);
        let (m1, c1) = sync_into(&p1, &b);
        let staging = sync_core::node::Node::new(&b).staging_dir();
        let rep = restore_after_commit(
            &Ctx {
                root: &b,
                staging: &staging,
                runner: &RecordingRunner::new(),
            },
            &m1,
            &c1,
        );
        assert!(rep.applied, "{rep:?}");
        let (m2, c2) = sync_into(&p2, &b);
        (b, staging, m1, m2, c2)
    };
    let (b, staging, _, m2, c2) = setup("calibrate");
    let t = Instant::now();
    let rep = restore_after_commit(
        &Ctx {
            root: &b,
            staging: &staging,
            runner: &SlowRunner,
        },
        &m2,
        &c2,
    );
    let full = t.elapsed();
    assert!(rep.applied && rep.changed.len() > 150, "{rep:?}");
    is_generation(&b, &m2).unwrap();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}, one restore takes {full:?}");
    let mut rng = Rng(seed);
    let (mut completed_by_recover, mut untouched, mut finished) = (0, 0, 0);
    for i in 0..ITERATIONS {
        let (b, staging, m1, m2, c2) = setup(&format!("b{i}"));
        let delay = Duration::from_micros(rng.next() % (full.as_micros() as u64 * 5 / 4 + 1));
        // SAFETY: the child only runs the restore and leaves with _exit, never returning
        // into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let ok = std::panic::catch_unwind(|| {
                restore_after_commit(
                    &Ctx {
                        root: &b,
                        staging: &staging,
                        runner: &SlowRunner,
                    },
                    &m2,
                    &c2,
                );
            })
            .is_ok();
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        std::thread::sleep(delay);
        let mut status = 0;
        // SAFETY: pid is our child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }

        // The next start of the agent.
        let r = RecordingRunner::new();
        let ctx = Ctx {
            root: &b,
            staging: &staging,
            runner: &r,
        };
        let journal = staging.join(".ha-sync/restore-journal");
        let had_journal = journal.exists();
        let rec = recover(&ctx).unwrap();
        assert_eq!(rec.is_some(), had_journal, "iteration {i}, seed {seed}");
        assert!(
            !journal.exists(),
            "iteration {i}: journal left after recover"
        );
        match rec {
            Some(rep) => {
                completed_by_recover += 1;
                assert!(
                    rep.applied && rep.errors.is_empty(),
                    "iteration {i}, seed {seed}: {rep:?}"
                );
                is_generation(&b, &m2)
                    .unwrap_or_else(|e| panic!("iteration {i}, seed {seed}: {e}"));
                // The crash never swallows NOTIFY_SYNC: the changed paths are notified.
                assert!(!rep.changed.is_empty());
                let hotplug = r
                    .lines()
                    .into_iter()
                    .filter(|l| l.ends_with("/sbin/hotplug-call keepalived"))
                    .count();
                assert_eq!(hotplug, 1, "iteration {i}: {:?}", r.lines());
            }
            None => match is_generation(&b, &m2) {
                Ok(()) => finished += 1,
                Err(_) => {
                    // Killed before its first write: live is still the old generation, whole.
                    is_generation(&b, &m1).unwrap_or_else(|e| {
                        panic!("iteration {i}, seed {seed}: neither generation: {e}")
                    });
                    untouched += 1;
                }
            },
        }
        // And a NOTIFY_SYNC at that point converges on the committed generation.
        let out = run_hook(&ctx, Event::NotifySync).unwrap();
        assert!(out.restore.unwrap().applied);
        is_generation(&b, &m2).unwrap_or_else(|e| panic!("iteration {i}, seed {seed}: {e}"));
        std::fs::remove_dir_all(&b).unwrap();
    }
    eprintln!("completed by recover: {completed_by_recover}, killed before writing: {untouched}, finished before the kill: {finished}");
    assert!(
        completed_by_recover >= ITERATIONS / 4,
        "too few kills landed mid-restore: {completed_by_recover}"
    );
}
