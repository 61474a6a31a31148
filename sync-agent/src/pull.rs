//! Failback over the agents' SSH connection (issue 11, item 2): the primary pulls what the
//! acting backup changed before it pushes.
//!
//! The backup registers two exec commands ([`register`]): the offer (its changes since the
//! common base, see `restore_hooks::authority`) and "taken". The primary ([`pull`]) asks for the
//! offer on the connection its daemon (or `ha-sync now`) already holds, applies it to its live
//! tree, records conflicts and raises `ha:sync:conflict`, then tells the backup which live
//! state it took, so the backup's restore of the next generation may write over it. A backup
//! that was not master since the base answers at once with an empty offer: one round trip.

use crate::alerts::{self, Alert, AlertConfig};
use crate::transport::{Connection, PeerInfo, ReadWrite, Server, TransportError};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::sync::Arc;
use sync_core::fsx::{self, Durability};
use sync_core::node::Node;
use sync_core::pull::{Offer, Taken, MAX_OFFER, OFFER_COMMAND, PULL_VERSION, TAKEN_COMMAND};
use sync_core::runner::Runner;

/// In the state directory: what the last pull did.
pub const PULL_FILE: &str = "pull.json";

#[derive(Debug, thiserror::Error)]
pub enum PullFailure {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("pull from {peer}: {msg}")]
    Peer { peer: String, msg: String },
    #[error("pull from {peer}: {msg}")]
    Local { peer: String, msg: String },
}

/// What the last pull did, as `ha-sync status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRecord {
    pub time: u64,
    pub peer: String,
    /// When the peer became master, if it was the authority.
    pub authority_since: Option<u64>,
    pub taken: Vec<String>,
    pub merged: Vec<String>,
    pub conflicts: usize,
    pub errors: Vec<(String, String)>,
}

/// Adds the offer and taken commands to the backup's server.
pub fn register(server: Server, node: &Node, runner: Arc<dyn Runner>) -> Server {
    let (n, r) = (node.clone(), runner.clone());
    let server = server.with_action(
        OFFER_COMMAND,
        Arc::new(move |stream: &mut dyn ReadWrite, peer: &PeerInfo| {
            let staging = n.staging_dir();
            let ctx = restore_hooks::Ctx {
                root: n.root(),
                staging: &staging,
                runner: r.as_ref(),
            };
            let offer = restore_hooks::authority::offer(&ctx).map_err(|e| e.to_string())?;
            if !offer.changes.is_empty() {
                tracing::info!(
                    "pull: {} path(s) offered to {}",
                    offer.changes.len(),
                    peer.addr
                );
            }
            stream
                .write_all(&offer.encode())
                .and_then(|()| stream.flush())
                .map_err(|e| format!("sending the offer: {e}"))
        }),
    );
    let n = node.clone();
    server.with_action(
        TAKEN_COMMAND,
        Arc::new(move |stream: &mut dyn ReadWrite, _peer: &PeerInfo| {
            let mut buf = Vec::new();
            stream
                .take(4096)
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading: {e}"))?;
            let t = Taken::decode(&buf).map_err(|e| e.to_string())?;
            let staging = n.staging_dir();
            let ctx = restore_hooks::Ctx {
                root: n.root(),
                staging: &staging,
                runner: runner.as_ref(),
            };
            restore_hooks::authority::taken(&ctx, &t).map_err(|e| e.to_string())
        }),
    )
}

/// Pulls from the backup on `conn` into `node`'s live tree. `Ok(None)`: the backup had
/// nothing to give (it was not master since the base, or is an agent without pulls).
pub async fn pull(
    conn: &Connection,
    node: &Node,
    runner: Arc<dyn Runner>,
) -> Result<Option<PullRecord>, PullFailure> {
    let peer = conn.peer().to_string();
    let out = match conn
        .exec(OFFER_COMMAND, tokio::io::empty(), MAX_OFFER)
        .await
    {
        Ok(o) => o,
        Err(TransportError::ExecRefused { .. }) => {
            tracing::debug!("pull: {peer} offers no pulls (an older agent)");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    if out.status != Some(0) {
        return Err(PullFailure::Peer {
            peer,
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let offer = Offer::decode(&out.stdout).map_err(|e| PullFailure::Peer {
        peer: peer.clone(),
        msg: e.to_string(),
    })?;
    if offer.authority_since.is_none() {
        return Ok(None);
    }
    let (n, r, o) = (node.clone(), runner.clone(), offer.clone());
    let applied = tokio::task::spawn_blocking(move || {
        let staging = n.staging_dir();
        let ctx = restore_hooks::Ctx {
            root: n.root(),
            staging: &staging,
            runner: r.as_ref(),
        };
        restore_hooks::authority::apply_offer(&ctx, &o)
    })
    .await
    .map_err(|e| PullFailure::Local {
        peer: peer.clone(),
        msg: format!("pull task: {e}"),
    })?
    .map_err(|e| PullFailure::Local {
        peer: peer.clone(),
        msg: e.to_string(),
    })?;
    let record = PullRecord {
        time: sync_core::clock::now_secs(),
        peer: peer.clone(),
        authority_since: offer.authority_since,
        taken: applied.taken.clone(),
        merged: applied.merged.clone(),
        conflicts: applied.conflicts.len(),
        errors: applied.errors.clone(),
    };
    save(node, &record);
    if !applied.conflicts.is_empty() {
        let msg = format!(
            "{} conflict(s) pulling from {peer}: {}; the backup's values are live, the \
             primary's are in the attic (ha-sync status, ha-sync resolve)",
            applied.conflicts.len(),
            applied
                .conflicts
                .iter()
                .map(|c| match (&c.section, &c.option) {
                    (Some(s), Some(o)) => format!("/{}: {s}.{o}", c.path),
                    (Some(s), None) => format!("/{}: {s}", c.path),
                    _ => format!("/{}", c.path),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        tracing::warn!("{msg}");
        let cfg = AlertConfig::load(node.root());
        if let Err(e) = alerts::record(
            node.root(),
            runner.as_ref(),
            cfg.command.as_deref(),
            Alert::Conflict,
            true,
            &msg,
        ) {
            tracing::warn!("recording the conflict alert: {e}");
        }
    }
    tracing::info!(
        "pull from {peer}: {} path(s) taken, {} merged, {} conflict(s), {} error(s)",
        record.taken.len(),
        record.merged.len(),
        record.conflicts,
        record.errors.len()
    );
    if !applied.errors.is_empty() {
        // The backup keeps holding its changes: the next pull tries again.
        return Err(PullFailure::Local {
            peer,
            msg: format!(
                "{} path(s) could not be applied: {}",
                applied.errors.len(),
                applied
                    .errors
                    .iter()
                    .take(3)
                    .map(|(p, e)| format!("{p}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        });
    }
    let taken = Taken {
        version: PULL_VERSION,
        live_root: offer.live_root,
    };
    let out = conn.exec(TAKEN_COMMAND, &taken.encode()[..], 4096).await?;
    if out.status != Some(0) {
        return Err(PullFailure::Peer {
            peer,
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(Some(record))
}

fn save(node: &Node, r: &PullRecord) {
    let p = node.state_dir().join(PULL_FILE);
    if let Ok(b) = serde_json::to_vec_pretty(r) {
        if let Err(e) = fsx::write_atomic(&p, &b, 0o644, Durability::Visible) {
            tracing::warn!("{}: {e}", p.display());
        }
    }
}

/// The last pull recorded on `node`.
pub fn last(node: &Node) -> Option<PullRecord> {
    serde_json::from_slice(&std::fs::read(node.state_dir().join(PULL_FILE)).ok()?).ok()
}
