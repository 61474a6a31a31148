//! The primary's daemon on real inotify (temporary roots) and real SSH on loopback: a backup
//! agent serves a second temporary root. Nothing here asserts a duration: every wait is for
//! a condition, with a generous timeout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sync_agent::agent::{BackupHandler, RestoreHook};
use sync_agent::alerts::AlertConfig;
use sync_agent::control;
use sync_agent::daemon::{self, Daemon, DaemonConfig, DaemonHandle};
use sync_agent::status::{self, DaemonStatus};
use sync_agent::transport::{self, ClientConfig, PeerInfo, ReadWrite, ServerConfig, StreamHandler};
use sync_agent::triggers::RawEvent;
use sync_core::local;
use sync_core::node::STATE_DIR;
use sync_core::runner::RecordingRunner;
use sync_core::staging::Staging;
use sync_core::uci;
use sync_core::wire::RestoreReport;

/// Long enough for a loaded CI machine; conditions usually hold within a second.
const WAIT: Duration = Duration::from_secs(60);

/// Waits until `cond` holds; panics with `what` after [`WAIT`].
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How the backup agent answers.
#[derive(Clone, Copy)]
enum BackupMode {
    /// Stages, no restore.
    StagingOnly,
    /// Stages, then reports a restore error for every changed path.
    RestoreFails,
    /// Refuses every session with an error.
    Fails,
    /// Takes the session and never answers (issue 14): reads until the primary hangs up.
    Silent,
}

/// A backup agent on its own thread and runtime; stops when dropped.
struct Backup {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backup {
    fn start(root: &Path, keys: &Path, listen: SocketAddr, mode: BackupMode) -> Backup {
        let handler: Arc<dyn StreamHandler> = match mode {
            BackupMode::Fails => Arc::new(|_: &mut dyn ReadWrite, _: &PeerInfo| {
                Err::<(), String>("refused by the test backup".to_string())
            }),
            BackupMode::Silent => Arc::new(|s: &mut dyn ReadWrite, _: &PeerInfo| {
                let _ = std::io::copy(s, &mut std::io::sink());
                Err::<(), String>("the primary hung up".to_string())
            }),
            BackupMode::StagingOnly | BackupMode::RestoreFails => {
                let restore: RestoreHook = match mode {
                    BackupMode::RestoreFails => Arc::new(|_, c| RestoreReport {
                        root: c.root,
                        applied: true,
                        changed: c.changed.clone(),
                        errors: c
                            .changed
                            .iter()
                            .map(|p| (p.clone(), "read-only file system".to_string()))
                            .collect(),
                        ..RestoreReport::default()
                    }),
                    _ => Arc::new(local::staging_only),
                };
                let restore = Some(restore).filter(|_| matches!(mode, BackupMode::RestoreFails));
                Arc::new(BackupHandler {
                    staging: sync_core::node::Node::new(root).staging_dir(),
                    node: "backup".into(),
                    restore,
                })
            }
        };
        let cfg = ServerConfig::new(listen, keys.join("host_key"), keys.join("authorized_keys"));
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = transport::bind(cfg, handler).await.expect("bind");
                tx.send(server.local_addr().unwrap()).unwrap();
                let _ = server
                    .run_until(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let addr = rx.recv().expect("backup address");
        Backup {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Backup {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Two roots, keys, a backup agent and the daemon on the primary root.
struct Cluster {
    _tmp: tempfile::TempDir,
    primary: PathBuf,
    backup_root: PathBuf,
    keys: PathBuf,
    backup: Option<Backup>,
    backup_addr: SocketAddr,
    runner: Arc<RecordingRunner>,
    daemon: Option<Daemon>,
    handle: Option<DaemonHandle>,
}

struct Setup {
    mode: BackupMode,
    master: bool,
    alerts: AlertConfig,
    /// Connect somewhere nothing listens.
    refused: bool,
    /// Pin a key that is not the backup's.
    wrong_host_key: bool,
    /// Leave our key out of the backup's authorized_keys.
    unauthorized: bool,
    /// The daemon's session deadline (`None`: from the manifest).
    session_deadline: Option<Duration>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            mode: BackupMode::StagingOnly,
            master: true,
            alerts: AlertConfig {
                command: Some("/usr/bin/test-alert".into()),
                ..AlertConfig::default()
            },
            refused: false,
            wrong_host_key: false,
            unauthorized: false,
            session_deadline: None,
        }
    }
}

const KEEPALIVED: &str = "config vrrp_instance 'primary'\n\toption name 'master'\n\nconfig peer 'ha_peer'\n\tlist sync_list '/etc/ha'\n";

fn write(path: &Path, data: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// Replaces `path` the way editors and `uci commit` do: a temporary file renamed over it.
fn write_by_rename(path: &Path, data: &str) {
    let tmp = path.parent().unwrap().join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Cluster {
    async fn start(s: Setup) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let primary = tmp.path().join("primary");
        let backup_root = tmp.path().join("backup");
        let keys = tmp.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::create_dir_all(&backup_root).unwrap();
        transport::generate_keypair(&keys.join("id_ed25519")).unwrap();
        if !s.unauthorized {
            std::fs::copy(keys.join("id_ed25519.pub"), keys.join("authorized_keys")).unwrap();
        } else {
            transport::generate_keypair(&keys.join("other")).unwrap();
            std::fs::copy(keys.join("other.pub"), keys.join("authorized_keys")).unwrap();
        }
        let host_key = transport::load_or_create_host_key(&keys.join("host_key")).unwrap();

        write(&primary.join("etc/config/keepalived"), KEEPALIVED);
        write(&primary.join("etc/config/firewall"), "config defaults\n");
        write(
            &primary.join("etc/sysupgrade.conf"),
            "/etc/config/firewall\n/etc/keepdir/\n",
        );
        write(&primary.join("etc/keepdir/a.conf"), "a\n");
        write(&primary.join("etc/ha/wan_interfaces"), "{}\n");
        write(&primary.join("etc/ha/routes"), "{}\n");
        write(
            &primary.join(STATE_DIR).join("vrrp_state"),
            if s.master { "master\n" } else { "backup\n" },
        );

        let backup = Backup::start(&backup_root, &keys, "127.0.0.1:0".parse().unwrap(), s.mode);
        let peer_addr = if s.refused {
            // A port that was free a moment ago: nothing listens there.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        } else {
            backup.addr
        };
        let pinned = if s.wrong_host_key {
            transport::load_or_create_host_key(&keys.join("impostor_key"))
                .unwrap()
                .public_key()
                .clone()
        } else {
            host_key.public_key().clone()
        };
        transport::pin_known_host(
            &keys.join("known_hosts"),
            "127.0.0.1",
            peer_addr.port(),
            &pinned,
        )
        .unwrap();
        let client = ClientConfig::new(
            peer_addr.to_string(),
            keys.join("id_ed25519"),
            keys.join("known_hosts"),
        );
        let mut cfg = DaemonConfig::new(primary.clone(), client);
        // Only events (and `now`) start syncs here, so they can be counted.
        cfg.reconcile = Duration::ZERO;
        cfg.backoff_min = Duration::from_millis(50);
        cfg.backoff_max = Duration::from_millis(400);
        cfg.alerts = Some(s.alerts);
        cfg.session_deadline = s.session_deadline;
        let runner = Arc::new(RecordingRunner::new());
        let d = daemon::start(cfg, runner.clone()).await.expect("daemon");
        let handle = d.handle();
        Cluster {
            _tmp: tmp,
            primary,
            backup_root,
            keys,
            backup_addr: backup.addr,
            backup: Some(backup),
            runner,
            daemon: Some(d),
            handle: Some(handle),
        }
    }

    fn h(&self) -> &DaemonHandle {
        self.handle.as_ref().unwrap()
    }

    fn st(&self) -> DaemonStatus {
        self.h().status()
    }

    /// The backup's staged copy of router path `abs`.
    fn staged(&self, abs: &str) -> PathBuf {
        sync_core::node::Node::new(&self.backup_root)
            .staging_dir()
            .join(abs.trim_start_matches('/'))
    }

    fn staged_text(&self, abs: &str) -> Option<String> {
        std::fs::read_to_string(self.staged(abs)).ok()
    }

    fn p(&self, abs: &str) -> PathBuf {
        self.primary.join(abs.trim_start_matches('/'))
    }

    fn uci_state(&self, section: &str, option: &str) -> Option<String> {
        uci::state_get(&self.primary, "keepalived", section, option).unwrap()
    }

    async fn wait_staged(&self, abs: &str, content: &str) {
        let what = format!("{abs} staged as {content:?}");
        wait_for(&what, || self.staged_text(abs).as_deref() == Some(content)).await;
    }

    /// Waits for the first sync (the one at start) to have ended.
    async fn wait_first_sync(&self) -> DaemonStatus {
        wait_for("the first sync", || self.st().syncs.total >= 1).await;
        self.st()
    }

    /// Waits until no change is pending and no sync is due soon, then returns the status.
    async fn wait_idle(&self) -> DaemonStatus {
        wait_for("no pending change", || {
            let s = self.st();
            s.pending_changes == 0 && s.last_sync.as_ref().is_some_and(|l| l.ok)
        })
        .await;
        self.st()
    }

    fn restart_backup(&mut self, mode: BackupMode) {
        self.backup = None;
        self.backup = Some(Backup::start(
            &self.backup_root,
            &self.keys,
            self.backup_addr,
            mode,
        ));
    }

    async fn stop(mut self) {
        if let Some(h) = &self.handle {
            h.stop().await;
        }
        if let Some(d) = self.daemon.take() {
            d.wait().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_backup_by_themselves() {
    let c = Cluster::start(Setup::default()).await;
    let first = c.wait_first_sync().await;
    assert!(first.last_sync.as_ref().unwrap().ok, "{first:?}");
    assert_eq!(first.last_sync.as_ref().unwrap().trigger, "start");
    c.wait_staged("/etc/ha/routes", "{}\n").await;
    c.wait_staged("/etc/config/firewall", "config defaults\n")
        .await;

    // A plain write into a listed directory.
    write(&c.p("/etc/ha/routes"), "{\"r1\": {}}\n");
    c.wait_staged("/etc/ha/routes", "{\"r1\": {}}\n").await;

    // Rename into place (editors, uci commit) of a file listed on its own.
    write_by_rename(
        &c.p("/etc/config/firewall"),
        "config defaults\n\toption syn_flood '1'\n",
    );
    c.wait_staged(
        "/etc/config/firewall",
        "config defaults\n\toption syn_flood '1'\n",
    )
    .await;

    // A new file in a new subdirectory of a listed directory.
    write(&c.p("/etc/ha/new/hotspot"), "{\"device\": \"eth3\"}\n");
    c.wait_staged("/etc/ha/new/hotspot", "{\"device\": \"eth3\"}\n")
        .await;
    // ... and the new subdirectory is watched too.
    write(&c.p("/etc/ha/new/hotspot"), "{\"device\": \"eth4\"}\n");
    c.wait_staged("/etc/ha/new/hotspot", "{\"device\": \"eth4\"}\n")
        .await;

    // A new file below a directory of sysupgrade.conf: the keep list (and so the restore
    // list) grows by one file.
    c.wait_staged("/etc/keepdir/a.conf", "a\n").await;
    write(&c.p("/etc/keepdir/b.conf"), "b\n");
    c.wait_staged("/etc/keepdir/b.conf", "b\n").await;

    // A delete.
    std::fs::remove_file(c.p("/etc/ha/wan_interfaces")).unwrap();
    wait_for("wan_interfaces deleted on the backup", || {
        !c.staged("/etc/ha/wan_interfaces").exists()
    })
    .await;

    let s = c.wait_idle().await;
    assert_eq!(s.syncs.failed, 0, "{s:?}");
    let l = s.last_sync.unwrap();
    assert_eq!(l.trigger, "change");
    assert!(l.network && !l.up_to_date, "{l:?}");
    assert!(l.latency_ms.is_some(), "a change sync measures its latency");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_sync_list_recomputes_the_list_and_the_watches() {
    let c = Cluster::start(Setup::default()).await;
    c.wait_first_sync().await;
    write(&c.p("/etc/openvpn/server.conf"), "port 1194\n");
    // Not listed yet: nothing of /etc/openvpn on the backup.
    c.wait_idle().await;
    assert_eq!(c.staged_text("/etc/openvpn/server.conf"), None);

    write_by_rename(
        &c.p("/etc/config/keepalived"),
        &format!("{KEEPALIVED}\tlist sync_list '/etc/openvpn'\n"),
    );
    c.wait_staged("/etc/openvpn/server.conf", "port 1194\n")
        .await;
    // The directory that joined the list is watched from now on.
    write(&c.p("/etc/openvpn/server.conf"), "port 1195\n");
    c.wait_staged("/etc/openvpn/server.conf", "port 1195\n")
        .await;

    // A listed path that does not exist yet is watched through its parent.
    write_by_rename(
        &c.p("/etc/config/keepalived"),
        &format!("{KEEPALIVED}\tlist sync_list '/etc/openvpn'\n\tlist sync_list '/etc/nginx'\n"),
    );
    c.wait_idle().await;
    write(&c.p("/etc/nginx/nginx.conf"), "worker_processes 1;\n");
    c.wait_staged("/etc/nginx/nginx.conf", "worker_processes 1;\n")
        .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_edits_becomes_few_syncs() {
    let c = Cluster::start(Setup::default()).await;
    c.wait_first_sync().await;
    let before = c.wait_idle().await.syncs.total;
    let f = c.p("/etc/ha/routes");
    for i in 0..300 {
        std::fs::write(&f, format!("{{\"edit\": {i}}}\n")).unwrap();
    }
    c.wait_staged("/etc/ha/routes", "{\"edit\": 299}\n").await;
    let after = c.wait_idle().await.syncs.total;
    let syncs = after - before;
    assert!(syncs >= 1);
    assert!(
        syncs <= 5,
        "300 edits in a burst made {syncs} syncs; the debounce should fold them"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_overflow_rescans_and_rewatches() {
    let c = Cluster::start(Setup::default()).await;
    c.wait_first_sync().await;
    let before = c.wait_idle().await;
    assert!(before.watches.dirs > 0);
    assert!(
        c.h()
            .inject(RawEvent::Rescan("inotify queue overflow (test)".into()))
            .await
    );
    wait_for("a rescan sync", || {
        c.st()
            .last_sync
            .is_some_and(|l| l.trigger == "rescan" && l.ok)
    })
    .await;
    let s = c.st();
    assert_eq!(s.watches.rescans, before.watches.rescans + 1);
    assert_eq!(s.watches.dirs, before.watches.dirs, "every watch set again");
    assert!(!s.watches.degraded);
    // The watches work after the reset.
    write(&c.p("/etc/ha/routes"), "{\"after\": \"rescan\"}\n");
    c.wait_staged("/etc/ha/routes", "{\"after\": \"rescan\"}\n")
        .await;

    // A watch that failed while following a new directory (notify reports the inotify
    // limit this way): warned, and everything is watched again by a rescan.
    assert!(
        c.h()
            .inject(RawEvent::WatchError {
                message: "OS file watch limit reached (test)".into(),
                limit: true,
            })
            .await
    );
    wait_for("a second rescan", || {
        let s = c.st();
        s.watches.rescans == before.watches.rescans + 2
            && s.last_sync.is_some_and(|l| l.trigger == "rescan" && l.ok)
    })
    .await;
    // The reset found room for every watch again.
    assert!(!c.st().watches.degraded);
    assert_eq!(c.st().watches.dirs, before.watches.dirs);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_and_status_over_the_control_socket() {
    let c = Cluster::start(Setup::default()).await;
    c.wait_first_sync().await;
    c.wait_idle().await;
    let socket = sync_core::node::Node::new(&c.primary).control_socket();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let s2 = socket.clone();
    let reply = tokio::task::spawn_blocking(move || control::now(&s2))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.ok, "{reply:?}");
    let sync = reply.sync.unwrap();
    assert_eq!(sync.trigger, "now");
    assert!(sync.network, "`now` always asks the backup");
    assert!(sync.up_to_date);
    assert!(
        !sync.scanned,
        "nothing changed since the last scan: its manifest serves"
    );
    assert_eq!(sync.round_trips, 1);
    assert!(sync.wire_sent + sync.wire_received < 2048, "{sync:?}");

    // A change made just before `now` is carried by it.
    write(&c.p("/etc/ha/routes"), "{\"via\": \"now\"}\n");
    let s2 = socket.clone();
    let reply = tokio::task::spawn_blocking(move || control::now(&s2))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.ok);
    assert!(
        reply.sync.unwrap().scanned,
        "the write's event was fenced in: rescanned"
    );
    assert_eq!(
        c.staged_text("/etc/ha/routes").as_deref(),
        Some("{\"via\": \"now\"}\n")
    );

    let s2 = socket.clone();
    let st = tokio::task::spawn_blocking(move || control::status(&s2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(st.pid, std::process::id());
    assert!(st.active && st.connected);

    // A second daemon on the same root is refused, and the first keeps its socket.
    let client = ClientConfig::new(
        st.peer.clone(),
        c.keys.join("id_ed25519"),
        c.keys.join("known_hosts"),
    );
    let second = daemon::start(
        DaemonConfig::new(c.primary.clone(), client),
        Arc::new(RecordingRunner::new()),
    )
    .await;
    assert!(
        matches!(second, Err(daemon::DaemonError::AlreadyRunning { .. })),
        "{:?}",
        second.err()
    );
    assert!(socket.exists());
    c.stop().await;
    // Gone with the daemon: `ha-sync now` falls back to syncing by itself.
    assert!(!socket.exists());
    assert!(matches!(
        control::now(&socket),
        Err(control::ControlError::NoDaemon { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_after_success() {
    let c = Cluster::start(Setup::default()).await;
    c.wait_first_sync().await;
    write(&c.p("/etc/ha/routes"), "{\"x\": 1}\n");
    c.wait_staged("/etc/ha/routes", "{\"x\": 1}\n").await;
    let s = c.wait_idle().await;
    // The UCI state the incumbent's readers use.
    assert_eq!(
        c.uci_state("ha_peer", "last_sync_status").as_deref(),
        Some("Successful")
    );
    let t: u64 = c
        .uci_state("ha_peer", "last_sync_time")
        .unwrap()
        .parse()
        .unwrap();
    assert!(t.abs_diff(status::epoch_now()) < 3600);
    // status.json, as written after the sync.
    let f = status::read_json(&c.primary).unwrap().unwrap();
    let l = f.last_sync.clone().unwrap();
    let staging = Staging::open(&sync_core::node::Node::new(&c.backup_root).staging_dir()).unwrap();
    assert_eq!(l.generation, staging.root().map(|h| h.to_hex()));
    assert_eq!(l.status, "Successful");
    assert!(l.files >= 4 && l.bytes > 0, "{l:?}");
    let r = l.restore.unwrap();
    assert!(r.refused.unwrap().starts_with("staging only"));
    assert_eq!(f.pending_changes, 0);
    assert!(
        f.in_sync_since.is_some(),
        "in sync after a clean sync: {f:?}"
    );
    assert_eq!(f.consecutive_failures, 0);
    assert!(f.last_error.is_none());
    assert_eq!(s.syncs.failed, 0);
    assert!(!f.alert_sync_failed);
    // `ha-sync status` shows it.
    let text = status::collect(&c.primary, Some(c.st())).render();
    assert!(text.contains("Last Sync Status: Successful"), "{text}");
    assert!(text.contains("Daemon: running"), "{text}");
    c.stop().await;
}

/// Waits for the first sync to fail and checks what is recorded.
async fn failure_is_recorded(setup: Setup, expected: &str) -> Cluster {
    let c = Cluster::start(setup).await;
    let s = c.wait_first_sync().await;
    let l = s.last_sync.clone().unwrap();
    assert!(!l.ok);
    assert_eq!(l.status, expected, "{l:?}");
    assert_eq!(
        c.uci_state("ha_peer", "last_sync_status").as_deref(),
        Some(expected)
    );
    // status.json is written once the sync is recorded.
    wait_for("status.json with the error", || {
        status::read_json(&c.primary)
            .ok()
            .flatten()
            .is_some_and(|f| f.last_error.is_some())
    })
    .await;
    let f = status::read_json(&c.primary).unwrap().unwrap();
    let e = f.last_error.unwrap();
    assert_eq!(e.status, expected);
    assert!(!e.message.is_empty());
    assert!(f.consecutive_failures >= 1);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_recorded() {
    let c = failure_is_recorded(
        Setup {
            refused: true,
            ..Setup::default()
        },
        "SSH Connection Failed",
    )
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_is_recorded() {
    let c = failure_is_recorded(
        Setup {
            wrong_host_key: true,
            ..Setup::default()
        },
        "SSH Host Key Check Failed",
    )
    .await;
    let e = c.st().last_error.unwrap();
    assert!(e.message.contains("HOST KEY CHANGED"), "{e:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_key_is_recorded() {
    let c = failure_is_recorded(
        Setup {
            unauthorized: true,
            ..Setup::default()
        },
        "SSH Authentication Failed",
    )
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_refusing_the_session_is_recorded() {
    let c = failure_is_recorded(
        Setup {
            mode: BackupMode::Fails,
            ..Setup::default()
        },
        "Transfer Failed",
    )
    .await;
    assert!(c
        .st()
        .last_error
        .unwrap()
        .message
        .contains("refused by the test backup"));
    c.stop().await;
}

/// Issue 14, finding 2: a backup that takes the session and never answers ends each sync at
/// its deadline with an error naming it; the failures raise ha:sync:failed and the daemon
/// carries on (it answers `now` and syncs again once the backup behaves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_never_answers_fails_the_sync_at_its_deadline() {
    let mut c = failure_is_recorded(
        Setup {
            mode: BackupMode::Silent,
            session_deadline: Some(Duration::from_millis(300)),
            alerts: AlertConfig {
                command: None,
                failures: 2,
                max_wait: Duration::from_secs(3600),
            },
            ..Setup::default()
        },
        "Transfer Failed",
    )
    .await;
    let e = c.st().last_error.unwrap();
    assert!(e.message.contains("deadline of 300ms passed"), "{e:?}");
    assert!(e.message.contains(&c.backup_addr.to_string()), "{e:?}");
    wait_for("the alert raised", || c.st().alert_sync_failed).await;
    assert!(c.uci_state("ha_alert", "sync_failed_at").is_some());
    let reply = c.h().now().await;
    assert!(!reply.ok);
    assert!(reply.error.unwrap().contains("deadline"));
    // The backup behaves again: the next sync goes through and clears the alert.
    c.restart_backup(BackupMode::StagingOnly);
    c.wait_staged("/etc/ha/routes", "{}\n").await;
    wait_for("the alert cleared", || !c.st().alert_sync_failed).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_failure_is_recorded() {
    let c = failure_is_recorded(
        Setup {
            mode: BackupMode::RestoreFails,
            ..Setup::default()
        },
        "Restore Failed",
    )
    .await;
    let l = c.st().last_sync.unwrap();
    let r = l.restore.unwrap();
    assert!(!r.errors.is_empty());
    assert!(r.errors[0].1.contains("read-only"));
    // The files did reach staging: the generation is known.
    assert!(l.generation.is_some());
    // A sync that finds the backup up to date runs no restore there: live still lacks the
    // generation, so the failure stands.
    let reply = c.h().now().await;
    let again = reply.sync.unwrap();
    assert!(again.up_to_date, "{again:?}");
    assert_eq!(again.status, "Restore Failed");
    // A backup that restores again: the next generation clears it.
    let mut c = c;
    c.restart_backup(BackupMode::StagingOnly);
    write(&c.p("/etc/ha/routes"), "{\"restored\": true}\n");
    c.wait_staged("/etc/ha/routes", "{\"restored\": true}\n")
        .await;
    let s = c.wait_idle().await;
    assert_eq!(s.last_sync.unwrap().status, "Successful");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_catches_up_when_the_backup_comes_back() {
    let mut c = Cluster::start(Setup {
        alerts: AlertConfig {
            command: Some("/usr/bin/test-alert".into()),
            failures: 2,
            max_wait: Duration::from_secs(3600),
        },
        ..Setup::default()
    })
    .await;
    c.wait_first_sync().await;
    c.wait_idle().await;
    assert_eq!(c.uci_state("ha_alert", "sync_failed_at"), None);

    // The backup goes away; a change waits.
    c.backup = None;
    wait_for("the connection loss noticed", || !c.st().connected).await;
    write(&c.p("/etc/ha/routes"), "{\"while\": \"down\"}\n");
    wait_for("the change pending", || c.st().pending_changes >= 1).await;
    assert_eq!(c.st().in_sync_since, None, "a pending change: not in sync");
    wait_for("two failed syncs", || c.st().consecutive_failures >= 2).await;
    assert_eq!(c.st().last_sync.unwrap().status, "SSH Connection Failed");
    // ha:sync:failed raised once: timestamp and one command call.
    wait_for("the alert raised", || c.st().alert_sync_failed).await;
    assert!(c.uci_state("ha_alert", "sync_failed_at").is_some());
    wait_for("more failures", || c.st().consecutive_failures >= 4).await;
    let runner = c.runner.clone();
    let alert_calls = |level: &str| {
        runner
            .calls()
            .iter()
            .filter(|cmd| cmd.args.get(3).map(String::as_str) == Some("ha:sync:failed"))
            .filter(|cmd| cmd.args.get(4).map(String::as_str) == Some(level))
            .count()
    };
    assert_eq!(alert_calls("FAILURE"), 1, "raised on the transition only");

    // Back up: the daemon reconnects and delivers the change without being asked.
    c.restart_backup(BackupMode::StagingOnly);
    c.wait_staged("/etc/ha/routes", "{\"while\": \"down\"}\n")
        .await;
    let s = c.wait_idle().await;
    assert!(s.connected);
    assert!(!s.alert_sync_failed);
    assert!(c.uci_state("ha_alert", "sync_recovered_at").is_some());
    assert_eq!(alert_calls("OK"), 1);
    assert_eq!(alert_calls("FAILURE"), 1);
    assert_eq!(
        c.uci_state("ha_peer", "last_sync_status").as_deref(),
        Some("Successful")
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_waiting_too_long_raises_the_alert() {
    let mut c = Cluster::start(Setup {
        alerts: AlertConfig {
            command: None,
            failures: 1000,
            max_wait: Duration::from_millis(300),
        },
        ..Setup::default()
    })
    .await;
    c.wait_first_sync().await;
    c.wait_idle().await;
    c.backup = None;
    wait_for("the connection loss noticed", || !c.st().connected).await;
    write(&c.p("/etc/ha/routes"), "{\"waits\": true}\n");
    wait_for("the alert raised by the wait", || c.st().alert_sync_failed).await;
    assert!(c.st().consecutive_failures < 1000);
    assert!(c.uci_state("ha_alert", "sync_failed_at").is_some());
    c.restart_backup(BackupMode::StagingOnly);
    wait_for("the alert cleared", || !c.st().alert_sync_failed).await;
    assert!(c.uci_state("ha_alert", "sync_recovered_at").is_some());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_unless_primary_and_master() {
    let c = Cluster::start(Setup {
        master: false,
        ..Setup::default()
    })
    .await;
    // Not master: the daemon waits (no sync, and `now` is refused with the reason).
    let reply = c.h().now().await;
    assert!(!reply.ok);
    assert!(reply.error.unwrap().contains("VRRP backup"));
    write(&c.p("/etc/ha/routes"), "{\"queued\": 1}\n");
    wait_for("the change counted as pending", || {
        c.st().pending_changes >= 1
    })
    .await;
    let s = c.st();
    assert_eq!(s.syncs.total, 0);
    assert!(!s.active && !s.connected);
    assert_eq!(c.staged_text("/etc/ha/routes"), None);

    // keepalived's NOTIFY_MASTER, as the hooks record it: sending starts by itself.
    write_by_rename(&c.p("/var/run/ha-sync/vrrp_state"), "master\n");
    c.wait_staged("/etc/ha/routes", "{\"queued\": 1}\n").await;
    let s = c.wait_idle().await;
    assert!(s.active);
    assert_eq!(s.last_sync.unwrap().trigger, "activated");

    // Back to backup: the connection is dropped and changes wait again.
    write_by_rename(&c.p("/var/run/ha-sync/vrrp_state"), "backup\n");
    wait_for("inactive", || !c.st().active && !c.st().connected).await;
    let total = c.st().syncs.total;
    write(&c.p("/etc/ha/routes"), "{\"queued\": 2}\n");
    wait_for("the change counted as pending", || {
        c.st().pending_changes >= 1
    })
    .await;
    assert_eq!(c.st().syncs.total, total);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_many_syncs() {
    let c = Cluster::start(Setup::default()).await;
    c.wait_first_sync().await;
    let first = c.wait_idle().await;
    let since = first.connected_since;
    assert!(since.is_some());
    // More sessions than the agent allows open channels at once (4): each must be freed.
    for i in 0..12 {
        write(&c.p("/etc/ha/routes"), &format!("{{\"n\": {i}}}\n"));
        let reply = c.h().now().await;
        assert!(reply.ok, "sync {i}: {reply:?}");
        assert_eq!(
            c.staged_text("/etc/ha/routes"),
            Some(format!("{{\"n\": {i}}}\n"))
        );
    }
    let s = c.wait_idle().await;
    assert_eq!(s.syncs.failed, 0);
    assert_eq!(s.connected_since, since, "still the first connection");
    c.stop().await;
}
