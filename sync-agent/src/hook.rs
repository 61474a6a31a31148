//! keepalived's events on either node (`ha-sync hook EVENT`): the restore hooks, then the
//! failover alert they call for. The hooks decide the alert under their lock; its command
//! runs here, outside it, since an admin's alert script may take its time.

use crate::alerts::{self, Alert};
use restore_hooks::{Ctx, Event, HookError, HookOutcome};
use sync_core::node::Node;
use sync_core::runner::Runner;

/// Runs `event`'s hook on `node` and announces the alert it raises or clears.
pub fn run(node: &Node, runner: &dyn Runner, event: Event) -> Result<HookOutcome, HookError> {
    let staging = node.staging_dir();
    let ctx = Ctx {
        root: node.root(),
        staging: &staging,
        runner,
    };
    let out = restore_hooks::run_hook(&ctx, event)?;
    if let Some(a) = &out.alert {
        alerts::announce(
            node.root(),
            runner,
            Alert::PrimaryFailed,
            a.failing,
            a.message,
        );
    }
    Ok(out)
}
