//! Real SSH on 127.0.0.1: the agent's server and the primary's client, keys made by our code.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client::{self, AuthResult};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, MethodKind};
use sync_agent::transport::keys::{self, load_public_key};
use sync_agent::transport::{
    self, pin_known_host, ClientConfig, PeerInfo, ReadWrite, ServerConfig, StreamHandler,
    TransportError,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const BIG: usize = 20 * 1024 * 1024;

/// Test protocol: one command byte, then per command:
/// - `H` len:u64 data -> blake3(data) (32 bytes)
/// - `D` len:u64 -> len bytes of `pattern`
/// - `B` -> tells the test it started, waits for the test's release, writes "ok"
/// - `F` -> fails with "boom: /etc/ha-sync/x"
/// - `P` -> writes the peer's key fingerprint
struct TestHandler {
    started: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect()
}

/// `pattern(BIG)`, computed once (the test crate is not optimised).
fn big_pattern() -> &'static [u8] {
    static DATA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DATA.get_or_init(|| pattern(BIG))
}

fn read_u64(s: &mut dyn ReadWrite) -> io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

impl StreamHandler for TestHandler {
    fn handle(&self, s: &mut dyn ReadWrite, peer: &PeerInfo) -> Result<(), String> {
        let io = |e: io::Error| e.to_string();
        let mut cmd = [0u8; 1];
        s.read_exact(&mut cmd).map_err(io)?;
        match cmd[0] {
            b'H' => {
                let mut left = read_u64(s).map_err(io)? as usize;
                let mut hasher = blake3::Hasher::new();
                let mut buf = vec![0u8; 256 * 1024];
                while left > 0 {
                    let n = s.read(&mut buf[..left.min(256 * 1024)]).map_err(io)?;
                    if n == 0 {
                        return Err("short upload".into());
                    }
                    hasher.update(&buf[..n]);
                    left -= n;
                }
                s.write_all(hasher.finalize().as_bytes()).map_err(io)?;
                s.flush().map_err(io)
            }
            b'D' => {
                let len = read_u64(s).map_err(io)? as usize;
                let data = big_pattern();
                let mut left = len;
                while left > 0 {
                    let n = left.min(data.len());
                    s.write_all(&data[..n]).map_err(io)?;
                    left -= n;
                }
                s.flush().map_err(io)
            }
            b'B' => {
                let _ = self.started.lock().unwrap().send(());
                let _ = self.release.lock().unwrap().recv_timeout(TEST_TIMEOUT);
                s.write_all(b"ok").map_err(io)?;
                s.flush().map_err(io)
            }
            b'F' => Err("boom: /etc/ha-sync/x".into()),
            b'P' => {
                s.write_all(peer.key_fingerprint.as_bytes()).map_err(io)?;
                s.flush().map_err(io)
            }
            c => Err(format!("unknown command {c}")),
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    addr: SocketAddr,
    client: ClientConfig,
    started: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), TransportError>>>,
}

impl Fixture {
    async fn new() -> Fixture {
        Self::with_server(|s| s).await
    }

    async fn with_server(
        customize: impl FnOnce(transport::Server) -> transport::Server,
    ) -> Fixture {
        Self::build(|_| {}, customize).await
    }

    /// A server with its limits tuned (short deadlines keep the tests short).
    async fn with_config(tune: impl FnOnce(&mut ServerConfig)) -> Fixture {
        Self::build(tune, |s| s).await
    }

    async fn build(
        tune: impl FnOnce(&mut ServerConfig),
        customize: impl FnOnce(transport::Server) -> transport::Server,
    ) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let client_key = dir.join("primary/id_ed25519");
        keys::generate_keypair(&client_key).unwrap();
        let authorized = dir.join("backup/authorized_keys");
        std::fs::create_dir_all(dir.join("backup")).unwrap();
        std::fs::write(
            &authorized,
            format!(
                "# the primary\nrestrict,command=\"/bin/false\" {}",
                std::fs::read_to_string(dir.join("primary/id_ed25519.pub")).unwrap()
            ),
        )
        .unwrap();
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let handler = Arc::new(TestHandler {
            started: Mutex::new(started_tx),
            release: Mutex::new(release_rx),
        });
        let mut cfg = ServerConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            dir.join("backup/host_key"),
            authorized,
        );
        cfg.idle_timeout = Duration::from_secs(30);
        tune(&mut cfg);
        let server = customize(transport::bind(cfg, handler).await.unwrap());
        let addr = server.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(server.run_until(async {
            let _ = rx.await;
        }));
        let known_hosts = dir.join("primary/known_hosts");
        let host_pub = load_public_key(&dir.join("backup/host_key.pub")).unwrap();
        pin_known_host(&known_hosts, "127.0.0.1", addr.port(), &host_pub).unwrap();
        let client = ClientConfig::new(addr.to_string(), client_key, known_hosts);
        Fixture {
            _dir: tmp,
            dir,
            addr,
            client,
            started,
            release,
            shutdown: Some(tx),
            server: Some(join),
        }
    }

    /// Stops the server; returns the temp dir so files outlive it when needed.
    async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.server.take() {
            j.await.unwrap().unwrap();
        }
        self._dir
    }
}

/// Upload `data`, get its blake3 back.
fn upload(s: &mut dyn ReadWrite, data: &[u8]) -> io::Result<[u8; 32]> {
    s.write_all(b"H")?;
    s.write_all(&(data.len() as u64).to_be_bytes())?;
    s.write_all(data)?;
    s.flush()?;
    let mut h = [0u8; 32];
    s.read_exact(&mut h)?;
    Ok(h)
}

async fn small_session(cfg: &ClientConfig) -> Result<io::Result<[u8; 32]>, TransportError> {
    transport::run(cfg, |s| upload(s, b"hello")).await
}

fn hello_hash() -> [u8; 32] {
    *blake3::hash(b"hello").as_bytes()
}

async fn with_timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test hung")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_20_mib_both_ways() {
    with_timeout(async {
        let fx = Fixture::new().await;
        let expected = *blake3::hash(big_pattern()).as_bytes();

        let t = Instant::now();
        let got = transport::run(&fx.client, |s| upload(s, big_pattern())).await.unwrap().unwrap();
        let up = t.elapsed();
        assert_eq!(got, expected);

        let t = Instant::now();
        let (hash, len) = transport::run(&fx.client, |s| -> io::Result<([u8; 32], usize)> {
            s.write_all(b"D")?;
            s.write_all(&(BIG as u64).to_be_bytes())?;
            s.flush()?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 128 * 1024];
            let mut total = 0;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                total += n;
            }
            Ok((*hasher.finalize().as_bytes(), total))
        })
        .await
        .unwrap()
        .unwrap();
        let down = t.elapsed();
        assert_eq!(len, BIG);
        assert_eq!(hash, expected);
        let mib = BIG as f64 / (1024.0 * 1024.0);
        println!(
            "20 MiB upload {:.0} MiB/s, download {:.0} MiB/s (incl. connect+auth; debug build of sync-agent)",
            mib / up.as_secs_f64(),
            mib / down.as_secs_f64()
        );

        // Key fingerprint reaches the handler.
        let fp = transport::run(&fx.client, |s| -> io::Result<String> {
            s.write_all(b"P")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .await
        .unwrap()
        .unwrap();
        let pubkey = load_public_key(&fx.dir.join("primary/id_ed25519.pub")).unwrap();
        assert_eq!(fp, keys::fingerprint(&pubkey));
        let _ = fx.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_key_is_refused() {
    with_timeout(async {
        let fx = Fixture::new().await;
        let other = fx.dir.join("other_key");
        keys::generate_keypair(&other).unwrap();
        let mut cfg = fx.client.clone();
        cfg.key = other;
        let err = small_session(&cfg).await.unwrap_err();
        assert!(
            matches!(err, TransportError::AuthRejected { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("authentication"), "{err}");

        // authorized_keys is read per connection: adding the key needs no restart.
        let line = std::fs::read_to_string(fx.dir.join("other_key.pub")).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(fx.dir.join("backup/authorized_keys"))
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
        assert_eq!(small_session(&cfg).await.unwrap().unwrap(), hello_hash());
        let _ = fx.stop().await;
    })
    .await
}

struct AcceptAny;

impl client::Handler for AcceptAny {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _k: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

async fn raw_client(addr: SocketAddr) -> client::Handle<AcceptAny> {
    client::connect(Arc::new(client::Config::default()), addr, AcceptAny)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_none_and_keyboard_interactive_are_refused() {
    with_timeout(async {
        let fx = Fixture::new().await;
        let mut c = raw_client(fx.addr).await;
        match c.authenticate_none("root").await.unwrap() {
            AuthResult::Failure {
                remaining_methods, ..
            } => assert_eq!(&remaining_methods[..], &[MethodKind::PublicKey]),
            AuthResult::Success => panic!("none auth accepted"),
        }
        match c.authenticate_password("root", "root").await.unwrap() {
            AuthResult::Failure {
                remaining_methods, ..
            } => assert_eq!(&remaining_methods[..], &[MethodKind::PublicKey]),
            AuthResult::Success => panic!("password accepted"),
        }
        let r = c
            .authenticate_keyboard_interactive_start("root", None)
            .await
            .unwrap();
        assert!(
            matches!(r, client::KeyboardInteractiveAuthResponse::Failure { .. }),
            "{r:?}"
        );
        let _ = fx.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_is_refused_with_repin_advice() {
    with_timeout(async {
        let fx = Fixture::new().await;
        let impostor = fx.dir.join("impostor");
        keys::generate_keypair(&impostor).unwrap();
        let kh = fx.dir.join("changed_known_hosts");
        std::fs::write(&kh, "# pinned by hand\n").unwrap();
        let key = load_public_key(&fx.dir.join("impostor.pub")).unwrap();
        pin_known_host(&kh, "127.0.0.1", fx.addr.port(), &key).unwrap();
        let mut cfg = fx.client.clone();
        cfg.known_hosts = kh.clone();
        let err = small_session(&cfg).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, TransportError::HostKeyChanged { line: 2, .. }),
            "{err:?}"
        );
        assert!(msg.contains("HOST KEY CHANGED"), "{msg}");
        assert!(
            msg.contains(&format!("[127.0.0.1]:{}", fx.addr.port())),
            "{msg}"
        );
        assert!(msg.contains(&format!("{} line 2", kh.display())), "{msg}");
        assert!(msg.contains("remove that line"), "{msg}");
        let _ = fx.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_refused_then_pinned_via_fetch() {
    with_timeout(async {
        let fx = Fixture::new().await;
        let kh = fx.dir.join("empty_known_hosts");
        let mut cfg = fx.client.clone();
        cfg.known_hosts = kh.clone();
        let err = small_session(&cfg).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, TransportError::HostKeyUnknown { .. }),
            "{err:?}"
        );
        assert!(
            msg.contains(&format!(
                "host key for [127.0.0.1]:{} (SHA256:",
                fx.addr.port()
            )),
            "{msg}"
        );
        assert!(msg.contains(&format!("not in {}", kh.display())), "{msg}");
        assert!(msg.contains("ha-sync pin"), "{msg}");

        let key = transport::fetch_host_key(&fx.addr.to_string())
            .await
            .unwrap();
        let real = load_public_key(&fx.dir.join("backup/host_key.pub")).unwrap();
        assert_eq!(key.key_data(), real.key_data());
        pin_known_host(&kh, "127.0.0.1", fx.addr.port(), &key).unwrap();
        assert_eq!(small_session(&cfg).await.unwrap().unwrap(), hello_hash());
        let _ = fx.stop().await;
    })
    .await
}

fn ssh_keygen(kind: &str, path: &Path) -> bool {
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", "test", "-f"])
        .arg(path)
        .args(if kind == "rsa" {
            &["-b", "2048"][..]
        } else {
            &[][..]
        })
        .status();
    matches!(status, Ok(s) if s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_generated_rsa_and_ed25519_keys_authenticate() {
    with_timeout(async {
        let fx = Fixture::new().await;
        for kind in ["rsa", "ed25519"] {
            let path = fx.dir.join(format!("id_{kind}"));
            if !ssh_keygen(kind, &path) {
                println!("SKIPPED: ssh-keygen not available (apt-get install openssh-client)");
                return;
            }
            let key = keys::load_private_key(&path).unwrap();
            assert_eq!(key.algorithm().is_rsa(), kind == "rsa");
            let line = std::fs::read_to_string(fx.dir.join(format!("id_{kind}.pub"))).unwrap();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(fx.dir.join("backup/authorized_keys"))
                .unwrap();
            f.write_all(line.as_bytes()).unwrap();
            let mut cfg = fx.client.clone();
            cfg.key = path;
            assert_eq!(
                small_session(&cfg).await.unwrap().unwrap(),
                hello_hash(),
                "{kind}"
            );
        }
        let _ = fx.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_session_is_busy_until_the_first_ends() {
    with_timeout(async {
        let fx = Fixture::new().await;
        let cfg = fx.client.clone();
        let first = tokio::spawn(async move {
            transport::run(&cfg, |s| -> io::Result<Vec<u8>> {
                s.write_all(b"B")?;
                let mut out = Vec::new();
                s.read_to_end(&mut out)?;
                Ok(out)
            })
            .await
        });
        // Wait until the first handler is running.
        tokio::task::block_in_place(|| fx.started.recv_timeout(TEST_TIMEOUT)).unwrap();

        // Even a client that writes a lot without reading gets the answer.
        let err = transport::run(&fx.client, |s| upload(s, big_pattern()))
            .await
            .unwrap_err();
        match &err {
            TransportError::Remote { status, message } => {
                assert_eq!(*status, transport::EXIT_BUSY);
                assert!(
                    message.starts_with("busy: another sync session is running (from 127.0.0.1:"),
                    "{message}"
                );
            }
            e => panic!("expected busy, got {e:?}"),
        }

        fx.release.send(()).unwrap();
        let out = first.await.unwrap().unwrap().unwrap();
        assert_eq!(out, b"ok");
        assert_eq!(
            small_session(&fx.client).await.unwrap().unwrap(),
            hello_hash()
        );
        let _ = fx.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_exec_pty_and_other_subsystems_are_refused() {
    with_timeout(async {
        let fx = Fixture::with_server(|s| {
            s.with_action(
                "ping",
                Arc::new(|s: &mut dyn ReadWrite, _p: &PeerInfo| {
                    s.write_all(b"pong").map_err(|e| e.to_string())
                }),
            )
        })
        .await;
        let mut c = raw_client(fx.addr).await;
        let key = keys::load_private_key(&fx.client.key).unwrap();
        let auth = c
            .authenticate_publickey("root", PrivateKeyWithHashAlg::new(Arc::new(key), None))
            .await
            .unwrap();
        assert!(auth.success());

        async fn expect_failure(ch: &mut russh::Channel<client::Msg>) {
            loop {
                match ch.wait().await {
                    Some(ChannelMsg::Failure) => return,
                    Some(ChannelMsg::Success) => panic!("request accepted"),
                    None | Some(ChannelMsg::Close) => panic!("channel closed"),
                    Some(_) => {}
                }
            }
        }
        let mut ch = c.channel_open_session().await.unwrap();
        ch.exec(true, "ls /").await.unwrap();
        expect_failure(&mut ch).await;
        ch.request_shell(true).await.unwrap();
        expect_failure(&mut ch).await;
        ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
            .await
            .unwrap();
        expect_failure(&mut ch).await;
        ch.set_env(true, "LD_PRELOAD", "/tmp/x.so").await.unwrap();
        expect_failure(&mut ch).await;
        ch.agent_forward(true).await.unwrap();
        expect_failure(&mut ch).await;
        ch.request_subsystem(true, "sftp").await.unwrap();
        expect_failure(&mut ch).await;

        // Port forwarding channels are refused.
        assert!(c
            .channel_open_direct_tcpip("127.0.0.1", 22, "127.0.0.1", 4000)
            .await
            .is_err());
        assert!(c.tcpip_forward("127.0.0.1", 0).await.is_err());

        // A registered action works on the same connection.
        let mut ch = c.channel_open_session().await.unwrap();
        ch.exec(true, "ping").await.unwrap();
        let mut out = Vec::new();
        let mut status = None;
        while let Some(m) = ch.wait().await {
            match m {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        assert_eq!(out, b"pong");
        assert_eq!(status, Some(0));
        let _ = fx.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_error_reaches_the_client() {
    with_timeout(async {
        let fx = Fixture::new().await;
        let err = transport::run(&fx.client, |s| -> io::Result<()> {
            s.write_all(b"F")?;
            s.flush()
        })
        .await
        .unwrap_err();
        match &err {
            TransportError::Remote { status, message } => {
                assert_eq!(*status, transport::EXIT_ERROR);
                assert_eq!(message, "boom: /etc/ha-sync/x");
            }
            e => panic!("expected remote error, got {e:?}"),
        }
        assert!(err.to_string().contains("boom: /etc/ha-sync/x"));
        let _ = fx.stop().await;
    })
    .await
}

/// Retries while the server is still noticing the previous client is gone.
async fn session_eventually_works(cfg: &ClientConfig) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match small_session(cfg).await {
            Ok(r) => {
                assert_eq!(r.unwrap(), hello_hash());
                return;
            }
            Err(TransportError::Remote { status, .. })
                if status == transport::EXIT_BUSY && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("server no longer serving: {e}"),
        }
    }
}

/// Logs in with a raw russh client over a TCP socket the test can cut.
async fn killable_session(
    fx: &Fixture,
) -> (
    std::net::TcpStream,
    russh::Channel<client::Msg>,
    client::Handle<AcceptAny>,
) {
    let std_sock = std::net::TcpStream::connect(fx.addr).unwrap();
    let killer = std_sock.try_clone().unwrap();
    std_sock.set_nonblocking(true).unwrap();
    let sock = tokio::net::TcpStream::from_std(std_sock).unwrap();
    let mut c = client::connect_stream(Arc::new(client::Config::default()), sock, AcceptAny)
        .await
        .unwrap();
    let key = keys::load_private_key(&fx.client.key).unwrap();
    assert!(c
        .authenticate_publickey("root", PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .unwrap()
        .success());
    let mut ch = c.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "ha-sync").await.unwrap();
    loop {
        match ch.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure) | None => panic!("subsystem refused"),
            _ => {}
        }
    }
    (killer, ch, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_survives_clients_killed_mid_stream() {
    with_timeout(async {
        let fx = Fixture::new().await;

        // Killed while the handler waits for upload data.
        let (killer, ch, handle) = killable_session(&fx).await;
        let mut msg = b"H".to_vec();
        msg.extend_from_slice(&(BIG as u64).to_be_bytes());
        msg.extend_from_slice(&pattern(1024 * 1024));
        ch.data_bytes(msg).await.unwrap();
        killer.shutdown(std::net::Shutdown::Both).unwrap();
        drop((ch, handle));
        session_eventually_works(&fx.client).await;

        // Killed while the handler is blocked writing (window exhausted, nobody reading).
        let (killer, mut ch, handle) = killable_session(&fx).await;
        let mut msg = b"D".to_vec();
        msg.extend_from_slice(&(256u64 * 1024 * 1024).to_be_bytes());
        ch.data_bytes(msg).await.unwrap();
        let mut got = 0;
        while got < 1024 * 1024 {
            match ch.wait().await {
                Some(ChannelMsg::Data { data }) => got += data.len(),
                Some(_) => {}
                None => panic!("closed early"),
            }
        }
        killer.shutdown(std::net::Shutdown::Both).unwrap();
        drop((ch, handle));
        session_eventually_works(&fx.client).await;

        // A client whose closure returns early (EOF mid-upload) is an ordinary handler error.
        let err = transport::run(&fx.client, |s| -> io::Result<()> {
            s.write_all(b"H")?;
            s.write_all(&100u64.to_be_bytes())?;
            s.write_all(b"short")
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&err, TransportError::Remote { status: 1, message } if message.contains("short upload")),
            "{err:?}"
        );
        session_eventually_works(&fx.client).await;
        let _ = fx.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_are_clear() {
    with_timeout(async {
        let fx = Fixture::new().await;
        let mut cfg = fx.client.clone();
        cfg.key = fx.dir.join("missing_key");
        let err = small_session(&cfg).await.unwrap_err().to_string();
        assert!(err.contains("missing_key"), "{err}");

        // Nothing listens there any more.
        let port = fx.addr.port();
        let good = fx.client.clone();
        let _dir = fx.stop().await;
        let mut cfg2 = good;
        cfg2.peer = format!("127.0.0.1:{port}");
        let err = small_session(&cfg2).await.unwrap_err();
        assert!(matches!(err, TransportError::Connect { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_queued_before_the_remote_closes_is_not_lost() {
    with_timeout(async {
        let fx = Fixture::new().await;
        // Fits in the SSH window: the server sends it all, EOF, exit status and close while
        // the client is not reading yet; every byte must still come out of the stream.
        const LEN: usize = 6 * 1024 * 1024;
        for _ in 0..3 {
            let got = transport::run(&fx.client, |s| -> io::Result<Vec<u8>> {
                s.write_all(b"D")?;
                s.write_all(&(LEN as u64).to_be_bytes())?;
                s.flush()?;
                std::thread::sleep(Duration::from_millis(300));
                let mut out = Vec::new();
                s.read_to_end(&mut out)?;
                Ok(out)
            })
            .await
            .unwrap()
            .unwrap();
            assert_eq!(got.len(), LEN);
            assert!(got[..] == big_pattern()[..LEN]);
        }
        let _ = fx.stop().await;
    })
    .await
}

/// Issue 14, finding 5: 50 TCP connections that never say a word, from ten addresses, used to
/// fill the connection cap and keep the primary out for minutes. Now each source may hold 4
/// connections not logged in, 16 in all (the oldest dropped for a newcomer), and each must log
/// in within the login deadline: the primary gets in at once, and every idle connection is
/// closed by the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_floods_do_not_keep_the_primary_out() {
    with_timeout(async {
        let fx = Fixture::with_config(|c| c.auth_timeout = Duration::from_secs(3)).await;
        let mut idle = Vec::new();
        for i in 0..50u8 {
            let src = std::net::IpAddr::from([127, 0, 0, 2 + i % 10]);
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(src, 0)).unwrap();
            if let Ok(s) = sock.connect(fx.addr).await {
                idle.push(s);
            }
        }
        assert!(idle.len() >= 40, "the flood connected: {}", idle.len());
        let r = small_session(&fx.client)
            .await
            .expect("the primary gets in past the flood");
        assert_eq!(r.unwrap(), hello_hash());
        // Every idle connection is closed by the agent (at accept, for room, or at the login
        // deadline): reading it ends.
        for mut s in idle {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 256];
            loop {
                match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => continue, // the agent's version line
                    Err(_) => panic!("an idle connection outlived the login deadline"),
                }
            }
        }
        // And the agent still serves.
        assert_eq!(
            small_session(&fx.client).await.unwrap().unwrap(),
            hello_hash()
        );
        fx.stop().await;
    })
    .await
}

/// Issue 14, finding 5: a logged-in session that sends a byte and then nothing held the one
/// session slot for good (keepalives kept the connection alive). The agent ends a session that
/// keeps it waiting past `session_idle`, saying why, and the primary's next session gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_goes_silent_frees_the_slot() {
    with_timeout(async {
        let fx = Fixture::with_config(|c| c.session_idle = Duration::from_secs(2)).await;
        let (_killer, mut ch, _c) = killable_session(&fx).await;
        // A command byte, then silence: the handler waits for the length.
        ch.data(&b"H"[..]).await.unwrap();
        session_eventually_works(&fx.client).await;
        let mut stderr = Vec::new();
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::ExtendedData { data, ext: 1 } => stderr.extend_from_slice(&data),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&stderr);
        assert!(text.contains("sent nothing for too long"), "{text}");
        fx.stop().await;
    })
    .await
}
