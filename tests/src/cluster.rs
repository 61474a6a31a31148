//! A backup agent and a primary on real SSH: loopback, or two network namespaces.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use sync_agent::agent::{self, BackupHandler, NowError, NowOptions};
use sync_agent::transport::{self, ClientConfig, ServerConfig};
use sync_core::prepare::Prepared;
use sync_core::runner::RecordingRunner;
use sync_core::session::SyncReport;

pub struct Keys {
    pub id: PathBuf,
    pub host_key: PathBuf,
    pub authorized: PathBuf,
    pub known_hosts: PathBuf,
}

impl Keys {
    pub fn new(dir: &Path) -> Keys {
        std::fs::create_dir_all(dir).expect("keys dir");
        let k = Keys {
            id: dir.join("id_ed25519"),
            host_key: dir.join("host_key"),
            authorized: dir.join("authorized_keys"),
            known_hosts: dir.join("known_hosts"),
        };
        transport::generate_keypair(&k.id).expect("client key");
        std::fs::copy(dir.join("id_ed25519.pub"), &k.authorized).expect("authorize");
        transport::load_or_create_host_key(&k.host_key).expect("host key");
        k
    }

    pub fn pin(&self, host: &str, port: u16) {
        let key = transport::load_or_create_host_key(&self.host_key).expect("host key");
        let _ = std::fs::remove_file(&self.known_hosts);
        transport::pin_known_host(&self.known_hosts, host, port, key.public_key()).expect("pin");
    }

    pub fn client(&self, peer: &str) -> ClientConfig {
        ClientConfig::new(peer.to_string(), self.id.clone(), self.known_hosts.clone())
    }
}

/// A backup agent serving `backup_root` (staging only) on `listen`, on its own runtime
/// thread, optionally inside the network namespace `netns`. Returns the bound address.
pub fn spawn_backup(
    backup_root: &Path,
    keys: &Keys,
    listen: &str,
    netns: Option<&str>,
) -> std::net::SocketAddr {
    let handler = BackupHandler {
        staging: sync_core::node::Node::new(backup_root).staging_dir(),
        node: "backup".into(),
        restore: None,
    };
    let cfg = ServerConfig::new(
        listen.parse().expect("listen addr"),
        keys.host_key.clone(),
        keys.authorized.clone(),
    );
    let ns = netns.map(str::to_string);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            enter_netns(&ns).expect("enter netns");
        }
        // current_thread: the listener is created on this thread, so in its namespace.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let server = transport::bind(cfg, Arc::new(handler)).await.expect("bind");
            tx.send(server.local_addr().expect("addr"))
                .expect("send addr");
            let _ = server.run().await;
        });
    });
    rx.recv().expect("server address")
}

/// One `ha-sync now` from `primary_root`, optionally from inside `netns`.
pub fn now(
    primary_root: &Path,
    client: ClientConfig,
    netns: Option<&str>,
) -> Result<(Prepared, SyncReport), NowError> {
    let root = primary_root.to_path_buf();
    let ns = netns.map(str::to_string);
    std::thread::spawn(move || {
        if let Some(ns) = ns {
            enter_netns(&ns).expect("enter netns");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(agent::now(NowOptions {
            root,
            client,
            runner: Arc::new(RecordingRunner::new()),
            progress: Box::new(|_, _| {}),
            force: false,
        }))
    })
    .join()
    .expect("now thread")
}

/// Moves this thread into the network namespace made by `ip netns add NAME`.
pub fn enter_netns(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    // SAFETY: valid fd; setns affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Two namespaces joined by a veth pair, removed on drop.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    pub addr_a: String,
    pub addr_b: String,
}

impl NetnsPair {
    /// Creates them, or says why it cannot (not root, no `ip`, no namespaces).
    pub fn create(tag: &str, octet: u8) -> Result<NetnsPair, String> {
        let pid = std::process::id() % 10_000;
        let (a, b) = (format!("hs{tag}a{pid}"), format!("hs{tag}b{pid}"));
        let (va, vb) = (format!("v{tag}a{pid}"), format!("v{tag}b{pid}"));
        let addr_a = format!("198.18.{octet}.1");
        let addr_b = format!("198.18.{octet}.2");
        let pair = NetnsPair {
            a: a.clone(),
            b: b.clone(),
            addr_a: addr_a.clone(),
            addr_b: addr_b.clone(),
        };
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), a.clone()],
            vec!["netns".into(), "add".into(), b.clone()],
            vec![
                "link".into(),
                "add".into(),
                va.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                vb.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                va.clone(),
                "netns".into(),
                a.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                vb.clone(),
                "netns".into(),
                b.clone(),
            ],
            vec![
                "-n".into(),
                a.clone(),
                "addr".into(),
                "add".into(),
                format!("{addr_a}/24"),
                "dev".into(),
                va.clone(),
            ],
            vec![
                "-n".into(),
                b.clone(),
                "addr".into(),
                "add".into(),
                format!("{addr_b}/24"),
                "dev".into(),
                vb.clone(),
            ],
            vec![
                "-n".into(),
                a.clone(),
                "link".into(),
                "set".into(),
                va,
                "up".into(),
            ],
            vec![
                "-n".into(),
                b.clone(),
                "link".into(),
                "set".into(),
                vb,
                "up".into(),
            ],
            vec![
                "-n".into(),
                a.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                b.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        for s in steps {
            let out = std::process::Command::new("ip")
                .args(&s)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    s.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(pair)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", n])
                .output();
        }
    }
}
