//! The cluster's remote actions over the agent's real SSH server (loopback): they run for the
//! cluster key only (the shell of ssh-remote and the image upload of upgrade-remote too), no
//! other command runs, passwords are refused.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ha_cluster::remote::{self, SshPeer};
use ha_cluster::request::{
    BootstrapAnswer, ClusterAnswer, ClusterRequest, Peer, RemoteAction, WantedIface,
};
use ha_cluster::{actions, bootstrap, cluster_pub, keepalived, upgrade, ClusterError, Ctx};
use ha_sync_tests::cluster::Keys;
use sync_agent::transport::client::{self, Algorithms, HostCheck, Login, ShellIo, Target};
use sync_agent::transport::{self, PtySize, ServerConfig};
use sync_core::runner::RecordingRunner;
use sync_core::uci::Package;

const NETWORK: &str = "
config interface 'lan'
	option device 'br-lan'
	option proto 'static'
	option ipaddr '192.168.100.239'
	option netmask '255.255.255.0'

config interface 'wan'
	option device 'eth1'
	option proto 'dhcp'
";

/// A backup root with an agent serving the cluster actions on loopback.
struct Backup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    keys: Keys,
    addr: std::net::SocketAddr,
    /// A second key the agent accepts for logins, but that is not the cluster key.
    other: PathBuf,
    /// What the agent's actions ran.
    runner: Arc<RecordingRunner>,
}

fn backup() -> Backup {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("etc/config")).expect("mkdir");
    fs::write(root.join("etc/config/network"), NETWORK).expect("network");
    let keys = Keys::new(&dir.path().join("keys"));
    let other = dir.path().join("keys/other");
    transport::generate_keypair(&other).expect("other key");
    let mut ak = fs::read_to_string(&keys.authorized).expect("ak");
    ak.push_str(&fs::read_to_string(dir.path().join("keys/other.pub")).expect("other.pub"));
    fs::write(&keys.authorized, ak).expect("ak");
    // what init-backup-node leaves: the cluster key's public half
    fs::create_dir_all(root.join("etc/ha-sync")).expect("mkdir");
    fs::copy(dir.path().join("keys/id_ed25519.pub"), cluster_pub(&root)).expect("cluster pub");

    let cfg = ServerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        keys.host_key.clone(),
        keys.authorized.clone(),
    );
    let r = root.clone();
    let runner = Arc::new(RecordingRunner::new());
    let agent_runner = runner.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let sync = Arc::new(
                |_: &mut dyn sync_agent::transport::ReadWrite,
                 _: &sync_agent::transport::PeerInfo|
                 -> Result<(), String> { Err("no sync in this test".into()) },
            );
            let server = transport::bind(cfg, sync).await.expect("bind");
            let server = remote::register(server, &r, agent_runner);
            tx.send(server.local_addr().expect("addr")).expect("send");
            let _ = server.run().await;
        });
    });
    let addr = rx.recv().expect("server address");
    keys.pin("127.0.0.1", addr.port());
    Backup {
        _dir: dir,
        root,
        keys,
        addr,
        other,
        runner,
    }
}

/// A primary root after `init-primary-node` (its half of the cluster, no peer yet).
fn initialized_primary() -> (tempfile::TempDir, RecordingRunner) {
    let primary = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(primary.path().join("etc/config")).expect("mkdir");
    fs::write(
        primary.path().join("etc/config/network"),
        NETWORK.replace("192.168.100.239", "192.168.100.238"),
    )
    .expect("network");
    let runner = RecordingRunner::new();
    let ctx = Ctx {
        root: primary.path(),
        runner: &runner,
    };
    actions::init_primary_node(
        &ctx,
        "192.168.100.238",
        "192.168.100.239",
        "192.168.100.240/24",
        "lan",
    )
    .expect("init");
    (primary, runner)
}

fn peer(b: &Backup, key: &Path) -> SshPeer {
    SshPeer::new(
        "127.0.0.1",
        b.addr.port(),
        key.to_path_buf(),
        b.keys.known_hosts.clone(),
    )
    .expect("peer")
}

#[test]
fn cluster_key_runs_the_actions() {
    let b = backup();
    let p = peer(&b, &b.keys.id);
    let answer = p
        .call(&ClusterRequest::Validate {
            interfaces: vec![WantedIface {
                name: "lan".into(),
                address: Some("192.168.100.239".parse().expect("ip")),
            }],
        })
        .expect("validate");
    let ClusterAnswer::Validated(answer) = answer else {
        panic!("validate answered {answer:?}");
    };
    assert_eq!(answer.interfaces[0].device, "br-lan");
    assert!(!answer.configured);

    // configure from a real primary's spec: the backup's sections are written
    let (primary, runner) = initialized_primary();
    let ctx = Ctx {
        root: primary.path(),
        runner: &runner,
    };
    actions::add_vip(&ctx, Some(&p), "lan", "192.168.100.66/24").expect("add-vip through ssh");
    let k = Package::load(&b.root.join("etc/config/keepalived")).expect("backup uci");
    assert_eq!(k.get("backup", "priority"), Some("50"));
    assert_eq!(
        k.get_list("backup", "virtual_ipaddress"),
        vec!["lan_ha", "lan_192_168_100_66_24_ha"]
    );

    // a refusal on the backup comes back as its message
    let e = p
        .call(&ClusterRequest::Validate {
            interfaces: vec![WantedIface {
                name: "wan".into(),
                address: None,
            }],
        })
        .expect_err("wan is dhcp");
    assert!(
        e.to_string().contains("interface wan uses proto dhcp"),
        "{e}"
    );
}

#[test]
fn other_keys_are_refused_for_every_action() {
    let b = backup();
    let p = peer(&b, &b.other);
    let (primary, _runner) = initialized_primary();
    let spec = keepalived::read(
        &Package::load(&primary.path().join("etc/config/keepalived")).expect("uci"),
    )
    .expect("read")
    .expect("spec")
    .1;
    let requests = [
        ClusterRequest::Validate {
            interfaces: Vec::new(),
        },
        ClusterRequest::Configure {
            spec,
            start: false,
            removed: Vec::new(),
        },
        ClusterRequest::Enable,
        ClusterRequest::Disable,
        ClusterRequest::Reset,
    ];
    assert_eq!(
        requests
            .iter()
            .map(ClusterRequest::action)
            .collect::<Vec<_>>(),
        RemoteAction::ALL
    );
    for request in &requests {
        let action = request.action();
        let e = p.call(request).expect_err("refused");
        let text = e.to_string();
        assert!(
            text.contains("cluster actions are refused for key")
                && text.contains("only the cluster key"),
            "{action:?}: {text}"
        );
    }
    // nothing was written on the backup
    assert!(!b.root.join("etc/config/keepalived").exists());

    // without the cluster key's public half (before init-backup-node) nobody may
    fs::remove_file(cluster_pub(&b.root)).expect("rm");
    let e = peer(&b, &b.keys.id)
        .call(&ClusterRequest::Enable)
        .expect_err("refused");
    assert!(e.to_string().contains("no cluster key on this node"), "{e}");
}

#[test]
fn no_other_command_and_no_password() {
    let b = backup();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    for cmd in [
        "sh -c id",
        "ha-sync-cluster",
        "ha-sync-cluster validate; id",
    ] {
        let e = rt
            .block_on(client::exec(
                Target {
                    host: "127.0.0.1",
                    port: b.addr.port(),
                    user: "root",
                    login: &Login::Key(b.keys.id.clone()),
                    check: HostCheck::Pinned(b.keys.known_hosts.clone()),
                    algorithms: Algorithms::Agent,
                    timeout: Duration::from_secs(20),
                },
                cmd,
                &b"{}"[..],
                1 << 20,
            ))
            .expect_err("refused");
        assert!(e.to_string().contains("refused to run"), "{cmd}: {e}");
    }
    // bootstrap with a wrong password: refused, and the password is in no message
    let e = rt
        .block_on(bootstrap::call(
            "127.0.0.1",
            b.addr.port(),
            "Wrong,Password-1234",
            &bootstrap::check_request("lan"),
        ))
        .expect_err("refused");
    let text = e.to_string();
    assert!(text.contains("refused the password of root"), "{text}");
    assert!(!text.contains("Wrong,Password-1234"), "{text}");
    assert!(matches!(e, ClusterError::Peer(_)));
    // an unknown host key is refused with the pinning hint
    fs::write(&b.keys.known_hosts, "").expect("unpin");
    let e = peer(&b, &b.keys.id)
        .call(&ClusterRequest::Validate {
            interfaces: Vec::new(),
        })
        .expect_err("unknown host key");
    assert!(e.to_string().contains("not in"), "{e}");
}

#[test]
fn bootstrap_init_installs_the_cluster_key_and_answers_the_agent_host_key() {
    // the backup's half of init-backup-node, as `ha-sync cluster serve-bootstrap init` runs it
    let backup = tempfile::tempdir().expect("tempdir");
    let broot = backup.path();
    fs::create_dir_all(broot.join("etc/config")).expect("mkdir");
    fs::write(broot.join("etc/config/network"), NETWORK).expect("network");
    let (primary, runner) = initialized_primary();
    let pctx = Ctx {
        root: primary.path(),
        runner: &runner,
    };
    let (ip, req) = bootstrap::init_request(&pctx).expect("request");
    assert_eq!(ip.to_string(), "192.168.100.239");
    let brunner = RecordingRunner::new();
    let bctx = Ctx {
        root: broot,
        runner: &brunner,
    };
    let answer = bootstrap::serve(&bctx, req.clone()).expect("serve init");
    assert!(
        matches!(answer, BootstrapAnswer::Initialized(_)),
        "{answer:?}"
    );
    let fp = bootstrap::pin_agent(&pctx, ip, &answer).expect("pin");
    assert!(fp.starts_with("SHA256:"));
    let known = fs::read_to_string(primary.path().join("etc/ha-sync/known_hosts")).expect("kh");
    assert!(
        known.starts_with("[192.168.100.239]:65022 ssh-ed25519 "),
        "{known}"
    );
    let ak = fs::read_to_string(broot.join("etc/ha-sync/authorized_keys")).expect("ak");
    let cluster_pub =
        fs::read_to_string(primary.path().join("etc/ha-sync/id_ed25519.pub")).expect("pub");
    let key_b64 = cluster_pub.split_whitespace().nth(1).expect("b64");
    assert!(ak.contains(key_b64));
    assert!(fs::read_to_string(ha_cluster::cluster_pub(broot))
        .expect("cluster pub")
        .contains(key_b64));
    let k = Package::load(&broot.join("etc/config/keepalived")).expect("uci");
    assert_eq!(keepalived::role_of(&k), Some(restore_hooks::Role::Backup));
    assert_eq!(
        brunner.lines(),
        vec![
            "/etc/init.d/keepalived enable",
            "/etc/init.d/keepalived restart",
            "/etc/init.d/conntrackd enable",
            "/etc/init.d/conntrackd restart",
        ]
    );
    // run twice: the key is not added twice
    bootstrap::serve(&bctx, req).expect("again");
    let ak2 = fs::read_to_string(broot.join("etc/ha-sync/authorized_keys")).expect("ak");
    assert_eq!(ak2.matches(key_b64).count(), 1);
}

/// Local ends of a shell the test types into and reads from, as a user at a terminal.
struct Typist {
    rt: tokio::runtime::Runtime,
    keys: tokio::io::DuplexStream,
    screen: tokio::io::DuplexStream,
    seen: String,
    resize: tokio::sync::mpsc::Sender<PtySize>,
}

impl Typist {
    fn type_line(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        let text = format!("{line}\n");
        self.rt
            .block_on(self.keys.write_all(text.as_bytes()))
            .expect("type");
    }

    /// Reads the screen until `marker` shows up after what was already seen; bounded (60 s: a
    /// loaded CI machine once took more than 20 s to show a prompt).
    fn wait_for(&mut self, marker: &str) -> String {
        use tokio::io::AsyncReadExt;
        let start = self.seen.len();
        let mut buf = [0u8; 4096];
        while !self.seen[start..].contains(marker) {
            let n = self
                .rt
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(60), self.screen.read(&mut buf)).await
                })
                .unwrap_or_else(|_| panic!("{marker:?} never came; screen: {}", self.seen))
                .expect("read screen");
            assert!(
                n > 0,
                "shell ended before {marker:?}; screen: {}",
                self.seen
            );
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        self.seen[start..].to_string()
    }

    /// Reads the screen until the session closes it.
    fn read_to_end(&mut self) {
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        self.rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(60), self.screen.read_to_end(&mut rest))
                    .await
            })
            .expect("the session never ended")
            .expect("read screen");
        self.seen.push_str(&String::from_utf8_lossy(&rest));
    }
}

#[test]
fn ssh_remote_gives_the_cluster_key_a_shell_on_a_terminal() {
    let b = backup();
    let p = peer(&b, &b.keys.id);
    let (keys, their_keys) = tokio::io::duplex(4096);
    let (their_screen, screen) = tokio::io::duplex(1 << 16);
    let (resize, resized) = tokio::sync::mpsc::channel(4);
    let shell = std::thread::spawn(move || {
        p.shell(ShellIo {
            stdin: their_keys,
            stdout: their_screen,
            stderr: tokio::io::sink(),
            terminal: Some((
                "xterm".to_string(),
                PtySize {
                    cols: 100,
                    rows: 30,
                },
            )),
            resized,
        })
    });
    let mut t = Typist {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt"),
        keys,
        screen,
        seen: String::new(),
        resize,
    };
    // a real terminal of the requested size and type, the shell its session leader
    t.type_line("echo \"size=$(stty size) term=$TERM tty=$(tty)\"");
    let out = t.wait_for("tty=/dev/pts/");
    assert!(out.contains("size=30 100 term=xterm"), "{out}");
    // the user's terminal grows: the shell's follows
    t.rt.block_on(t.resize.send(PtySize {
        cols: 132,
        rows: 43,
    }))
    .expect("resize");
    let mut grown = false;
    for i in 0..50 {
        t.type_line(&format!("echo \"probe{i}=$(stty size)\""));
        let out = t.wait_for(&format!("probe{i}=")).to_string();
        let line = t.wait_for("\n");
        if format!("{out}{line}").contains(&format!("probe{i}=43 132")) {
            grown = true;
            break;
        }
    }
    assert!(grown, "the terminal never took the new size: {}", t.seen);
    t.type_line("exit 7");
    t.read_to_end();
    drop(t);
    let status = shell.join().expect("shell thread").expect("shell");
    assert_eq!(status, 7);
}

#[test]
fn ssh_remote_without_a_terminal_runs_on_pipes() {
    let b = backup();
    let p = peer(&b, &b.keys.id);
    let (_resize, resized) = tokio::sync::mpsc::channel(1);
    let mut out = Vec::new();
    let mut err = Vec::new();
    let status = p
        .shell(ShellIo {
            stdin: &b"echo out-$((6*7)); echo err >&2; test -t 0 || echo no-tty; exit 3\n"[..],
            stdout: &mut out,
            stderr: &mut err,
            terminal: None,
            resized,
        })
        .expect("shell");
    assert_eq!(status, 3);
    assert_eq!(String::from_utf8_lossy(&out), "out-42\nno-tty\n");
    assert_eq!(String::from_utf8_lossy(&err), "err\n");
}

#[test]
fn ssh_remote_is_refused_for_other_keys() {
    let b = backup();
    let (_resize, resized) = tokio::sync::mpsc::channel(1);
    let mut out = Vec::new();
    let mut err = Vec::new();
    let status = peer(&b, &b.other)
        .shell(ShellIo {
            stdin: &b"touch /tmp/ha-sync-should-not-exist\n"[..],
            stdout: &mut out,
            stderr: &mut err,
            terminal: Some(("xterm".into(), PtySize { cols: 80, rows: 24 })),
            resized,
        })
        .expect("refusal comes as a status");
    assert_eq!(status, 1);
    let text = String::from_utf8_lossy(&err);
    assert!(
        text.contains("cluster actions are refused for key")
            && text.contains("only the cluster key"),
        "{text}"
    );
    assert!(out.is_empty());
}

#[test]
fn upgrade_remote_over_ssh_installs_after_answering() {
    let b = backup();
    b.runner.provide(upgrade::SYSUPGRADE);
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("image.img");
    // 5 MiB: more than the channel window, so the upload streams
    let data: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&image, &data).expect("image");
    let prunner = RecordingRunner::new();
    let pctx = Ctx {
        root: dir.path(),
        runner: &prunner,
    };

    // another key: refused, nothing written
    let e = upgrade::upgrade_remote(&pctx, &peer(&b, &b.other), Some(&image))
        .expect_err("other key")
        .to_string();
    assert!(e.contains("only the cluster key"), "{e}");
    assert!(!b.root.join(upgrade::IMAGE_PATH).exists());

    let r = upgrade::upgrade_remote(&pctx, &peer(&b, &b.keys.id), Some(&image)).expect("upgrade");
    assert_eq!(r.answer.result, "installing");
    assert_eq!(r.answer.image, "/tmp/ha-sync-upgrade.img");
    assert_eq!(
        fs::read(b.root.join(upgrade::IMAGE_PATH)).expect("image"),
        data
    );
    // the install runs on its own after the answer; wait for it (bounded)
    let install = "/sbin/sysupgrade /tmp/ha-sync-upgrade.img".to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !b.runner.lines().contains(&install) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            b.runner.lines()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        b.runner.lines(),
        vec![
            "/sbin/sysupgrade -T /tmp/ha-sync-upgrade.img".to_string(),
            install
        ]
    );
}
