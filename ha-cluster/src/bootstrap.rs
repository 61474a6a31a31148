//! First contact with the backup: `check-backup-node` and `init-backup-node` log in on port 22
//! as root with the password the operator types (or pipes in), run `ha-sync cluster
//! serve-bootstrap STEP` there with a JSON request ([`BootstrapRequest`]), and from then on
//! everything goes to the agent on 65022 with the cluster key.
//!
//! init-backup-node installs on the backup: the cluster key's public half (in the agent's
//! authorized_keys, and as the only key allowed to run the cluster actions), the cluster
//! sections for role backup, conntrackd, and starts keepalived, conntrackd and the agent. The
//! agent's host key comes back in the answer and is pinned on the primary, so the first
//! connection to 65022 is already checked.
//!
//! The password is only ever in memory: never in argv (visible in `ps`), the environment, a
//! log line or an error message.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use sync_agent::transport::client::{self, Algorithms, HostCheck, Login, Target};
use sync_agent::transport::keys::fingerprint;
use sync_agent::transport::{self, PublicKey};

use crate::keepalived::{self, Spec};
use crate::request::{
    BootstrapAnswer, BootstrapRequest, ClusterAnswer, ClusterRequest, Initialized, WantedIface,
};
use crate::services::has_agent_service;
use crate::{actions, cluster_pub, load_uci, ClusterError, Ctx, Role};

/// The command run on the backup over port 22.
pub(crate) const REMOTE_COMMAND: &str = "ha-sync cluster serve-bootstrap";

/// Largest answer accepted.
const MAX_ANSWER: usize = 1 << 20;

/// What a bootstrap call found.
#[derive(Debug)]
pub struct Contacted {
    /// The answer of the backup.
    pub answer: BootstrapAnswer,
    /// Fingerprint of the backup's SSH server on port 22 (for the operator to compare).
    pub ssh_fingerprint: String,
}

/// Runs `ha-sync cluster serve-bootstrap <step>` on `host:port` as root with `password`.
pub async fn call(
    host: &str,
    port: u16,
    password: &str,
    request: &BootstrapRequest,
) -> Result<Contacted, ClusterError> {
    let what = request.step();
    let slot = std::sync::Arc::new(std::sync::Mutex::new(None::<PublicKey>));
    let input = request.to_wire()?;
    let login = Login::Password(password.to_string());
    let target = Target {
        host,
        port,
        user: "root",
        login: &login,
        check: HostCheck::Capture(slot.clone()),
        // Whatever SSH server the backup runs on port 22 (dropbear on OpenWrt).
        algorithms: Algorithms::Standard,
        timeout: Duration::from_secs(120),
    };
    let out = client::exec(
        target,
        &format!("{REMOTE_COMMAND} {what}"),
        input.as_slice(),
        MAX_ANSWER,
    )
    .await?;
    let ssh_fingerprint = slot
        .lock()
        .ok()
        .and_then(|s| s.as_ref().map(fingerprint))
        .unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match out.status {
        Some(0) => Ok(Contacted {
            answer: BootstrapAnswer::from_wire(what, &out.stdout).map_err(|e| {
                ClusterError::Peer(format!(
                    "unexpected answer ({e}); is ha-sync installed on the backup? {stderr}"
                ))
            })?,
            ssh_fingerprint,
        }),
        Some(127) => Err(ClusterError::Peer(format!(
            "ha-sync is not installed on the backup (`{REMOTE_COMMAND}`: command not found): \
             install it there first"
        ))),
        _ => Err(ClusterError::Peer(if stderr.is_empty() {
            format!("{REMOTE_COMMAND} {what} failed")
        } else {
            stderr
        })),
    }
}

/// The request of `check-backup-node <ip> <lan>`.
pub fn check_request(lan: &str) -> BootstrapRequest {
    BootstrapRequest::Check {
        interfaces: vec![WantedIface {
            name: lan.to_string(),
            address: None,
        }],
    }
}

/// The request of `init-backup-node`: the cluster spec and the cluster key's public half.
/// Refuses when the primary is not initialized.
pub fn init_request(ctx: &Ctx) -> Result<(Ipv4Addr, BootstrapRequest), ClusterError> {
    let pkg = load_uci(ctx)?;
    let spec: Spec = match keepalived::read(&pkg)? {
        Some((Role::Primary, s)) => s,
        Some((Role::Backup, _)) => {
            return Err(ClusterError::Invalid(
                "this node is the backup: run init-backup-node on the primary".into(),
            ))
        }
        None => {
            return Err(ClusterError::NotConfigured(
                "HA is not configured on this node: run `ns-ha-config init-primary-node` first"
                    .into(),
            ))
        }
    };
    let backup = spec
        .main()
        .map(|m| m.backup)
        .ok_or_else(|| ClusterError::Corrupt("no main LAN".into()))?;
    let key = actions::ensure_cluster_key(ctx)?;
    let mut pub_path = key.into_os_string();
    pub_path.push(".pub");
    let public = std::fs::read_to_string(&pub_path).map_err(ClusterError::io(pub_path))?;
    Ok((
        backup,
        BootstrapRequest::Init {
            spec,
            cluster_key: public.trim().to_string(),
            start: true,
        },
    ))
}

/// Pins the agent host key the backup answered with, for `[backup]:65022`.
pub fn pin_agent(
    ctx: &Ctx,
    backup: Ipv4Addr,
    answer: &BootstrapAnswer,
) -> Result<String, ClusterError> {
    let BootstrapAnswer::Initialized(Initialized { host_key, .. }) = answer else {
        return Err(ClusterError::Peer(
            "the backup sent no agent host key".into(),
        ));
    };
    let key = PublicKey::from_openssh(host_key)
        .map_err(|e| ClusterError::Peer(format!("bad agent host key: {e}")))?;
    transport::pin_known_host(
        &sync_core::node::Node::new(ctx.root).keys().known_hosts,
        &backup.to_string(),
        transport::DEFAULT_PORT,
        &key,
    )?;
    Ok(fingerprint(&key))
}

/// The backup's side: `ha-sync cluster serve-bootstrap <step>`, run by root over port 22.
/// `check`: validate the interfaces; `init`: install the cluster key, write the backup's
/// sections, start the services and the agent, answer the agent's host key.
pub fn serve(ctx: &Ctx, request: BootstrapRequest) -> Result<BootstrapAnswer, ClusterError> {
    match request {
        BootstrapRequest::Check { interfaces } => {
            match actions::serve(ctx, ClusterRequest::Validate { interfaces })? {
                ClusterAnswer::Validated(v) => Ok(BootstrapAnswer::Checked(v)),
                other => Err(ClusterError::Invalid(format!(
                    "validate answered {other:?}"
                ))),
            }
        }
        BootstrapRequest::Init {
            spec,
            cluster_key,
            start,
        } => {
            let key = PublicKey::from_openssh(&cluster_key)
                .map_err(|e| ClusterError::Invalid(format!("bad cluster key: {e}")))?;
            install_cluster_key(ctx.root, &key)?;
            let configured = match actions::serve(
                ctx,
                ClusterRequest::Configure {
                    spec,
                    start,
                    removed: Vec::new(),
                },
            )? {
                ClusterAnswer::Configured { configured } => configured,
                other => {
                    return Err(ClusterError::Invalid(format!(
                        "configure answered {other:?}"
                    )))
                }
            };
            let host = transport::load_or_create_host_key(
                &sync_core::node::Node::new(ctx.root).keys().host_key,
            )?;
            if has_agent_service(ctx) {
                for a in ["enable", "restart"] {
                    let _ = ctx
                        .runner
                        .run(&sync_core::runner::Cmd::new("/etc/init.d/ha-sync").arg(a));
                }
            }
            let host_key = host
                .public_key()
                .to_openssh()
                .map_err(|e| ClusterError::Invalid(format!("encoding the host key: {e}")))?;
            Ok(BootstrapAnswer::Initialized(Initialized {
                configured,
                host_key,
            }))
        }
    }
}

/// Writes the cluster key as the only key of the cluster actions, and adds it to the agent's
/// authorized_keys (keeping what else is there).
fn install_cluster_key(root: &Path, key: &PublicKey) -> Result<(), ClusterError> {
    let mut plain = key.clone();
    plain.set_comment("ha-sync cluster key");
    let line = plain
        .to_openssh()
        .map_err(|e| ClusterError::Invalid(format!("encoding the cluster key: {e}")))?;
    let dir = root.join(sync_core::node::ETC_DIR);
    std::fs::create_dir_all(&dir).map_err(ClusterError::io(&dir))?;
    let cpub = cluster_pub(root);
    std::fs::write(&cpub, format!("{line}\n")).map_err(ClusterError::io(&cpub))?;
    let ak = sync_core::node::Node::new(root).keys().authorized_keys;
    let existing = match std::fs::read_to_string(&ak) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(ClusterError::Io {
                path: ak,
                source: e,
            })
        }
    };
    let keys = transport::AuthorizedKeys::parse(&ak, &existing);
    if !keys.contains(key) {
        let mut text = existing;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("{line}\n"));
        std::fs::write(&ak, text).map_err(ClusterError::io(&ak))?;
    }
    Ok(())
}
