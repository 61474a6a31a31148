//! `ha-sync`: parses flags and hands each command to the library that does the job.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Instant;
use sync_core::local;
use sync_core::runner::SystemRunner;

// The static musl build is the product; musl's allocator is the slowest part of it.
#[cfg(all(target_env = "musl", feature = "mimalloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod attic;
mod cluster;
mod demo;
#[cfg(all(test, ha_mem))]
mod mem;
mod net;
mod rpcd;

#[derive(Parser)]
#[command(
    name = "ha-sync",
    version,
    about = "File sync and restore for two-node HA firewalls"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the restore list: the paths the primary syncs, one absolute path a line.
    List {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run the whole sync in-process: ROOT_A as primary into the staging tree of ROOT_B.
    SyncLocal {
        #[arg(long = "from", value_name = "ROOT_A")]
        from: PathBuf,
        #[arg(long = "to", value_name = "ROOT_B")]
        to: PathBuf,
    },
    /// Write an ed25519 key pair FILE and FILE.pub (OpenSSH format).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the backup agent: an SSH server offering only the ha-sync subsystem.
    Serve(net::ServeArgs),
    /// Sync now: restore list, scan, and send what changed to the backup.
    Now(net::NowArgs),
    /// Run the primary's daemon: sync each change as it happens (inotify), every INTERVAL
    /// seconds as a safety net, and on `ha-sync now`; only while primary and VRRP master.
    Watch(net::WatchArgs),
    /// Show the cluster status (the layout of `ns-ha-config status`) and the daemon's figures.
    Status(net::StatusArgs),
    /// Fetch the backup's host key and pin it in the known-hosts file (verify the printed
    /// fingerprint out of band first).
    Pin(net::PinArgs),
    /// Set up and run the HA cluster: the actions of ns-ha-config (also available by running
    /// this binary as `ns-ha-config`).
    Cluster(cluster::ClusterArgs),
    /// The live versions restores replaced or deleted (newest first), `attic PATH` for one
    /// path; `attic restore PATH [GEN]` puts one back.
    Attic(attic::AtticArgs),
    /// Settle the failback conflicts of PATH (listed by `status`): `--keep backup` leaves the
    /// backup's values live (they already are), `--keep primary` puts the primary's back (the
    /// daemon sends them on).
    Resolve(attic::ResolveArgs),
    /// The catch-up gate keepalived runs on the primary: pulls what the peer changed while it
    /// was master; exits 1 (priority held below the peer's) only while the peer is reachable
    /// and holds changes not yet pulled, for at most keepalived.ha_peer.catchup_wait seconds.
    CaughtUp(net::CaughtUpArgs),
    /// What differs between this node's live configuration and the peer's: paths, and
    /// section.option for UCI files; exit 1 when anything differs (as diff(1)).
    Diff(net::DiffArgs),
    /// NethSecurity's rpcd executable `ns.ha` (`list`, `call METHOD` with JSON on stdin):
    /// the incumbent's web UI methods, run by the cluster actions.
    Rpcd(rpcd::RpcdArgs),
    /// Handle a keepalived event on this node: NOTIFY_SYNC (restore staging -> live),
    /// NOTIFY_MASTER, NOTIFY_BACKUP, NOTIFY_FAULT, NOTIFY_STOP.
    Hook {
        event: restore_hooks::Event,
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Demonstrate ha-sync on a generated firewall-like tree between two temporary roots.
    Demo {
        /// Multiply the sample tree's file counts.
        #[arg(long, default_value_t = 1)]
        scale: u64,
        /// Keep the roots in this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() {
    tune_allocator();
    // Die quietly on a closed pipe (`ha-sync list | head`), as Unix tools do.
    // SAFETY: setting a signal disposition to default at startup, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Installed as (or linked to) `ns-ha-config`: the incumbent's command line, same words.
    if cluster::invoked_as_ns_ha_config() {
        if !cluster::ns_ha_config_main() {
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse();
    // The daemons report each sync (procd passes stderr to syslog); commands only warn.
    let level = match cli.cmd {
        // The agents log each session, commit, restore, import and hook (issue 12).
        Command::Watch(_) | Command::Serve(_) | Command::Hook { .. } => "info",
        _ => "warn",
    };
    // `HA_SYNC_LOG`: `LEVEL` or `LEVEL,target=LEVEL,...` (e.g. `info,sync_agent::triggers=debug`).
    // `Targets` parses that syntax without EnvFilter's regex engine (smaller code, less RSS).
    use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = std::env::var("HA_SYNC_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| level.parse().expect("a valid level"));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    if let Err(e) = run(cli) {
        if e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        }) {
            std::process::exit(0);
        }
        eprintln!("ha-sync: {e:#}");
        std::process::exit(1);
    }
}

/// glibc keeps freed memory in per-thread arenas and raises its mmap threshold after a big
/// free, so file-sized buffers stay resident after use. A fixed threshold sends them to
/// mmap (returned on free) and one arena holds the rest: peak RSS follows the live heap, and
/// the idle daemon's small allocations (made by its scan and session threads) share one heap
/// instead of fragmenting two (~200 KB less at idle; sync speed unchanged in bench/run.sh).
///
/// mimalloc (the musl build) keeps freed pages for a second before returning them; a full sync
/// frees and allocates faster than that, and the backup's peak RSS was 59 MB instead of 27 MB
/// (scale 4, bench/README.md). `mi_option_purge_delay` is 15 in mimalloc's `mi_option_e`
/// (v2 and v3); the Rust bindings do not name it.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    #[cfg(all(target_env = "musl", feature = "mimalloc"))]
    // SAFETY: sets a process-wide option; 0 means "purge at once".
    unsafe {
        const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Command::List { root, json } => list(&root, json),
        Command::SyncLocal { from, to } => sync_local(&from, &to),
        Command::Demo { scale, dir } => demo::run(scale, dir.as_deref()),
        Command::Keygen { out } => {
            sync_agent::transport::generate_keypair(&out)?;
            println!("wrote {} and {}.pub", out.display(), out.display());
            Ok(())
        }
        Command::Serve(a) => net::serve(a),
        Command::Hook { event, root, json } => hook(event, &root, json),
        Command::Now(a) => net::now(a),
        Command::Watch(a) => net::watch(a),
        Command::Status(a) => net::status(a),
        Command::Pin(a) => net::pin(a),
        Command::Cluster(a) => {
            if cluster::run_with_words(a) {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Attic(a) => attic::run(a),
        Command::Resolve(a) => attic::resolve(a),
        Command::CaughtUp(a) => net::caught_up(a),
        Command::Diff(a) => net::diff(a),
        Command::Rpcd(a) => rpcd::run(a),
    }
}

fn hook(event: restore_hooks::Event, root: &Path, json: bool) -> Result<()> {
    let out = sync_agent::hook::run(&sync_core::node::Node::new(root), &SystemRunner, event)
        .with_context(|| format!("hook {}", event.as_str()))?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({
                "event": event.as_str(),
                "superseded": out.superseded,
                "restore": out.restore.as_ref().map(|r| serde_json::json!({
                    "generation": r.root.to_hex(), "applied": r.applied, "refused": r.refused,
                    "changed": r.changed, "errors": r.errors,
                })),
                "errors": out.errors,
            }))?
        );
    } else {
        if out.superseded {
            println!(
                "{}: superseded by a later event, nothing done",
                event.as_str()
            );
        }
        if let Some(r) = &out.restore {
            match &r.refused {
                Some(why) => println!("restore refused: {why}"),
                None => println!(
                    "restored generation {}: {} changed",
                    r.root,
                    r.changed.len()
                ),
            }
            for (p, e) in &r.errors {
                eprintln!("restore: {p}: {e}");
            }
        }
        for e in &out.errors {
            eprintln!("{}: {e}", event.as_str());
        }
    }
    if out.errors.is_empty() && out.restore.as_ref().is_none_or(|r| r.errors.is_empty()) {
        Ok(())
    } else {
        anyhow::bail!("{} finished with errors", event.as_str())
    }
}

fn list(root: &Path, json: bool) -> Result<()> {
    let list = sync_core::restore_list::compute(root, &SystemRunner)
        .context("computing the restore list")?;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &list)?;
        writeln!(out)?;
    } else {
        for p in list.paths() {
            writeln!(out, "{p}")?;
        }
    }
    Ok(())
}

/// Human-readable byte count.
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 10 << 20 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 10 << 10 => format!("{:.1} KB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

/// One line saying what a sync moved.
pub fn summary(s: &local::LocalSync, elapsed: std::time::Duration) -> String {
    let p = &s.primary;
    let what = if p.up_to_date {
        "up to date".to_string()
    } else {
        let c = p.commit.as_ref();
        format!(
            "{} changed, {} files sent ({} payload)",
            c.map_or(0, |c| c.changed.len()),
            p.files_sent,
            bytes(p.payload_bytes)
        )
    };
    format!(
        "{what}; {} entries scanned, {} files read ({}); wire {} out / {} in, {} round trips; {:.1} ms",
        s.prepared.stats.entries,
        s.prepared.stats.files_hashed,
        bytes(s.prepared.stats.bytes_hashed),
        bytes(p.traffic.sent),
        bytes(p.traffic.received),
        p.traffic.round_trips,
        elapsed.as_secs_f64() * 1e3
    )
}

fn sync_local(from: &Path, to: &Path) -> Result<()> {
    let t = Instant::now();
    let s = local::sync_local(from, to, &SystemRunner, &mut local::staging_only)
        .with_context(|| format!("syncing {} into {}", from.display(), to.display()))?;
    println!("{}", summary(&s, t.elapsed()));
    if let Some(c) = s.primary.commit.as_ref() {
        for p in c.changed.iter().take(20) {
            println!("  {p}");
        }
        if c.changed.len() > 20 {
            println!("  ... and {} more", c.changed.len() - 20);
        }
    }
    Ok(())
}
