//! `ns-ha-config migrate`: take over a node the incumbent (ns-ha) configured, without
//! pairing the nodes again (issue 12, item 2).
//!
//! The incumbent's node (INCUMBENT-SOURCE §1.1) has `keepalived.primary` or `.backup`, a second
//! dropbear (`dropbear.ha_link`) on 65022 accepting the primary's RSA key (dropbear format,
//! `/etc/keepalived/keys/id_rsa`; the backup knows it as `ha_peer.ssh_pubkey`), the sync as
//! the keepalived `vrrp_script ha_sync` (`ns-rsync.sh`) with its `track_script`s, and the
//! staging tree in `ha_peer.sync_dir` (`/tmp/ns-ha`). Migrating, on each node:
//! - dropbear's `ha_link` instance is disabled: the agent serves 65022 instead;
//! - the sync-as-vrrp_script sections go; the primary gets the catch-up gate;
//! - the fork's `02-rsync` and ns-ha's own hotplug scripts leave the hotplug chain (moved to
//!   `/usr/share/ha-sync/ns-ha-hotplug/`): ha-sync's hooks do their work, once;
//! - `sync_dir` is kept: the staging tree stays where it is;
//! - the pairing is kept: the backup's agent authorizes the incumbent's key, the primary logs
//!   in with it converted to OpenSSH format ([`sync_agent::transport::convert_dropbear_key`]),
//!   pins the agent's host key on first contact, and hands the backup its ed25519 cluster key
//!   over that authenticated channel ([`adopt`]); from then on only the cluster key is
//!   authorized.
//!
//! Run on the backup first (its agent must answer), then on the primary. Both steps are
//! idempotent: running one again changes nothing more.

use std::path::{Path, PathBuf};

use sync_core::node::{self, Node};
use sync_core::uci::Package;

use crate::{
    keepalived, load_uci, role_section, services, ClusterError, Ctx, Role, KEEPALIVED_UCI,
};

/// The exec command on the backup's agent that replaces its authorized keys with the
/// cluster key given on stdin (allowed to a key already authorized: the incumbent's).
pub const ADOPT_COMMAND: &str = "ha-sync-adopt-cluster-key";
/// The incumbent's key on the primary (dropbear format).
pub const INCUMBENT_KEY: &str = "etc/keepalived/keys/id_rsa";
/// The name the primary keeps it under, converted, in its ha-sync directory
/// ([`node::ETC_DIR`]), until the backup has the cluster key.
pub const CONVERTED_KEY_NAME: &str = "ns-ha_id_rsa";

/// The converted incumbent key (relative to the root).
pub fn converted_key() -> String {
    format!("{}/{CONVERTED_KEY_NAME}", node::ETC_DIR)
}
/// Where ns-ha's hotplug scripts are moved.
pub const MOVED_HOOKS: &str = "usr/share/ha-sync/ns-ha-hotplug";
const DROPBEAR_UCI: &str = "etc/config/dropbear";

/// ns-ha's hotplug scripts (its package), and the keepalived fork's `02-rsync` (the
/// incumbent's restore), which ha-sync's hooks replace.
const NS_HA_HOOKS: &[&str] = &[
    "00-lock",
    "02-rsync",
    "05-alert-state",
    "10-adjust",
    "100-conntrackd",
    "400-network",
    "500-dhcp-force",
    "500-nathelpers",
    "500-netmap",
    "560-mac-binding",
    "600-acme",
    "600-backup",
    "600-ipsec",
    "600-mwan3",
    "600-openvpn",
    "600-qosify",
    "600-snort",
    "600-users-objects",
    "700-nginx",
    "800-adblock",
    "800-banip",
    "800-dedalo",
    "800-flashstart",
    "800-netifyd",
    "800-ui",
    "900-ddns",
    "900-msmtp",
    "900-ns-plug",
    "900-phonehome",
    "900-snmpd",
    "900-telegraf",
    "999-stop-fault",
    "999-unlock",
];

/// What one node's migration did.
#[derive(Debug, Default)]
pub struct Migrated {
    pub role: Option<Role>,
    /// One line per change, for the admin.
    pub steps: Vec<String>,
    /// On the primary: the incumbent's key, converted, that logs in until [`adopt`] ran.
    pub converted_key: Option<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |e| ClusterError::Invalid(format!("{}: {e}", path.display()))
}

/// The local part of the migration (see the module doc); no network.
pub fn migrate_local(ctx: &Ctx) -> Result<Migrated, ClusterError> {
    let mut pkg = load_uci(ctx)?;
    let role = keepalived::role_of(&pkg).ok_or_else(|| {
        ClusterError::NotConfigured(
            "this node has no keepalived.primary or keepalived.backup: nothing to migrate \
             (set up a new cluster with init-primary-node)"
                .into(),
        )
    })?;
    let mut out = Migrated {
        role: Some(role),
        ..Migrated::default()
    };

    // dropbear's HA instance: the agent takes 65022.
    let dpath = ctx.path(DROPBEAR_UCI);
    if let Ok(mut d) = Package::load(&dpath) {
        if let Some(s) = d.section_mut("ha_link") {
            if s.get("enable") != Some("0") {
                s.set("enable", "0")?;
                d.write_atomic(&dpath)?;
                out.steps
                    .push("dropbear.ha_link disabled (the agent serves port 65022)".into());
                services::service(ctx, "dropbear", "restart")?;
            }
        }
    }

    // The sync as a vrrp_script goes; the primary gets the catch-up gate.
    let before = pkg.sections.len();
    pkg.sections.retain(|s| {
        !(matches!(s.kind.as_str(), "vrrp_script" | "track_script")
            && s.name
                .as_deref()
                .is_some_and(keepalived::is_incumbent_script))
    });
    if pkg.sections.len() != before {
        out.steps
            .push("the ns-rsync.sh vrrp_script and its track_scripts removed".into());
    }
    if let Some(inst) = pkg.section_mut(role_section(role)) {
        let tracked = inst.get_list("track_script");
        let kept: Vec<String> = tracked
            .iter()
            .filter(|t| !matches!(t.as_str(), "sender" | "receiver" | "ha_sync"))
            .cloned()
            .collect();
        if kept != tracked {
            inst.set_list("track_script", kept)?;
        }
    }
    if role == Role::Primary && keepalived::add_catchup(&mut pkg)? {
        out.steps
            .push("catch-up gate added (vrrp_script ha_catchup, ha-sync caught-up)".into());
    }
    crate::actions::set_enabled(&mut pkg)?;
    pkg.write_atomic(&ctx.path(KEEPALIVED_UCI))?;

    // ns-ha's hotplug scripts leave the chain (kept, not deleted).
    let hooks = ctx.path(restore_hooks::hooks::HOTPLUG_DIR);
    let moved = ctx.path(MOVED_HOOKS);
    for name in NS_HA_HOOKS {
        let from = hooks.join(name);
        if from.is_file() {
            std::fs::create_dir_all(&moved).map_err(io(&moved))?;
            let to = moved.join(name);
            std::fs::rename(&from, &to).map_err(io(&from))?;
            out.steps.push(format!(
                "hotplug script {name} moved to /{MOVED_HOOKS}/ (ha-sync's hooks do its work)"
            ));
        }
    }

    let node = Node::new(ctx.root);
    let keys = node.keys();
    match role {
        Role::Backup => {
            // The pairing: the incumbent's key may log in to the agent.
            let peer = pkg.section("ha_peer");
            if let Some(k) = peer.and_then(|p| p.get("ssh_pubkey")) {
                if authorize(&keys.authorized_keys, k)? {
                    out.steps.push(format!(
                        "the primary's ns-ha key authorized for the agent ({})",
                        node::router_path(&relative(ctx.root, &keys.authorized_keys))
                    ));
                }
            }
        }
        Role::Primary => {
            let src = ctx.path(INCUMBENT_KEY);
            let dst = ctx.path(&converted_key());
            if src.is_file() && !dst.is_file() {
                sync_agent::transport::convert_dropbear_key(&src, &dst)?;
                out.steps.push(format!(
                    "the ns-ha key /{INCUMBENT_KEY} converted to /{}",
                    converted_key()
                ));
            }
            if dst.is_file() {
                // Logs in with it until the backup has the cluster key (`adopt`).
                let mut pkg = load_uci(ctx)?;
                if let Some(p) = pkg.section_mut("ha_peer") {
                    let path = node::router_path(&converted_key());
                    if p.get("ssh_key") != Some(&path) {
                        p.set("ssh_key", &path)?;
                        pkg.write_atomic(&ctx.path(KEEPALIVED_UCI))?;
                    }
                }
                out.converted_key = Some(dst);
            }
            crate::actions::ensure_cluster_key(ctx)?;
        }
    }
    services::service(ctx, "ha-sync", "enable")?;
    services::service(ctx, "ha-sync", "restart")?;
    services::service(ctx, "keepalived", "restart")?;
    Ok(out)
}

fn relative(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// Adds `key` (one OpenSSH public key line) to `file` unless there; whether it was added.
fn authorize(file: &Path, key: &str) -> Result<bool, ClusterError> {
    let key = key.trim();
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let body = |l: &str| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    if text.lines().any(|l| body(l) == body(key)) {
        return Ok(false);
    }
    let mut new = text;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(key);
    new.push('\n');
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    sync_core::fsx::write_atomic(
        file,
        new.as_bytes(),
        0o600,
        sync_core::fsx::Durability::Durable,
    )
    .map_err(io(file))?;
    Ok(true)
}

/// The backup's side of [`ADOPT_COMMAND`]: from now on only `cluster_key` (an ed25519 public
/// key line) may log in; it is also the cluster key the cluster actions require.
pub fn adopt(root: &Path, cluster_key: &str) -> Result<(), ClusterError> {
    let key = sync_agent::transport::PublicKey::from_openssh(cluster_key.trim())
        .map_err(|e| ClusterError::Invalid(format!("cluster key: {e}")))?;
    if !key.algorithm().as_str().contains("ed25519") {
        return Err(ClusterError::Invalid(
            "the cluster key must be ed25519".into(),
        ));
    }
    let line = format!("{}\n", cluster_key.trim());
    let keys = Node::new(root).keys();
    sync_core::fsx::write_atomic(
        &keys.authorized_keys,
        line.as_bytes(),
        0o600,
        sync_core::fsx::Durability::Durable,
    )
    .map_err(io(&keys.authorized_keys))?;
    let public = crate::cluster_pub(root);
    sync_core::fsx::write_atomic(
        &public,
        line.as_bytes(),
        0o644,
        sync_core::fsx::Durability::Durable,
    )
    .map_err(io(&public))?;
    tracing::info!("migration: the cluster key replaces the ns-ha key");
    Ok(())
}

/// The primary's last step, once the backup adopted the cluster key: log in with it, forget
/// the converted incumbent key.
pub fn finish_primary(ctx: &Ctx) -> Result<(), ClusterError> {
    let mut pkg = load_uci(ctx)?;
    let key = node::router_path(&format!("{}/{}", node::ETC_DIR, node::CLUSTER_KEY_NAME));
    if let Some(p) = pkg.section_mut("ha_peer") {
        p.set("ssh_key", &key)?;
    }
    pkg.write_atomic(&ctx.path(KEEPALIVED_UCI))?;
    for p in [
        ctx.path(&converted_key()),
        ctx.path(&format!("{}.pub", converted_key())),
    ] {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&p)(e)),
            _ => {}
        }
    }
    Ok(())
}

/// What [`hand_over`] did.
#[derive(Debug)]
pub struct HandOver {
    /// `host:port` of the backup's agent.
    pub peer: String,
    /// The fingerprint of the agent's host key, when this first contact pinned it.
    pub pinned: Option<String>,
}

/// The primary's key exchange: logs in to the (migrated) backup's agent with the incumbent's
/// key converted (`rsa`), pins the agent's host key on this first contact (the incumbent never
/// checked one: `dbclient -y -y`) or checks it against the one pinned, hands over the cluster
/// key ([`ADOPT_COMMAND`]), then logs in with the cluster key from now on
/// ([`finish_primary`]).
pub async fn hand_over(ctx: &Ctx<'_>, rsa: &Path) -> Result<HandOver, ClusterError> {
    use sync_agent::transport::{
        self, Algorithms, Connection, HostCheck, HostKeyStatus, Login, Target,
    };
    let node = Node::new(ctx.root);
    let pc = node.peer()?;
    let host = pc
        .address
        .clone()
        .ok_or_else(|| ClusterError::NotConfigured("keepalived.ha_peer has no address".into()))?;
    let port = pc.port;
    let peer = node::peer_addr(&host, port);
    let known = node.keys().known_hosts;
    let public = {
        let mut p = crate::actions::ensure_cluster_key(ctx)?.into_os_string();
        p.push(".pub");
        PathBuf::from(p)
    };
    let cluster = std::fs::read_to_string(&public).map_err(io(&public))?;
    let captured = std::sync::Arc::new(std::sync::Mutex::new(None));
    let login = Login::Key(rsa.to_path_buf());
    let not_taken = |e: String| {
        ClusterError::Peer(format!(
            "the agent at {peer} did not take the cluster key ({e}): run `ns-ha-config migrate` \
             on the backup, then here again (until then the sync logs in with the converted \
             ns-ha key)"
        ))
    };
    let conn = Connection::connect(Target {
        host: &host,
        port,
        user: "root",
        login: &login,
        check: HostCheck::Capture(captured.clone()),
        algorithms: Algorithms::Agent,
        timeout: std::time::Duration::from_secs(10),
    })
    .await
    .map_err(|e| not_taken(e.to_string()))?;
    let key = captured.lock().ok().and_then(|c| c.clone());
    let mut pinned = None;
    if let Some(key) = &key {
        match transport::check_known_host(&known, &host, port, key)? {
            HostKeyStatus::Known => {}
            HostKeyStatus::Unknown => {
                transport::pin_known_host(&known, &host, port, key)?;
                pinned = Some(transport::keys::fingerprint(key));
            }
            HostKeyStatus::Changed { line } => {
                conn.disconnect().await;
                return Err(ClusterError::Peer(format!(
                    "the agent at {peer} presents a host key other than the one pinned in {} \
                     line {line}",
                    known.display()
                )));
            }
        }
    }
    let out = conn
        .exec(ADOPT_COMMAND, cluster.as_bytes(), 64 * 1024)
        .await;
    conn.disconnect().await;
    let out = out.map_err(|e| not_taken(e.to_string()))?;
    if out.status != Some(0) {
        return Err(not_taken(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    finish_primary(ctx)?;
    Ok(HandOver { peer, pinned })
}
