//! `ha-sync cluster ACTION ...` and the `ns-ha-config` entry (the same words, when the binary
//! is run through a link or wrapper named `ns-ha-config`). Parsing and printing only: the
//! actions live in the `ha-cluster` crate.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ha_cluster::keepalived::{Notify, RenderOptions};
use ha_cluster::remote::SshPeer;
use ha_cluster::request::{BootstrapRequest, Peer};
use ha_cluster::{actions, bootstrap, upgrade, Ctx};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use sync_agent::transport::{PtySize, ShellIo};
use sync_core::runner::SystemRunner;

#[derive(Args)]
pub struct ClusterArgs {
    /// The router's root directory.
    #[arg(long, default_value = "/", global = true)]
    root: PathBuf,
    #[command(subcommand)]
    action: Action,
}

/// `ns-ha-config <action> [<option1> <option2>]`
#[derive(Parser)]
#[command(
    name = "ns-ha-config",
    version,
    about = "Set up and run the HA cluster (ha-sync's ns-ha-config)"
)]
struct NsHaConfig {
    #[command(flatten)]
    args: ClusterArgs,
}

#[derive(Subcommand)]
enum Action {
    /// Check this node's requirements as the primary: static LAN address, DHCP options 3 and 6.
    CheckPrimaryNode {
        #[arg(default_value = "lan")]
        lan_interface: String,
    },
    /// Check the backup over SSH on port 22 (root password from the terminal or stdin).
    CheckBackupNode {
        backup_node_ip: String,
        #[arg(default_value = "lan")]
        lan_interface: String,
    },
    /// Initialize this node as the primary: keepalived, conntrackd, the cluster key.
    InitPrimaryNode {
        primary_node_ip: String,
        backup_node_ip: String,
        /// In CIDR notation: 192.168.100.240/24
        virtual_ip: String,
        #[arg(default_value = "lan")]
        lan_interface: String,
    },
    /// Initialize the backup over SSH on port 22 (root password from the terminal or stdin).
    InitBackupNode {
        #[arg(default_value = "lan")]
        lan_interface: String,
    },
    /// Add the interface holding PRIMARY_NODE_IP to the cluster, with its virtual IP.
    AddLanInterface {
        primary_node_ip: String,
        backup_node_ip: String,
        virtual_ip: String,
    },
    /// Remove an interface (and its extra VIPs) from the cluster.
    RemoveInterface { interface: String },
    /// Add an extra virtual IP (CIDR) on an HA interface.
    AddVip { interface: String, vip: String },
    /// Remove an extra virtual IP.
    RemoveVip { interface: String, vip: String },
    /// Show the HA interfaces and virtual IPs.
    ShowConfig {
        /// Print the keepalived.conf this node's configuration gives instead.
        #[arg(long)]
        render: bool,
        /// With --render: notify lines run OpenWrt's hotplug-call (as its init script
        /// writes them) instead of calling `ha-sync hook` directly.
        #[arg(long)]
        hotplug: bool,
    },
    /// Show the cluster status.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Enable and start keepalived and conntrackd here, then on the backup.
    Enable,
    /// Disable keepalived and conntrackd on the backup, then here.
    Disable,
    /// Undo init on both nodes (the network configuration is left as it is).
    Reset {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Open a shell on the backup through its agent (port 65022, the cluster key).
    SshRemote,
    /// Upgrade the backup: send the image (the latest, downloaded with ns-download, when
    /// none is given); the backup checks it and runs sysupgrade, keeping its settings.
    UpgradeRemote { image: Option<PathBuf> },
    /// Take over a node ns-ha configured, keeping the pairing: run on the backup first, then
    /// on the primary (see README, "Migrating from ns-ha").
    Migrate,
    /// Run by init-backup-node and check-backup-node on the backup over SSH (reads a JSON
    /// request on stdin).
    #[command(hide = true)]
    ServeBootstrap { step: String },
}

/// Whether the program was started as `ns-ha-config` (a link or wrapper of that name).
pub fn invoked_as_ns_ha_config() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n.ends_with("ns-ha-config"))
}

/// The `ns-ha-config` entry: parses its words and runs the action.
/// `ns-ha-config ACTION`: the action, then the incumbent's last word for scripts that parse
/// it: `SUCCESS` (green on a terminal) after an action that changes or checks something,
/// `ERROR: cause` (red) on stderr after a failure. `status`, `show-config`, `ssh-remote` and
/// the internal steps print only their output, as before.
pub fn ns_ha_config_main() -> bool {
    run_with_words(NsHaConfig::parse().args)
}

/// [`run`], then `SUCCESS` or `ERROR: cause` (see [`ns_ha_config_main`]); whether it succeeded.
pub fn run_with_words(args: ClusterArgs) -> bool {
    let words = !matches!(
        args.action,
        Action::Status { .. }
            | Action::ShowConfig { .. }
            | Action::SshRemote
            | Action::ServeBootstrap { .. }
    );
    let color = |code: &str, text: &str, tty: bool| {
        if tty {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    use std::io::IsTerminal;
    match run(args) {
        Ok(()) => {
            if words {
                println!(
                    "{}",
                    color("32", "SUCCESS", std::io::stdout().is_terminal())
                );
            }
            true
        }
        Err(e) => {
            let word = color("31", "ERROR", std::io::stderr().is_terminal());
            eprintln!("{word}: {e:#}");
            false
        }
    }
}

fn peer(root: &Path) -> Result<Option<SshPeer>> {
    SshPeer::from_config(root).context("reading the backup's address and keys")
}

/// The backup's agent, for actions that cannot work without it.
fn require_peer(root: &Path) -> Result<SshPeer> {
    peer(root)?.context(
        "the backup node is not set up from here: run `ns-ha-config init-backup-node` first \
         (it pins the backup's agent and installs the cluster key)",
    )
}

fn note_no_peer(p: &Option<SshPeer>) {
    if p.is_none() {
        println!(
            "Backup node not initialized yet: it gets this configuration at init-backup-node."
        );
    }
}

pub fn run(a: ClusterArgs) -> Result<()> {
    let root = a.root.as_path();
    let ctx = Ctx {
        root,
        runner: &SystemRunner,
    };
    match a.action {
        Action::CheckPrimaryNode { lan_interface } => {
            let i = actions::check_primary_node(&ctx, &lan_interface)?;
            println!(
                "Primary node requirements met on {} (device {}, address {}).",
                i.name,
                i.device,
                i.addr.map(|a| a.to_string()).unwrap_or_default()
            );
        }
        Action::CheckBackupNode {
            backup_node_ip,
            lan_interface,
        } => {
            let password = read_password(&backup_node_ip)?;
            let c = runtime()?.block_on(bootstrap::call(
                &backup_node_ip,
                22,
                &password,
                &bootstrap::check_request(&lan_interface),
            ))?;
            println!("Backup node SSH host key: {}", c.ssh_fingerprint);
            println!("Backup node requirements met on {lan_interface}.");
        }
        Action::InitPrimaryNode {
            primary_node_ip,
            backup_node_ip,
            virtual_ip,
            lan_interface,
        } => {
            let spec = actions::init_primary_node(
                &ctx,
                &primary_node_ip,
                &backup_node_ip,
                &virtual_ip,
                &lan_interface,
            )?;
            println!(
                "Primary node initialized: {} carries virtual IP {}; now run `ns-ha-config \
                 init-backup-node {lan_interface}`.",
                lan_interface,
                spec.main().map(|m| m.vip.to_string()).unwrap_or_default()
            );
        }
        Action::InitBackupNode { lan_interface: _ } => {
            let (backup, req) = bootstrap::init_request(&ctx)?;
            let password = read_password(&backup.to_string())?;
            let c =
                runtime()?.block_on(bootstrap::call(&backup.to_string(), 22, &password, &req))?;
            let fp = bootstrap::pin_agent(&ctx, backup, &c.answer)?;
            println!("Backup node SSH host key (port 22): {}", c.ssh_fingerprint);
            println!("Backup agent host key (port 65022) pinned: {fp}");
            println!("Backup node setup completed.");
        }
        Action::AddLanInterface {
            primary_node_ip,
            backup_node_ip,
            virtual_ip,
        } => {
            let p = peer(root)?;
            note_no_peer(&p);
            let i = actions::add_lan_interface(
                &ctx,
                p.as_ref().map(|p| p as &dyn Peer),
                &primary_node_ip,
                &backup_node_ip,
                &virtual_ip,
            )?;
            println!("Interface {} added with virtual IP {}.", i.name, i.vip);
        }
        Action::RemoveInterface { interface } => {
            let p = peer(root)?;
            note_no_peer(&p);
            let i =
                actions::remove_interface(&ctx, p.as_ref().map(|p| p as &dyn Peer), &interface)?;
            println!(
                "Interface {} removed from the cluster: this node now serves it on {} (its \
                 virtual IP, the clients' gateway); the backup dropped it.",
                i.name, i.vip.addr
            );
        }
        Action::AddVip { interface, vip } => {
            let p = peer(root)?;
            note_no_peer(&p);
            let v = actions::add_vip(&ctx, p.as_ref().map(|p| p as &dyn Peer), &interface, &vip)?;
            println!("Virtual IP {} added on {}.", v.address, v.interface);
        }
        Action::RemoveVip { interface, vip } => {
            let p = peer(root)?;
            note_no_peer(&p);
            let v =
                actions::remove_vip(&ctx, p.as_ref().map(|p| p as &dyn Peer), &interface, &vip)?;
            println!("Virtual IP {} removed from {}.", v.address, v.interface);
        }
        Action::ShowConfig { render, hotplug } => {
            if render {
                let opts = RenderOptions {
                    notify: if hotplug {
                        Notify::Hotplug
                    } else {
                        RenderOptions::default().notify
                    },
                    router_id: None,
                };
                print!("{}", actions::render_config(&ctx, &opts)?);
            } else {
                print!("{}", actions::show_config(&ctx)?);
            }
        }
        Action::Status { json } => {
            if json {
                let st = sync_agent::status::collect(root, None);
                println!("{}", serde_json::to_string_pretty(&st.to_json())?);
            } else {
                print!("{}", actions::status(&ctx));
            }
        }
        Action::Enable => {
            let p = peer(root)?;
            actions::enable(&ctx, p.as_ref().map(|p| p as &dyn Peer))?;
            println!("HA cluster enabled.");
        }
        Action::Disable => {
            let p = peer(root)?;
            actions::disable(&ctx, p.as_ref().map(|p| p as &dyn Peer))?;
            println!("HA cluster disabled.");
        }
        Action::Reset { yes } => {
            if !yes && !confirm()? {
                println!("Reset operation canceled.");
                return Ok(());
            }
            let p = peer(root)?;
            let r = actions::reset(&ctx, p.as_ref().map(|p| p as &dyn Peer))?;
            if let Some(e) = r.peer_error {
                eprintln!(
                    "warning: the backup could not be reset ({e}); run `ns-ha-config reset` on \
                     it directly"
                );
            }
            println!("HA configuration reset.");
        }
        Action::Migrate => migrate(&ctx)?,
        Action::SshRemote => {
            let p = require_peer(root)?;
            let status = ssh_remote(&p)?;
            std::process::exit(status.min(255) as i32);
        }
        Action::UpgradeRemote { image } => {
            let p = require_peer(root)?;
            if image.is_none() {
                println!("Downloading the latest image...");
            }
            let r = upgrade::upgrade_remote(&ctx, &p, image.as_deref())?;
            println!(
                "Image {} ({} bytes, blake3 {}) sent and checked by the backup (sysupgrade -T).",
                r.image.display(),
                r.header.size,
                r.header.blake3
            );
            println!(
                "The backup is installing it with its settings kept: it reboots and comes back \
                 as the backup node. Follow it with `ns-ha-config status` there or `ha-sync \
                 status` here."
            );
        }
        Action::ServeBootstrap { step } => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_end(&mut buf)
                .context("reading the request")?;
            let req = BootstrapRequest::from_wire(&step, &buf)?;
            let answer = bootstrap::serve(&ctx, req)?;
            println!("{}", String::from_utf8_lossy(&answer.to_wire()?));
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// The incumbent's confirmation: the word `yes`.
fn confirm() -> Result<bool> {
    print!("Are you sure you want to reset the HA configuration? This action cannot be undone. (yes/no): ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}

/// Terminal settings changed for a while; restored on drop (also on error paths).
struct TermGuard {
    fd: i32,
    saved: libc::termios,
}

impl TermGuard {
    fn change(fd: i32, f: impl FnOnce(&mut libc::termios)) -> Result<TermGuard> {
        // SAFETY: termios is plain data; tcgetattr/tcsetattr only touch it and the tty.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                bail!(
                    "cannot read the terminal settings: {}",
                    std::io::Error::last_os_error()
                );
            }
            let saved = t;
            f(&mut t);
            if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
                bail!(
                    "cannot change the terminal settings: {}",
                    std::io::Error::last_os_error()
                );
            }
            Ok(TermGuard { fd, saved })
        }
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        // SAFETY: restores the settings saved in `change`.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}

/// The size of the terminal on stdout (or stdin), if any.
fn term_size() -> Option<PtySize> {
    [libc::STDOUT_FILENO, libc::STDIN_FILENO]
        .into_iter()
        .find_map(|fd| {
            // SAFETY: TIOCGWINSZ fills the winsize; a failure leaves it unread.
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
            (ok && ws.ws_col > 0).then_some(PtySize {
                cols: ws.ws_col,
                rows: ws.ws_row,
            })
        })
}

/// ssh-remote: a shell on the backup, with a terminal when this side has one (raw mode here,
/// window size followed), plain pipes otherwise (`echo uptime | ns-ha-config ssh-remote`).
fn ssh_remote(p: &SshPeer) -> Result<u32> {
    let terminal = std::io::stdin().is_terminal().then(|| {
        let term = std::env::var("TERM").unwrap_or_else(|_| "vt100".into());
        let size = term_size().unwrap_or(PtySize { cols: 80, rows: 24 });
        (term, size)
    });
    let (tx, resized) = tokio::sync::mpsc::channel(4);
    let raw = match &terminal {
        Some(_) => {
            let rt = p.runtime();
            let _in_rt = rt.enter();
            let mut winch =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                    .context("watching the terminal size")?;
            rt.spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some(size) = term_size() {
                        let _ = tx.send(size).await;
                    }
                }
            });
            // SAFETY: cfmakeraw only edits the termios it is given.
            Some(TermGuard::change(libc::STDIN_FILENO, |t| unsafe {
                libc::cfmakeraw(t)
            })?)
        }
        None => None,
    };
    let status = p.shell(ShellIo {
        stdin: tokio::io::stdin(),
        stdout: tokio::io::stdout(),
        stderr: tokio::io::stderr(),
        terminal,
        resized,
    });
    drop(raw);
    Ok(status?)
}

/// The backup's root password: typed on the terminal without echo, or the first line of
/// stdin when it is not a terminal (`echo pw | ns-ha-config init-backup-node lan`). Never
/// from argv or the environment.
fn read_password(host: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        eprint!("Enter password for root@{host}: ");
        std::io::stderr().flush()?;
        let quiet = TermGuard::change(libc::STDIN_FILENO, |t| t.c_lflag &= !libc::ECHO)?;
        let r = stdin.lock().read_line(&mut line);
        drop(quiet);
        eprintln!();
        r?;
    } else {
        stdin.lock().read_line(&mut line)?;
    }
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        bail!("no password given: type it, or pipe it on stdin (echo PASSWORD | ns-ha-config ...)");
    }
    Ok(pw)
}

/// `ns-ha-config migrate`: the local takeover, then on the primary the key exchange with the
/// (already migrated) backup's agent.
fn migrate(ctx: &Ctx) -> Result<()> {
    use ha_cluster::migrate;
    let m = migrate::migrate_local(ctx)?;
    for step in &m.steps {
        println!("{step}");
    }
    let Some(rsa) = m.converted_key else {
        if m.role == Some(ha_cluster::Role::Backup) {
            println!("Backup migrated: now run `ns-ha-config migrate` on the primary.");
        }
        return Ok(());
    };
    let h = runtime()?.block_on(migrate::hand_over(ctx, &rsa))?;
    if let Some(fp) = h.pinned {
        println!(
            "Pinned the backup agent's host key {fp} for {} (first contact)",
            h.peer
        );
    }
    println!("The backup adopted the ed25519 cluster key; the ns-ha key is no longer used.");
    Ok(())
}
