//! The backup agent, assembled: what `ha-sync serve` runs.
//!
//! Before the first session, a restore a crash interrupted is completed, so live holds one
//! whole generation before anything new arrives. Each session then stages what the primary
//! sends ([`BackupHandler`]) and, after the commit, restores it into the live tree with the
//! NOTIFY_SYNC actions ([`restore_hook`]). The cluster's remote actions are registered on the
//! returned server by their own crate.

use crate::agent::{BackupHandler, RestoreHook};
use crate::transport::{self, Server, ServerConfig, TransportError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use sync_core::manifest::Manifest;
use sync_core::node::Node;
use sync_core::runner::Runner;
use sync_core::staging::Staging;
use sync_core::wire::Commit;

/// What the caller may tune; [`Options::new`] gives the router's defaults.
pub struct Options {
    pub listen: SocketAddr,
    /// ed25519 host key, made on first start.
    pub host_key: PathBuf,
    /// The primaries allowed in.
    pub authorized_keys: PathBuf,
    /// Only stage what arrives; never restore it to the live tree.
    pub staging_only: bool,
    /// Runs the hooks' commands (init scripts, hotplug-call, uci).
    pub runner: Arc<dyn Runner>,
}

impl Options {
    /// The node's own key files, listening on `listen`.
    pub fn new(node: &Node, listen: SocketAddr, runner: Arc<dyn Runner>) -> Options {
        let keys = node.keys();
        Options {
            listen,
            host_key: keys.host_key,
            authorized_keys: keys.authorized_keys,
            staging_only: false,
            runner,
        }
    }
}

/// The restore that follows each commit: staging -> `node`'s live tree, under the hooks
/// lock, refused on the master and the primary.
pub fn restore_hook(node: &Node, runner: Arc<dyn Runner>) -> RestoreHook {
    let (root, staging) = (node.root().to_path_buf(), node.staging_dir());
    Arc::new(move |m: &Manifest, c: &Commit| {
        let ctx = restore_hooks::Ctx {
            root: &root,
            staging: &staging,
            runner: runner.as_ref(),
        };
        restore_hooks::restore_after_commit(&ctx, m, c)
    })
}

/// Completes an interrupted restore (logged; a failure is logged and the agent still
/// starts: the next commit or NOTIFY_SYNC tries again).
pub fn recover(node: &Node, runner: &dyn Runner) {
    let staging = node.staging_dir();
    let ctx = restore_hooks::Ctx {
        root: node.root(),
        staging: &staging,
        runner,
    };
    match restore_hooks::recover(&ctx) {
        Ok(Some(r)) => tracing::info!("completed an interrupted restore of generation {}", r.root),
        Ok(None) => {}
        Err(e) => tracing::warn!("recovering an interrupted restore: {e}"),
    }
    // A commit whose restore never began (killed between the two, or while waiting for
    // the hooks lock) has no journal: staging's own record says live lags.
    let pending = Staging::open(&staging)
        .ok()
        .and_then(|st| st.unrestored().cloned());
    if let Some(m) = pending {
        let root = m.root_hash();
        let commit = Commit {
            root,
            ..Commit::default()
        };
        let rep = restore_hooks::restore_after_commit(&ctx, &m, &commit);
        match &rep.refused {
            Some(why) => tracing::info!("committed generation {root} left unrestored: {why}"),
            None => tracing::info!(
                "restored committed generation {root} (an earlier run stopped before its restore): {} changed, {} errors",
                rep.changed.len(),
                rep.errors.len()
            ),
        }
    }
}

/// The sync handler of `node`: staging, its name, and the restore after each commit.
pub fn handler(node: &Node, opts: &Options) -> BackupHandler {
    let restore = (!opts.staging_only).then(|| restore_hook(node, opts.runner.clone()));
    BackupHandler {
        staging: node.staging_dir(),
        node: node.name("backup"),
        restore,
    }
}

/// Recovers, builds the handler and binds the agent's SSH server (not yet serving: register
/// more handlers on it, then run it).
pub async fn bind(node: &Node, opts: Options) -> Result<Server, TransportError> {
    if !opts.staging_only {
        let (n, r) = (node.clone(), opts.runner.clone());
        tokio::task::spawn_blocking(move || recover(&n, r.as_ref()))
            .await
            .expect("recovery task");
    }
    let handler = handler(node, &opts);
    let runner = opts.runner.clone();
    let cfg = ServerConfig::new(opts.listen, opts.host_key, opts.authorized_keys);
    let server = transport::bind(cfg, Arc::new(handler)).await?;
    Ok(crate::pull::register(server, node, runner))
}
