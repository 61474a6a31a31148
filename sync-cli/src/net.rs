//! The networked commands: `serve` (backup agent), `now` and `watch` (primary), `status`,
//! `pin`.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync_agent::agent::{self, NowOptions};
use sync_agent::backup;
use sync_agent::control::{self, ControlError, NowReply};
use sync_agent::daemon::{self, DaemonConfig};
use sync_agent::status;
use sync_agent::transport::{self, ClientConfig};
use sync_core::node::{Node, PeerConfig};
use sync_core::runner::SystemRunner;

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Address and port to listen on (on a router: the HA link address).
    #[arg(long, default_value = "0.0.0.0:65022")]
    listen: SocketAddr,
    /// ed25519 host key, generated on first start [default: ROOT/etc/ha-sync/host_key]
    #[arg(long)]
    host_key: Option<PathBuf>,
    /// OpenSSH authorized_keys of the primaries allowed in [default: ROOT/etc/ha-sync/authorized_keys]
    #[arg(long)]
    authorized_keys: Option<PathBuf>,
    /// Only stage what arrives; do not restore it to the live tree.
    #[arg(long)]
    staging_only: bool,
}

/// Where the primary's syncs go, and with which keys.
#[derive(Args)]
pub struct PeerArgs {
    /// Backup agent ADDR:PORT [default: keepalived.ha_peer address and ssh_port]
    #[arg(long)]
    peer: Option<String>,
    /// Cluster private key [default: keepalived.ha_peer.ssh_key, else ROOT/etc/ha-sync/id_ed25519]
    #[arg(long)]
    key: Option<PathBuf>,
    /// OpenSSH known_hosts pinning the backup's host key [default: ROOT/etc/ha-sync/known_hosts]
    #[arg(long)]
    known_hosts: Option<PathBuf>,
}

impl PeerArgs {
    /// The client settings: these flags, else the node's configuration under `root`.
    fn client(self, root: &Path) -> Result<ClientConfig> {
        let (peer, pc) = peer_of(root, self.peer)?;
        Ok(ClientConfig::new(
            peer,
            self.key.unwrap_or(pc.key),
            self.known_hosts
                .unwrap_or_else(|| Node::new(root).keys().known_hosts),
        ))
    }
}

#[derive(Args)]
pub struct NowArgs {
    #[arg(long, default_value = "/")]
    root: PathBuf,
    #[command(flatten)]
    to: PeerArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// The daemon's control socket: when a daemon listens there, it syncs (with its own
    /// peer and keys) and this prints its result [default: ROOT/var/run/ha-sync.sock]
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Sync in this process even when a daemon runs.
    #[arg(long)]
    no_daemon: bool,
    /// Send even though this node is not the active primary (a backup, a primary that is
    /// VRRP backup or fault): overwrites the peer's configuration with this node's.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct CaughtUpArgs {
    #[arg(long, default_value = "/")]
    root: PathBuf,
    #[command(flatten)]
    to: PeerArgs,
}

/// `ha-sync caught-up`: exit 0 when this node may take the VIP, 1 while it holds back.
pub fn caught_up(a: CaughtUpArgs) -> Result<()> {
    let node = Node::new(&a.root);
    if node.role() != Some(sync_core::node::Role::Primary) {
        println!("{}", sync_agent::pull::CatchUp::NotPrimary);
        return Ok(());
    }
    let client = a.to.client(&a.root)?;
    let runner: std::sync::Arc<dyn sync_core::runner::Runner> = std::sync::Arc::new(SystemRunner);
    let r = runtime()?.block_on(sync_agent::pull::catch_up(&node, &client, runner));
    println!("{r}");
    // keepalived keeps no output of its scripts: the last answer stays for the admin.
    let last = node.state_dir().join(sync_agent::pull::CATCHUP_LAST);
    let line = format!("{} {r}\n", sync_core::clock::now_secs());
    let _ = sync_core::fsx::write_atomic(
        &last,
        line.as_bytes(),
        0o644,
        sync_core::fsx::Durability::Visible,
    );
    if r.holds_back() {
        std::process::exit(1);
    }
    Ok(())
}

#[derive(Args)]
pub struct DiffArgs {
    #[arg(long, default_value = "/")]
    root: PathBuf,
    #[command(flatten)]
    to: PeerArgs,
    #[arg(long)]
    json: bool,
}

/// `ha-sync diff`: this node's live tree against the peer's.
pub fn diff(a: DiffArgs) -> Result<()> {
    let node = Node::new(&a.root);
    let client = a.to.client(&a.root)?;
    let peer = client.peer.clone();
    let runner: Arc<dyn sync_core::runner::Runner> = Arc::new(SystemRunner);
    let diffs = runtime()?.block_on(async {
        let conn = transport::Connection::open(&client).await?;
        let r = sync_agent::pull::diff(&conn, &node, runner).await;
        conn.disconnect().await;
        r.map_err(anyhow::Error::from)
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&diffs)?);
    } else if diffs.is_empty() {
        println!("in sync: this node and {peer} hold the same configuration");
    } else {
        println!("not in sync: {} difference(s) with {peer}", diffs.len());
        for d in &diffs {
            let at = d.at.as_deref().map(|a| format!(" {a}")).unwrap_or_default();
            println!("  {}{at}: here {} | peer {}", d.path, d.primary, d.backup);
        }
    }
    if !diffs.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

#[derive(Args)]
pub struct WatchArgs {
    #[arg(long, default_value = "/")]
    root: PathBuf,
    #[command(flatten)]
    to: PeerArgs,
    /// Seconds between reconcile syncs, the safety net behind inotify (0: none)
    #[arg(long, default_value_t = 60)]
    interval: u64,
    /// Control socket for `ha-sync now` and `ha-sync status` [default: ROOT/var/run/ha-sync.sock]
    #[arg(long)]
    socket: Option<PathBuf>,
}

#[derive(Args)]
pub struct StatusArgs {
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Print JSON (the keys of `ns-ha-config status`, plus `sync`, `daemon` and `alerts`).
    #[arg(long)]
    json: bool,
    /// The daemon's control socket [default: ROOT/var/run/ha-sync.sock]
    #[arg(long)]
    socket: Option<PathBuf>,
}

#[derive(Args)]
pub struct PinArgs {
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Backup agent ADDR:PORT [default: from keepalived.ha_peer]
    peer: Option<String>,
    #[arg(long)]
    known_hosts: Option<PathBuf>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let node = Node::new(&a.root);
    let mut opts = backup::Options::new(&node, a.listen, Arc::new(SystemRunner));
    opts.staging_only = a.staging_only;
    if let Some(k) = a.host_key {
        opts.host_key = k;
    }
    if let Some(k) = a.authorized_keys {
        opts.authorized_keys = k;
    }
    runtime()?.block_on(async move {
        let server = backup::bind(&node, opts).await?;
        // The cluster actions (ns-ha-config on the primary), for the cluster key only.
        let server = ha_cluster::remote::register(server, &a.root, Arc::new(SystemRunner));
        eprintln!(
            "ha-sync: backup agent listening on {}",
            server.local_addr()?
        );
        // The drift check, while this node is a backup (never on staging-only agents).
        let drift = (!a.staging_only)
            .then(|| tokio::spawn(sync_agent::drift::run(node.clone(), Arc::new(SystemRunner))));
        server
            .run_until(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        if let Some(d) = drift {
            d.abort();
        }
        Ok(())
    })
}

fn peer_of(root: &Path, peer: Option<String>) -> Result<(String, PeerConfig)> {
    let pc = Node::new(root).peer()?;
    let peer = match peer.or_else(|| pc.addr()) {
        Some(p) => p,
        None => bail!("no peer: pass --peer ADDR:PORT or set keepalived.ha_peer.address"),
    };
    Ok((peer, pc))
}

/// Prints what the daemon answered to `now`; an error when its sync failed.
fn daemon_now(reply: NowReply, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(&reply)?);
    } else if let Some(r) = &reply.sync {
        let what = if !r.network || r.up_to_date {
            "up to date".to_string()
        } else {
            format!("{} changed, {} files sent", r.changed, r.files_sent)
        };
        println!(
            "{}: {what}; {} out / {} in (protocol), round_trips={}; {:.1} ms (by the daemon: {})",
            reply.peer,
            crate::bytes(r.wire_sent),
            crate::bytes(r.wire_received),
            r.round_trips,
            r.duration_ms,
            r.status
        );
        if let Some(rs) = &r.restore {
            if let Some(why) = &rs.refused {
                println!("backup did not restore: {why}");
            }
            for (p, e) in &rs.errors {
                println!("backup restore error: {p}: {e}");
            }
        }
    }
    let why = reply.error.as_deref().unwrap_or("unknown error");
    match (&reply.sync, reply.ok) {
        (_, true) => {}
        (None, false) => bail!("the daemon did not sync: {why}"),
        (Some(_), false) => bail!("the daemon's sync to {} failed: {why}", reply.peer),
    }
    Ok(())
}

pub fn now(a: NowArgs) -> Result<()> {
    if a.force {
        eprintln!(
            "ha-sync: --force: this node's tree goes to the peer whatever the VRRP states say"
        );
    }
    if !a.no_daemon && !a.force {
        let socket = a
            .socket
            .clone()
            .unwrap_or_else(|| Node::new(&a.root).control_socket());
        match control::now(&socket) {
            Ok(reply) => return daemon_now(reply, a.json),
            // No daemon: sync in this process, as before there was one.
            Err(ControlError::NoDaemon { .. }) => {}
            Err(e) => return Err(e).context("asking the daemon to sync"),
        }
    }
    let client = a.to.client(&a.root)?;
    let peer = client.peer.clone();
    let t = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::hidden();
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .expect("static template"),
        );
        pb
    });
    let pb = bar.clone();
    let progress = Box::new(move |files: u64, bytes: u64| {
        if let Some(pb) = &pb {
            // Only large syncs deserve a bar: it appears after the first 100 files.
            if files == 100 {
                pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                pb.enable_steady_tick(Duration::from_millis(120));
            }
            pb.set_message(format!("{files} files, {}", crate::bytes(bytes)));
        }
    });
    let res = runtime()?.block_on(agent::now(NowOptions {
        root: a.root.clone(),
        client,
        runner: Arc::new(SystemRunner),
        progress,
        force: a.force,
    }));
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    let (prepared, rep) = res.with_context(|| format!("sync to {peer}"))?;
    let elapsed = t.elapsed();
    let changed = rep.commit.as_ref().map_or(0, |c| c.changed.len());
    if a.json {
        let v = serde_json::json!({
            "peer": peer,
            "up_to_date": rep.up_to_date,
            "root": rep.root.to_hex(),
            "changed": changed,
            "files_sent": rep.files_sent,
            "payload_bytes": rep.payload_bytes,
            "bytes_sent": rep.traffic.sent,
            "bytes_received": rep.traffic.received,
            "round_trips": rep.traffic.round_trips,
            "entries": prepared.stats.entries,
            "files_read": prepared.stats.files_hashed,
            "elapsed_ms": elapsed.as_secs_f64() * 1e3,
            "restore": rep.restore.as_ref().map(|r| serde_json::json!({"applied": r.applied, "refused": r.refused, "errors": r.errors})),
        });
        println!("{v}");
    } else {
        let what = if rep.up_to_date {
            "up to date".to_string()
        } else {
            format!("{changed} changed, {} files sent", rep.files_sent)
        };
        println!(
            "{peer}: {what}; {} out / {} in (protocol), round_trips={}; {:.1} ms",
            crate::bytes(rep.traffic.sent),
            crate::bytes(rep.traffic.received),
            rep.traffic.round_trips,
            elapsed.as_secs_f64() * 1e3
        );
        if let Some(r) = &rep.restore {
            if let Some(why) = &r.refused {
                println!("backup did not restore: {why}");
            }
            for (p, e) in &r.errors {
                println!("backup restore error: {p}: {e}");
            }
        }
    }
    Ok(())
}

pub fn pin(a: PinArgs) -> Result<()> {
    let (peer, _) = peer_of(&a.root, a.peer)?;
    let kh = a
        .known_hosts
        .unwrap_or_else(|| Node::new(&a.root).keys().known_hosts);
    let (host, port) = transport::client::parse_peer(&peer)?;
    let key = runtime()?.block_on(transport::fetch_host_key(&peer))?;
    transport::pin_known_host(&kh, &host, port, &key)?;
    println!(
        "pinned {} for {peer} in {}",
        transport::keys::fingerprint(&key),
        kh.display()
    );
    Ok(())
}

pub fn watch(a: WatchArgs) -> Result<()> {
    let client = a.to.client(&a.root)?;
    let mut cfg = DaemonConfig::new(a.root.clone(), client);
    cfg.reconcile = Duration::from_secs(a.interval);
    if let Some(s) = a.socket {
        cfg.socket = s;
    }
    // One thread drives the daemon; scans and sessions run on tokio's blocking threads.
    // An idle daemon then holds few threads and little memory.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let shutdown = async {
            let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        tracing::info!("ha-sync daemon starting for {}", cfg.root.display());
        daemon::run(cfg, Arc::new(SystemRunner), shutdown).await
    })?;
    Ok(())
}

pub fn status(a: StatusArgs) -> Result<()> {
    let socket = a
        .socket
        .unwrap_or_else(|| Node::new(&a.root).control_socket());
    let live = control::status(&socket).ok();
    sync_core::keepalived::refresh_json(&a.root, &SystemRunner);
    let st = status::collect(&a.root, live);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st.to_json())?);
    } else {
        print!("{}", st.render());
    }
    Ok(())
}
