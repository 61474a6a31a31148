//! The init scripts the cluster runs (`/etc/init.d/keepalived enable`, ...), through the
//! context's [`Runner`](sync_core::runner::Runner): below the actions and the image upload,
//! which both run commands.

use sync_core::runner::{Cmd, CmdOutput};

use crate::{ClusterError, Ctx};

/// Services the cluster enables, starts, stops and disables together.
pub(crate) const SERVICES: &[&str] = &["keepalived", "conntrackd"];

/// Runs `cmd`; a command that cannot start or fails is an error naming it, with its stderr.
pub(crate) fn run_checked(
    ctx: &Ctx,
    action: &'static str,
    cmd: &Cmd,
) -> Result<CmdOutput, ClusterError> {
    let out = ctx.runner.run(cmd).map_err(|e| ClusterError::Command {
        action,
        cmd: cmd.line(),
        detail: e.to_string(),
    })?;
    if out.success() {
        Ok(out)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        Err(ClusterError::Command {
            action,
            cmd: cmd.line(),
            detail: format!(
                "exit status {:?}: {}",
                out.code,
                if stderr.trim().is_empty() {
                    stdout.trim()
                } else {
                    stderr.trim()
                }
            ),
        })
    }
}

pub(crate) fn service(ctx: &Ctx, svc: &str, action: &'static str) -> Result<(), ClusterError> {
    run_checked(
        ctx,
        action,
        &Cmd::new(format!("/etc/init.d/{svc}")).arg(action),
    )
    .map(drop)
}

pub(crate) fn start_services(ctx: &Ctx) -> Result<(), ClusterError> {
    for svc in SERVICES {
        service(ctx, svc, "enable")?;
        service(ctx, svc, "restart")?;
    }
    Ok(())
}

pub(crate) fn stop_services(ctx: &Ctx) -> Result<(), ClusterError> {
    for svc in SERVICES {
        service(ctx, svc, "stop")?;
        service(ctx, svc, "disable")?;
    }
    Ok(())
}

/// After a change of the VIPs: keepalived reloads (SIGHUP keeps its state, so the primary
/// keeps the VIPs; a restart would hand them to the backup for a moment), conntrackd
/// restarts with its new ignore list. Only when the cluster is enabled.
pub(crate) fn reload(ctx: &Ctx) -> Result<(), ClusterError> {
    if !enabled(ctx) {
        return Ok(());
    }
    service(ctx, "keepalived", "reload")?;
    service(ctx, "conntrackd", "restart")
}

/// Whether ha-sync's own init script is installed (on a router; not on a test root).
pub(crate) fn has_agent_service(ctx: &Ctx) -> bool {
    ctx.path("etc/init.d/ha-sync").is_file()
}

/// Whether keepalived is enabled at boot (`/etc/init.d/keepalived enabled`).
pub(crate) fn enabled(ctx: &Ctx) -> bool {
    ctx.runner
        .run(&Cmd::new("/etc/init.d/keepalived").arg("enabled"))
        .is_ok_and(|o| o.success())
}
