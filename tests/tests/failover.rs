//! Real VRRP failover between two network namespaces: real keepalived (Debian's) on each
//! side, configured from the UCI the cluster actions write and the keepalived.conf this crate
//! renders; a real agent on the backup and real syncs from the primary.
//!
//! The notify lines run a small script that records each event with its time; the test then
//! hands the events, in order, to the hooks code (`restore_hooks::run_hook`, with a recording
//! runner so nothing on this host is touched), as `ha-sync hook` would.
//!
//! Measured times are printed, not asserted (the issue's bounds, 2 s after SIGTERM and 5 s
//! after SIGKILL, are compared in the output; waits are bounded at 15 s so a slow CI machine
//! does not fail the test). Skips only when namespaces cannot be created.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ha_sync_tests::cluster::{self, enter_netns, Keys};
use sync_agent::agent::BackupHandler;
use sync_agent::cluster::keepalived::{self, Notify, RenderOptions};
use sync_agent::cluster::{actions, Ctx, RemoteAction};
use sync_agent::transport::{self, ServerConfig};
use sync_core::local;
use sync_core::runner::RecordingRunner;
use sync_core::session::SyncReport;

const KEEPALIVED: &str = "/usr/sbin/keepalived";
const WAIT: Duration = Duration::from_secs(15);
const DEV: &str = "ha0";

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces joined by a veth pair named `ha0` on both sides (the nodes have the same
/// devices, as the spec requires); deleted on drop, keepalived processes killed first.
struct Pair {
    p: String,
    b: String,
    net: u8,
    procs: Vec<(Child, PathBuf)>,
}

impl Pair {
    fn create() -> Result<Pair, String> {
        let pid = std::process::id() % 100_000;
        let net = 100 + (pid % 100) as u8;
        let (p, b) = (format!("hsfo-p{pid}"), format!("hsfo-b{pid}"));
        ip(&["netns", "add", &p])?;
        let mut pair = Pair {
            p: p.clone(),
            b: String::new(),
            net,
            procs: Vec::new(),
        };
        ip(&["netns", "add", &b])?;
        pair.b = b.clone();
        ip(&[
            "-n", &p, "link", "add", DEV, "type", "veth", "peer", "name", DEV, "netns", &b,
        ])?;
        for (ns, host) in [(&p, 1), (&b, 2)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("198.18.{net}.{host}/24"),
                "dev",
                DEV,
            ])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", DEV, "up"])?;
        }
        // operstate goes UP up to ~1 s after `link set up`; keepalived started before that
        // reports a spurious FAULT first.
        for ns in [&p, &b] {
            wait_for(WAIT, || {
                ip(&["-n", ns, "-br", "link", "show", DEV]).is_ok_and(|o| o.contains(" UP "))
            })
            .ok_or_else(|| format!("{DEV} in {ns} never came up"))?;
        }
        Ok(pair)
    }

    fn addr(&self, host: u8) -> String {
        format!("198.18.{}.{host}", self.net)
    }

    fn vip(&self) -> String {
        format!("198.18.{}.100", self.net)
    }

    fn has_vip(&self, ns: &str) -> bool {
        ip(&["-n", ns, "-br", "addr", "show", DEV])
            .is_ok_and(|o| o.contains(&format!(" {}/", self.vip())))
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for (mut c, vrrp_pid) in self.procs.drain(..) {
            if let Some(pid) = read_pid(&vrrp_pid) {
                signal(pid, libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.p, &self.b] {
            if !ns.is_empty() {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid this test started.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn alive(pid: i32) -> bool {
    // A zombie still answers kill(pid, 0); /proc/<pid>/stat says Z.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
}

/// Polls `cond` every 50 ms; the elapsed time when it held, `None` after `limit`.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if cond() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// One node: its root, its keepalived.conf and event log.
struct Node {
    root: PathBuf,
    ns: String,
    conf: PathBuf,
    events: PathBuf,
    pid: PathBuf,
    vrrp_pid: PathBuf,
    out: PathBuf,
    /// Events already handed to the hooks.
    seen: usize,
}

impl Node {
    fn events(&self) -> Vec<String> {
        fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// What `ha-sync hook EVENT` does for each new event, in order (recording runner).
    fn run_hooks(&mut self) -> Vec<String> {
        let all = self.events();
        let new: Vec<String> = all[self.seen.min(all.len())..].to_vec();
        self.seen = all.len();
        let staging = local::staging_dir(&self.root);
        let runner = RecordingRunner::new();
        let ctx = restore_hooks::Ctx {
            root: &self.root,
            staging: &staging,
            runner: &runner,
        };
        for e in &new {
            let event: restore_hooks::Event = e.parse().expect("event name");
            restore_hooks::run_hook(&ctx, event).expect("hook");
        }
        new
    }
}

fn start_keepalived(pair: &mut Pair, n: &Node) {
    // Pitfall: a killed instance's VRRP child lingers as a zombie for ~1 s, and a new
    // keepalived seeing its pid file alive says "already running" and exits 0.
    for f in [&n.pid, &n.vrrp_pid] {
        if let Some(pid) = read_pid(f) {
            wait_for(WAIT, || !alive(pid));
        }
        let _ = fs::remove_file(f);
    }
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&n.out)
        .expect("log");
    let child = Command::new("ip")
        .args(["netns", "exec", &n.ns, KEEPALIVED, "-n", "-l", "-D", "-f"])
        .arg(&n.conf)
        .arg("-p")
        .arg(&n.pid)
        .arg("-r")
        .arg(&n.vrrp_pid)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        // its own process group: no terminal signal (SIGHUP means reload to keepalived)
        .process_group(0)
        .spawn()
        .expect("start keepalived");
    pair.procs.push((child, n.vrrp_pid.clone()));
}

/// Stops the node's keepalived (parent, and with SIGKILL its VRRP child too); returns when
/// the signal was sent.
/// Both nodes' hook events and keepalived output, for failure messages.
fn logs(p: &Node, b: &Node) -> String {
    format!(
        "primary events {:?}, backup events {:?}\nprimary log:\n{}\nbackup log:\n{}",
        p.events(),
        b.events(),
        fs::read_to_string(&p.out).unwrap_or_default(),
        fs::read_to_string(&b.out).unwrap_or_default()
    )
}

/// Stops the primary's keepalived with `sig` and waits for the backup to hold the VIP and
/// record NOTIFY_MASTER. The time is printed against the issue's `bound`, not asserted.
fn take_over(pair: &mut Pair, p: &Node, b: &Node, sig: i32, bound: Duration) {
    let at = stop_keepalived(pair, p, sig);
    let moved = wait_for(WAIT, || pair.has_vip(&pair.b));
    assert!(
        moved.is_some(),
        "VIP never moved to the backup (signal {sig})\n{}",
        logs(p, b)
    );
    let t = at.elapsed();
    let met = if t <= bound { "met" } else { "NOT met" };
    println!("signal {sig}: VIP on the backup after {t:?} (issue: within {bound:?}: {met})");
    wait_for(WAIT, || {
        b.events().last().map(String::as_str) == Some("NOTIFY_MASTER")
    });
}

/// Starts the primary's keepalived again and waits for the VIP to return and the backup to
/// record and run NOTIFY_BACKUP.
fn come_back(pair: &mut Pair, p: &Node, b: &mut Node, what: &str) {
    start_keepalived(pair, p);
    let t = wait_for(WAIT, || pair.has_vip(&pair.p) && !pair.has_vip(&pair.b));
    assert!(t.is_some(), "VIP never came back ({what})\n{}", logs(p, b));
    println!(
        "{what}: VIP back on the primary after {:?}",
        t.unwrap_or_default()
    );
    wait_for(WAIT, || {
        b.events().last().map(String::as_str) == Some("NOTIFY_BACKUP")
    });
    assert_eq!(
        b.run_hooks().last().map(String::as_str),
        Some("NOTIFY_BACKUP")
    );
}

fn stop_keepalived(pair: &mut Pair, n: &Node, sig: i32) -> Instant {
    let i = pair
        .procs
        .iter()
        .position(|(_, v)| v == &n.vrrp_pid)
        .expect("running keepalived");
    let (mut child, _) = pair.procs.remove(i);
    let vrrp = read_pid(&n.vrrp_pid);
    let at = Instant::now();
    signal(child.id() as i32, sig);
    if sig == libc::SIGKILL {
        if let Some(v) = vrrp {
            signal(v, libc::SIGKILL);
        }
    }
    // Reaped on a thread: the takeover is timed from the signal, not from the exit.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    at
}

fn write_network(root: &Path, addr: &str) {
    fs::create_dir_all(root.join("etc/config")).expect("mkdir");
    fs::write(
        root.join("etc/config/network"),
        format!(
            "config interface 'lan'\n\toption device '{DEV}'\n\toption proto 'static'\n\
             \toption ipaddr '{addr}'\n\toption netmask '255.255.255.0'\n"
        ),
    )
    .expect("network");
}

/// The backup's agent in its namespace; restores go through the real restore code.
fn spawn_agent(root: &Path, keys: &Keys, listen: String, ns: String) -> std::net::SocketAddr {
    let r = root.to_path_buf();
    let staging = local::staging_dir(root);
    let handler = BackupHandler {
        staging: staging.clone(),
        node: "backup".into(),
        restore: Arc::new(move |m, c| {
            let runner = RecordingRunner::new();
            let ctx = restore_hooks::Ctx {
                root: &r,
                staging: &staging,
                runner: &runner,
            };
            restore_hooks::restore_after_commit(&ctx, m, c)
        }),
    };
    let cfg = ServerConfig::new(
        listen.parse().expect("listen"),
        keys.host_key.clone(),
        keys.authorized.clone(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter_netns(&ns).expect("enter netns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let server = transport::bind(cfg, Arc::new(handler)).await.expect("bind");
            tx.send(server.local_addr().expect("addr")).expect("send");
            let _ = server.run().await;
        });
    });
    rx.recv().expect("agent address")
}

fn sync(primary: &Path, keys: &Keys, peer: &str, ns: &str) -> SyncReport {
    cluster::now(primary, keys.client(peer), Some(ns))
        .expect("sync")
        .1
}

#[test]
fn vip_moves_to_the_backup_and_back() {
    let mut pair = match Pair::create() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("SKIP failover: cannot create network namespaces here ({e}); run as root");
            return;
        }
    };
    assert!(
        Path::new(KEEPALIVED).exists(),
        "{KEEPALIVED} is missing: install Debian's keepalived (`.ci/run` installs it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // notify scripts: absolute path, root-owned, in a directory others cannot write
    let script = d.join("notify.sh");
    fs::write(
        &script,
        "#!/bin/sh\nprintf '%s %s\\n' \"$2\" \"$(date +%s.%N)\" >> \"$1\"\n",
    )
    .expect("script");
    fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");

    // The cluster, as the actions set it up.
    let (proot, broot) = (d.join("primary"), d.join("backup"));
    ha_sync_tests::router_root(&proot, &["/etc/app"], &[], &[]);
    fs::create_dir_all(proot.join("etc/app")).expect("mkdir");
    fs::write(proot.join("etc/app/conf"), "one\n").expect("write");
    write_network(&proot, &pair.addr(1));
    write_network(&broot, &pair.addr(2));
    let prunner = RecordingRunner::new();
    let pctx = Ctx {
        root: &proot,
        runner: &prunner,
    };
    let spec = actions::init_primary_node(
        &pctx,
        &pair.addr(1),
        &pair.addr(2),
        &format!("{}/24", pair.vip()),
        "lan",
    )
    .expect("init-primary-node");
    let brunner = RecordingRunner::new();
    actions::serve(
        &Ctx {
            root: &broot,
            runner: &brunner,
        },
        RemoteAction::Configure,
        &serde_json::json!({ "spec": spec, "start": true }),
    )
    .expect("configure the backup");

    let mut nodes = Vec::new();
    for (name, root, ns) in [("p", &proot, pair.p.clone()), ("b", &broot, pair.b.clone())] {
        let events = d.join(format!("events-{name}.log"));
        let uci = sync_core::uci::Package::load(&root.join("etc/config/keepalived")).expect("uci");
        let conf = keepalived::render(
            &uci,
            &RenderOptions {
                notify: Notify::Command(format!("{} {}", script.display(), events.display())),
                router_id: Some(format!("ha-{name}")),
            },
        );
        let conf_path = d.join(format!("keepalived-{name}.conf"));
        fs::write(&conf_path, conf).expect("conf");
        // the rendered file passes keepalived's own check inside the namespace
        let t = Command::new("ip")
            .args(["netns", "exec", &ns, KEEPALIVED, "-t", "-f"])
            .arg(&conf_path)
            .output()
            .expect("keepalived -t");
        assert!(
            t.status.success(),
            "keepalived -t: {}",
            String::from_utf8_lossy(&t.stderr)
        );
        nodes.push(Node {
            root: root.clone(),
            ns,
            conf: conf_path,
            events,
            pid: d.join(format!("keepalived-{name}.pid")),
            vrrp_pid: d.join(format!("vrrp-{name}.pid")),
            out: d.join(format!("keepalived-{name}.out")),
            seen: 0,
        });
    }
    let mut b = nodes.pop().expect("backup");
    let mut p = nodes.pop().expect("primary");
    start_keepalived(&mut pair, &p);
    start_keepalived(&mut pair, &b);
    let t = wait_for(WAIT, || pair.has_vip(&pair.p));
    assert!(
        t.is_some(),
        "the primary never took the VIP\n{}",
        logs(&p, &b)
    );
    println!(
        "cold start: VIP on the primary after {:?}",
        t.unwrap_or_default()
    );
    assert!(!pair.has_vip(&pair.b), "both hold the VIP");
    // The notify scripts run after keepalived changed the addresses: wait for them too.
    wait_for(WAIT, || {
        p.events().last().map(String::as_str) == Some("NOTIFY_MASTER")
            && b.events().last().map(String::as_str) == Some("NOTIFY_BACKUP")
    });
    assert_eq!(
        p.run_hooks().last().map(String::as_str),
        Some("NOTIFY_MASTER")
    );
    assert_eq!(
        b.run_hooks().last().map(String::as_str),
        Some("NOTIFY_BACKUP")
    );
    assert_eq!(
        restore_hooks::vrrp_state(&broot),
        Some(restore_hooks::VrrpState::Backup)
    );

    // The primary syncs a change to the backup's agent (backup namespace).
    let keys = Keys::new(&d.join("keys"));
    let agent = spawn_agent(&broot, &keys, format!("{}:0", pair.addr(2)), pair.b.clone());
    keys.pin(&pair.addr(2), agent.port());
    let peer = format!("{}:{}", pair.addr(2), agent.port());
    let r = sync(&proot, &keys, &peer, &pair.p);
    let restore = r.restore.expect("restore report");
    assert!(restore.applied && restore.refused.is_none(), "{restore:?}");
    assert_eq!(
        fs::read_to_string(broot.join("etc/app/conf")).expect("restored"),
        "one\n"
    );

    // SIGTERM: the stopping master sends priority 0, the backup takes over at once.
    take_over(&mut pair, &p, &b, libc::SIGTERM, Duration::from_secs(2));
    assert_eq!(
        b.run_hooks(),
        vec!["NOTIFY_MASTER".to_string()],
        "NOTIFY_MASTER ran on the backup"
    );
    assert_eq!(
        restore_hooks::vrrp_state(&broot),
        Some(restore_hooks::VrrpState::Master)
    );
    // The backup, now master, refuses an incoming restore.
    fs::write(proot.join("etc/app/conf"), "two\n").expect("write");
    let r = sync(&proot, &keys, &peer, &pair.p);
    let restore = r.restore.expect("restore report");
    assert!(
        !restore.applied
            && restore
                .refused
                .as_deref()
                .is_some_and(|w| w.contains("master")),
        "{restore:?}"
    );
    assert_eq!(
        fs::read_to_string(broot.join("etc/app/conf")).expect("kept"),
        "one\n"
    );

    // The primary comes back: it preempts, the backup steps down, the sync resumes.
    come_back(&mut pair, &p, &mut b, "restart");
    p.run_hooks();
    // The generation refused while master was committed in staging; NOTIFY_BACKUP restores
    // it as the node steps down (the primary would find staging up to date and send nothing).
    assert_eq!(
        fs::read_to_string(broot.join("etc/app/conf")).expect("restored on stepping down"),
        "two\n"
    );
    // The next change is restored as usual.
    fs::write(proot.join("etc/app/conf"), "three\n").expect("write");
    let r = sync(&proot, &keys, &peer, &pair.p);
    assert!(
        r.restore.as_ref().is_some_and(|x| x.applied),
        "sync resumed: {r:?}"
    );
    assert_eq!(
        fs::read_to_string(broot.join("etc/app/conf")).expect("restored"),
        "three\n"
    );

    // SIGKILL: no priority-0 advert; the backup waits for master_down (3 adverts + skew).
    take_over(&mut pair, &p, &b, libc::SIGKILL, Duration::from_secs(5));
    assert_eq!(
        b.run_hooks().last().map(String::as_str),
        Some("NOTIFY_MASTER")
    );
    // A killed keepalived leaves its VIP behind; the restarted one removes it and preempts.
    come_back(&mut pair, &p, &mut b, "restart after SIGKILL");
    // Never both masters at the end.
    assert!(!pair.has_vip(&pair.b));
}
