//! The fault campaign (issue 14): the real backup agent (`ha-sync serve`) killed with SIGKILL
//! at each named point of a sync (`sync_core::fault`), while the primary sends a random change.
//! After each kill the agent restarts and the primary syncs once more. Checked every trial:
//! - right after the restart, before the next sync: every live file is the old or the new
//!   version, whole (never torn), and no temp file is left in the live tree;
//! - after the next sync: the live tree equals the primary's, and staging's committed
//!   generation is the one restored.
//!
//! `HA_SYNC_FAULT_TRIALS` sets the number of trials (default 200), `HA_SYNC_FAULT_SEED` the
//! seed (printed, so a failing trial can be replayed).

use ha_sync_tests::cluster::{now, Keys};
use ha_sync_tests::{ha_sync_bin, router_root};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use sync_core::fault::POINTS;
use sync_core::node::Node;
use sync_core::staging::Staging;

/// Relative path -> content of every regular file under `dir`.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return out;
    }
    for e in walkdir::WalkDir::new(dir).min_depth(1) {
        let e = e.expect("walk");
        if e.file_type().is_file() {
            let rel = e
                .path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(rel, std::fs::read(e.path()).expect("read"));
        }
    }
    out
}

/// xorshift: reproducible without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random change of the primary's `/etc/app/`: edits (some large), new files, deletions.
fn mutate(app: &Path, rng: &mut Rng, trial: usize) {
    let present: Vec<PathBuf> = files(app).keys().map(|k| app.join(k)).collect();
    // Every fifth trial changes many files: the restore then batches its writes (one flush,
    // then the renames), and the kill points land inside the batch.
    let n = if trial % 5 == 4 { 12 } else { 1 + rng.below(6) };
    for _ in 0..n {
        match rng.below(4) {
            0 | 1 if !present.is_empty() => {
                let p = &present[rng.below(present.len() as u64) as usize];
                let size = if rng.below(5) == 0 { 200_000 } else { 300 };
                let body: Vec<u8> = (0..size)
                    .map(|i| (i as u64 * 31 + trial as u64) as u8)
                    .collect();
                std::fs::write(p, body).unwrap();
            }
            2 => {
                let d = app.join(format!("d{}", rng.below(4)));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(
                    d.join(format!("new{trial}-{}", rng.below(1000))),
                    format!("trial {trial}\n"),
                )
                .unwrap();
            }
            _ if present.len() > 8 => {
                let p = &present[rng.below(present.len() as u64) as usize];
                let _ = std::fs::remove_file(p);
            }
            _ => {}
        }
    }
}

struct Agent {
    child: Child,
}

impl Agent {
    fn start(bin: &Path, root: &Path, keys: &Keys, port: u16, fault: Option<&str>) -> Agent {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--root"])
            .arg(root)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--host-key")
            .arg(&keys.host_key)
            .arg("--authorized-keys")
            .arg(&keys.authorized)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_remove("HA_SYNC_FAULT");
        if let Some(f) = fault {
            cmd.env("HA_SYNC_FAULT", f);
        }
        let child = cmd.spawn().expect("spawn ha-sync serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "ha-sync serve did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Agent { child }
    }

    /// Waits a moment for the agent to die (it killed itself at its fault point), else kills
    /// it; whether it died at its point.
    fn end(mut self) -> bool {
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        false
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The primary's tree: 24 small files in 4 directories under `app`.
fn app_tree(app: &Path) {
    for i in 0..24 {
        let dir = app.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
}

/// `HA_SYNC_FAULT_SEED`, or a fresh seed (printed by each campaign, so it can be replayed).
fn seed() -> u64 {
    std::env::var("HA_SYNC_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| sync_core::clock::now_ns() as u64 | 1)
}

/// `ha-sync now --no-daemon` from `root` to the agent on `port`, quiet, no fault set.
fn now_command(bin: &Path, root: &Path, keys: &Keys, port: u16) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["now", "--no-daemon", "--root"])
        .arg(root)
        .args(["--peer", &format!("127.0.0.1:{port}")])
        .arg("--key")
        .arg(&keys.id)
        .arg("--known-hosts")
        .arg(&keys.known_hosts)
        .env_remove("HA_SYNC_FAULT")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn kill_9_at_every_point_leaves_live_whole_and_the_next_sync_completes_it() {
    let trials: usize = std::env::var("HA_SYNC_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed = seed();
    println!("faults: seed {seed} (HA_SYNC_FAULT_SEED replays it), {trials} trials");
    let bin = ha_sync_bin();
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("primary"), d.path().join("backup"));
    for r in [&a, &b] {
        router_root(r, &["/etc/app/"], &[], &[]);
    }
    let app = a.join("etc/app");
    app_tree(&app);
    let keys = Keys::new(&d.path().join("keys"));
    let port = free_port();
    keys.pin("127.0.0.1", port);
    let client = keys.client(&format!("127.0.0.1:{port}"));
    let live = b.join("etc/app");

    // The first generation, without faults.
    let agent = Agent::start(&bin, &b, &keys, port, None);
    now(&a, client.clone(), None).expect("first sync");
    let mut agent = agent;
    agent.stop();
    assert_eq!(files(&live), files(&app));

    let mut rng = Rng(seed);
    let mut killed = 0;
    let mut per_point: BTreeMap<&str, usize> = BTreeMap::new();
    for trial in 0..trials {
        let old = files(&app);
        mutate(&app, &mut rng, trial);
        let new = files(&app);
        let point = POINTS[trial % POINTS.len()];
        // Per-file points are passed many times a sync, the others once.
        let nth = match point {
            sync_core::fault::STAGING_WRITE | sync_core::fault::RESTORE_FILE => 1 + rng.below(3),
            _ => 1,
        };
        let agent = Agent::start(&bin, &b, &keys, port, Some(&format!("{point}:{nth}")));
        let _ = now(&a, client.clone(), None);
        if agent.end() {
            killed += 1;
            *per_point.entry(point).or_default() += 1;
        }
        let ctx = format!("trial {trial} (seed {seed}), killed at {point}:{nth}");

        // After the kill: each live file whole, old or new. A batched restore killed before
        // its renames leaves temp files (hidden names beside the old versions, never at a
        // listed path): the restart's recovery sweeps them, checked below.
        for (rel, content) in files(&live) {
            let name = rel.rsplit('/').next().unwrap();
            if sync_core::fsx::is_temp_name(name) {
                continue;
            }
            let ok = old.get(&rel) == Some(&content) || new.get(&rel) == Some(&content);
            assert!(
                ok,
                "{ctx}: live {rel} is neither the old nor the new version (torn?)"
            );
        }

        // Restart without a fault, one more sync: live is the primary's tree.
        let mut agent = Agent::start(&bin, &b, &keys, port, None);
        let r = now(&a, client.clone(), None);
        agent.stop();
        assert!(
            r.is_ok(),
            "{ctx}: the sync after the restart failed: {:?}",
            r.err()
        );
        let (got, want) = (files(&live), files(&app));
        for rel in got.keys() {
            let name = rel.rsplit('/').next().unwrap();
            assert!(
                !sync_core::fsx::is_temp_name(name),
                "{ctx}: temp file {rel} in live after the restart and a sync"
            );
        }
        if got != want {
            let differ: Vec<&String> = got
                .keys()
                .chain(want.keys())
                .filter(|k| got.get(*k) != want.get(*k))
                .collect();
            panic!("{ctx}: live differs from the primary at {differ:?}");
        }
        let st = Staging::open(&Node::new(&b).staging_dir()).unwrap();
        assert!(
            st.unrestored().is_none(),
            "{ctx}: committed generation not restored"
        );
    }
    println!("faults: {trials} trials, {killed} kills ({per_point:?}), 0 violations (seed {seed})");
    assert!(
        killed * 2 >= trials,
        "most trials must hit their point: {killed} of {trials}"
    );
}

/// The primary's side: `ha-sync now` killed with SIGKILL after sending a file, while waiting
/// for the backup's commit, and after hearing it (before recording it). The backup's live tree
/// is whole after each kill, and the next sync completes it.
#[test]
fn kill_9_of_the_primary_leaves_the_backup_whole_and_the_next_sync_completes_it() {
    let trials: usize = std::env::var("HA_SYNC_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(60, |t| t.max(3) / 3 * 3);
    let seed = seed();
    let bin = ha_sync_bin();
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("primary"), d.path().join("backup"));
    for r in [&a, &b] {
        router_root(r, &["/etc/app/"], &[], &[]);
    }
    let app = a.join("etc/app");
    app_tree(&app);
    let keys = Keys::new(&d.path().join("keys"));
    let port = free_port();
    keys.pin("127.0.0.1", port);
    let client = keys.client(&format!("127.0.0.1:{port}"));
    let live = b.join("etc/app");
    let mut agent = Agent::start(&bin, &b, &keys, port, None);
    now(&a, client.clone(), None).expect("first sync");

    let mut rng = Rng(seed);
    let mut killed = 0;
    for trial in 0..trials {
        let old = files(&app);
        mutate(&app, &mut rng, trial);
        let new = files(&app);
        let point = sync_core::fault::PRIMARY_POINTS[trial % 3];
        let nth = if point == sync_core::fault::PRIMARY_FILE_SENT {
            1 + rng.below(2)
        } else {
            1
        };
        let status = now_command(&bin, &a, &keys, port)
            .env("HA_SYNC_FAULT", format!("{point}:{nth}"))
            .status()
            .expect("run ha-sync now");
        use std::os::unix::process::ExitStatusExt;
        if status.signal() == Some(libc::SIGKILL) {
            killed += 1;
        }
        let ctx = format!("primary trial {trial} (seed {seed}), killed at {point}:{nth}");
        // The backup sees the connection drop at once; what it had committed is restored.
        std::thread::sleep(Duration::from_millis(200));
        for (rel, content) in files(&live) {
            let name = rel.rsplit('/').next().unwrap();
            assert!(
                !sync_core::fsx::is_temp_name(name),
                "{ctx}: temp file {rel} in live"
            );
            let ok = old.get(&rel) == Some(&content) || new.get(&rel) == Some(&content);
            assert!(
                ok,
                "{ctx}: live {rel} is neither the old nor the new version (torn?)"
            );
        }
        // The backup may still be finishing the session the primary left: wait for its slot.
        let deadline = Instant::now() + Duration::from_secs(30);
        let r = loop {
            match now(&a, client.clone(), None) {
                Err(e) if e.to_string().contains("busy") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r,
            }
        };
        assert!(r.is_ok(), "{ctx}: the next sync failed: {:?}", r.err());
        assert_eq!(files(&live), new, "{ctx}: live differs from the primary");
    }
    agent.stop();
    println!("faults: primary: {trials} trials, {killed} kills, 0 violations (seed {seed})");
    assert!(
        killed * 2 >= trials,
        "most trials must hit their point: {killed} of {trials}"
    );
}

/// The agent under load (issue 14): 50 connections that never log in leave it up, its memory
/// bounded, and serving the primary.
#[test]
fn fifty_idle_connections_leave_the_agent_up_with_bounded_memory() {
    let bin = ha_sync_bin();
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("primary"), d.path().join("backup"));
    for r in [&a, &b] {
        router_root(r, &["/etc/app/"], &[], &[]);
    }
    std::fs::create_dir_all(a.join("etc/app")).unwrap();
    std::fs::write(a.join("etc/app/conf"), "x\n").unwrap();
    let keys = Keys::new(&d.path().join("keys"));
    let port = free_port();
    keys.pin("127.0.0.1", port);
    let client = keys.client(&format!("127.0.0.1:{port}"));
    let mut agent = Agent::start(&bin, &b, &keys, port, None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // From 13 loopback addresses, as a flood from several hosts would come.
    let idle: Vec<tokio::net::TcpStream> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..50u8 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(std::net::SocketAddr::from(([127, 0, 0, 2 + i % 13], 0)))
                .unwrap();
            if let Ok(c) = s
                .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                .await
            {
                v.push(c);
            }
        }
        v
    });
    assert!(idle.len() >= 40, "{} connected", idle.len());
    now(&a, client, None).expect("the primary syncs past 50 idle connections");
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        rss_kb < 64 * 1024,
        "agent RSS {rss_kb} kB with 50 idle connections"
    );
    assert_eq!(
        std::fs::read_to_string(b.join("etc/app/conf")).unwrap(),
        "x\n"
    );
    println!("faults: 50 idle connections: agent RSS {rss_kb} kB, the primary synced");
    drop(idle);
    agent.stop();
}

/// Failback's pull (issue 11): the backup was master and its admin changed `/etc/app/`; the
/// returning primary pulls. Either node is killed with SIGKILL at each pull point: the backup
/// after computing its offer or after recording the primary took it, the primary after a
/// live file of the offer or after applying all of it. After each kill both live trees are
/// whole, each file old or new (the backup's own is untouched: a pull only reads it), and the
/// next sync brings the primary every change and leaves both nodes equal.
#[test]
fn kill_9_of_either_node_during_a_pull_leaves_both_live_trees_whole() {
    use restore_hooks::{run_hook, Ctx, Event};
    use sync_core::fault::{PULL_FILE, PULL_OFFERED, PULL_POINTS, PULL_TAKEN};
    use sync_core::node::VrrpState;
    use sync_core::runner::RecordingRunner;
    let trials: usize = std::env::var("HA_SYNC_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(40, |t| (t / 5).max(4));
    let seed = seed();
    let bin = ha_sync_bin();
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("primary"), d.path().join("backup"));
    for (r, role) in [(&a, "primary"), (&b, "backup")] {
        std::fs::create_dir_all(r.join("etc/config")).unwrap();
        std::fs::write(
            r.join("etc/config/keepalived"),
            format!(
                "config {role} '{role}'\n\nconfig peer 'ha_peer'\n\tlist sync_list '/etc/app/'\n"
            ),
        )
        .unwrap();
        std::fs::write(r.join("etc/sysupgrade.conf"), "").unwrap();
    }
    Node::new(&a).set_vrrp_state(VrrpState::Master).unwrap();
    Node::new(&b).set_vrrp_state(VrrpState::Backup).unwrap();
    let app = a.join("etc/app");
    app_tree(&app);
    let keys = Keys::new(&d.path().join("keys"));
    let port = free_port();
    keys.pin("127.0.0.1", port);
    let client = keys.client(&format!("127.0.0.1:{port}"));
    let live = b.join("etc/app");
    let mut agent = Agent::start(&bin, &b, &keys, port, None);
    now(&a, client.clone(), None).expect("first sync");
    agent.stop();
    assert_eq!(files(&live), files(&app));
    let staging = Node::new(&b).staging_dir();
    let runner = RecordingRunner::new();
    let hook = |e: Event| {
        let ctx = Ctx {
            root: &b,
            staging: &staging,
            runner: &runner,
        };
        run_hook(&ctx, e).expect("hook");
    };

    let mut rng = Rng(seed);
    let mut killed = 0;
    for trial in 0..trials {
        // The backup takes over; its admin works; it steps down (its restore waits).
        hook(Event::NotifyMaster);
        let old = files(&app);
        mutate(&live, &mut rng, trial);
        let edited = files(&live);
        hook(Event::NotifyBackup);
        assert_eq!(
            files(&live),
            edited,
            "trial {trial}: NOTIFY_BACKUP wrote over the backup's changes"
        );

        let point = PULL_POINTS[trial % PULL_POINTS.len()];
        let nth = if point == PULL_FILE {
            1 + rng.below(3)
        } else {
            1
        };
        let fault = format!("{point}:{nth}");
        let on_backup = point == PULL_OFFERED || point == PULL_TAKEN;
        let agent = Agent::start(&bin, &b, &keys, port, on_backup.then_some(fault.as_str()));
        let mut cmd = now_command(&bin, &a, &keys, port);
        if !on_backup {
            cmd.env("HA_SYNC_FAULT", &fault);
        }
        let status = cmd.status().expect("run ha-sync now");
        use std::os::unix::process::ExitStatusExt;
        let backup_died = agent.end();
        if (on_backup && backup_died) || status.signal() == Some(libc::SIGKILL) {
            killed += 1;
        }
        let ctx = format!("pull trial {trial} (seed {seed}), killed at {fault}");
        for (rel, content) in files(&app) {
            let name = rel.rsplit('/').next().unwrap();
            assert!(
                !sync_core::fsx::is_temp_name(name),
                "{ctx}: temp file {rel} on the primary"
            );
            assert!(
                old.get(&rel) == Some(&content) || edited.get(&rel) == Some(&content),
                "{ctx}: the primary's {rel} is neither its old version nor the backup's"
            );
        }
        assert_eq!(files(&live), edited, "{ctx}: the backup's live tree moved");

        // Restarted, one more sync: every change of the backup on both nodes.
        let mut agent = Agent::start(&bin, &b, &keys, port, None);
        let r = now(&a, client.clone(), None);
        agent.stop();
        assert!(
            r.is_ok(),
            "{ctx}: the sync after the restart failed: {:?}",
            r.err()
        );
        assert_eq!(
            files(&app),
            edited,
            "{ctx}: the primary lacks the backup's changes"
        );
        assert_eq!(files(&live), edited, "{ctx}: the backup differs");
        assert!(
            restore_hooks::authority::authority(&Node::new(&b)).is_none(),
            "{ctx}: the backup still holds its authority mark"
        );
    }
    println!("faults: pull: {trials} trials, {killed} kills, 0 violations (seed {seed})");
    assert!(
        killed * 2 >= trials,
        "most trials must hit their point: {killed} of {trials}"
    );
}
