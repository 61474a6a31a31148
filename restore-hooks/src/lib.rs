#![deny(unreachable_pub)]
//! The backup side of ha-sync, after the bytes arrive, and both nodes' keepalived hooks.
//!
//! - [`restore_after_commit`]: the agent calls it right after each commit. Under the hooks
//!   lock, refused while this node is VRRP master or the primary, it writes the committed
//!   generation from staging into live ([`restore`](mod@restore): only what differs, each file
//!   atomically, listed directories mirrored, deleted files deleted, per-node values kept) and,
//!   when anything changed, runs the NOTIFY_SYNC actions. The [`RestoreReport`] goes back to
//!   the primary.
//! - [`recover`]: at the start of the agent and of every hook: finishes a restore a crash
//!   interrupted ([`journal`]), so live holds one whole generation.
//! - [`run_hook`]: `ha-sync hook EVENT`, called by `/etc/hotplug.d/keepalived/` on keepalived's
//!   events (see [`hooks`] for what each does).
//!
//! **One lock, one order.** Restores and hooks take the same `flock`
//! (`<root>/var/run/ha-sync/hooks.lock`), so a restore never runs while a NOTIFY_MASTER
//! brings the node up, and the VRRP state a restore checks is the one the last hook left.
//! keepalived events also take a ticket before waiting for the lock: when two arrive close
//! together, only the later one acts (flock does not wake waiters in order).
//!
//! Every external command goes through [`sync_core::runner::Runner`]; UCI files and state go
//! through [`sync_core::uci`] with atomic writes.

pub mod authority;
pub mod cron;
pub mod export;
pub mod hooks;
pub mod identity;
pub mod journal;
mod livestat;
pub mod records;
mod restore;
mod services;
mod state;

pub use sync_core::node::{Role, VrrpState};

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use sync_core::manifest::{Hash, Manifest};
use sync_core::node::{Node, STATE_DIR};
use sync_core::runner::Runner;
use sync_core::staging::{ApplyError, Staging};
use sync_core::uci::UciError;
use sync_core::wire::{Commit, RestoreReport};

/// What a restore or a hook needs to run.
pub struct Ctx<'a> {
    /// The router's root (`/`; a temporary directory in tests).
    pub root: &'a Path,
    /// The staging tree (`sync_core::node::Node::new(root).staging_dir()`).
    pub staging: &'a Path,
    pub runner: &'a dyn Runner,
}

/// A keepalived event, as `ACTION` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    NotifySync,
    NotifyMaster,
    NotifyBackup,
    NotifyFault,
    NotifyStop,
}

impl Event {
    pub const ALL: [Event; 5] = [
        Event::NotifySync,
        Event::NotifyMaster,
        Event::NotifyBackup,
        Event::NotifyFault,
        Event::NotifyStop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::NotifySync => "NOTIFY_SYNC",
            Event::NotifyMaster => "NOTIFY_MASTER",
            Event::NotifyBackup => "NOTIFY_BACKUP",
            Event::NotifyFault => "NOTIFY_FAULT",
            Event::NotifyStop => "NOTIFY_STOP",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Event {
    type Err = HookError;

    /// `NOTIFY_MASTER`, as keepalived's `ACTION` says it (case and the `NOTIFY_` prefix are
    /// optional: `master` works too).
    fn from_str(s: &str) -> Result<Event, HookError> {
        let up = s.trim().to_ascii_uppercase();
        let name = up.strip_prefix("NOTIFY_").unwrap_or(&up);
        Event::ALL
            .into_iter()
            .find(|e| &e.as_str()["NOTIFY_".len()..] == name)
            .ok_or_else(|| HookError::UnknownEvent(s.to_string()))
    }
}

/// What [`run_hook`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    pub event: Event,
    /// The VRRP state recorded before this event (`None`: none since boot).
    pub previous: Option<VrrpState>,
    /// A later keepalived event arrived while this one waited for the lock: it did nothing.
    pub superseded: bool,
    /// NOTIFY_SYNC: the restore (or the completion of an interrupted one).
    pub restore: Option<RestoreReport>,
    /// Steps that failed; the hook went on with the others.
    pub errors: Vec<String>,
    /// The `ha:primary:failed` alert this event raises or clears, for the caller to announce
    /// (the hooks record its UCI timestamps under their lock; the alert command runs outside).
    pub alert: Option<FailoverAlert>,
}

/// `ha:primary:failed` on a transition to master: raised when the backup takes over,
/// cleared when the primary is master again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverAlert {
    pub failing: bool,
    pub message: &'static str,
}

impl FailoverAlert {
    /// The alert of `event` on a node of `role` that was `previous` before it; `None` when the
    /// event is not a transition to master.
    pub fn of(event: Event, previous: Option<VrrpState>, role: Option<Role>) -> Option<Self> {
        if event != Event::NotifyMaster || previous == Some(VrrpState::Master) {
            return None;
        }
        match role? {
            Role::Backup => Some(FailoverAlert {
                failing: true,
                message: "the backup took over the virtual IPs: the primary is down or unreachable",
            }),
            Role::Primary => Some(FailoverAlert {
                failing: false,
                message: "the primary is master again",
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Uci(#[from] UciError),
    #[error(transparent)]
    Staging(#[from] ApplyError),
    /// An `/etc/ha` record that cannot be imported (network left as it was).
    #[error("{}: {msg}", path.display())]
    Record { path: PathBuf, msg: String },
    #[error("restore journal {}: {msg}", path.display())]
    Journal { path: PathBuf, msg: String },
    #[error("unknown event {0:?}: expected NOTIFY_SYNC, NOTIFY_MASTER, NOTIFY_BACKUP, NOTIFY_FAULT or NOTIFY_STOP")]
    UnknownEvent(String),
}

fn set_vrrp_state(root: &Path, s: VrrpState) -> Result<(), HookError> {
    let node = Node::new(root);
    node.set_vrrp_state(s).map_err(at(node.vrrp_state_file()))
}

pub(crate) fn at(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> HookError {
    let path = path.as_ref().to_path_buf();
    move |source| HookError::Io { path, source }
}

/// Why this node must not restore now, if it must not.
fn refusal(ctx: &Ctx) -> Option<String> {
    let node = Node::new(ctx.root);
    let master = "this node is the VRRP master: a sync never lands on the active node";
    if node.role() == Some(Role::Primary) {
        return Some(
            "this node is the primary (keepalived.primary): it sends, it does not restore".into(),
        );
    }
    match node.vrrp_state() {
        Some(VrrpState::Master) => Some(master.into()),
        Some(_) => None,
        // A configured backup with no keepalived event since boot (issue 11, bug 3): it may
        // be about to become master. Ask keepalived itself; without an answer, wait for its
        // first event (NOTIFY_BACKUP restores what is staged, and so does the next session).
        None if node.role() == Some(Role::Backup) => {
            sync_core::keepalived::refresh_json(ctx.root, ctx.runner);
            match sync_core::keepalived::dumped_state(ctx.root).as_deref() {
                Some("master") => Some(master.into()),
                Some(_) => None,
                None => Some(
                    "VRRP state unknown (no keepalived event since boot and no keepalived dump): \
                     the generation stays staged until keepalived reports this node's state"
                        .into(),
                ),
            }
        }
        // No cluster configured (a node being set up, a test root): nothing to protect.
        None => None,
    }
    .or_else(|| {
        // An acting backup's own changes wait for the primary's pull (issue 11).
        (node.role() == Some(Role::Backup))
            .then(|| authority::hold(ctx))
            .flatten()
    })
}

fn refused(root: Hash, why: String) -> RestoreReport {
    tracing::warn!("restore refused: {why}");
    RestoreReport {
        root,
        applied: false,
        refused: Some(why),
        ..RestoreReport::default()
    }
}

/// The journal an interrupted restore left, if any. A journal that does not parse (it is
/// written atomically, so only a damaged disk makes one) counts as "interrupted somewhere".
fn pending(staging: &Path) -> Option<journal::Pending> {
    let state = restore::open_state(staging).ok()?;
    match journal::read(&state) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("{e}; redoing the restore in full");
            Some(journal::Pending {
                root: Hash::default(),
                phase: journal::Phase::Restore,
                paths: Vec::new(),
            })
        }
    }
}

/// Called by the backup agent right after each commit (the [`sync_core::session`] restore
/// callback): restores `manifest` (the generation just committed in `ctx.staging`) into live
/// and reports to the primary. Refused, with the reason in `refused` and nothing written,
/// while this node is VRRP master or the primary. A journal left by a crash is completed on
/// the way (this restore compares everything, and the interrupted run's paths are notified).
pub fn restore_after_commit(ctx: &Ctx, manifest: &Manifest, commit: &Commit) -> RestoreReport {
    restore_generation(ctx, manifest, commit, false)
}

/// [`restore_after_commit`] trusting no cache: every live file of the generation is hashed
/// and every mirrored directory listed. The drift check's pass: it finds what a stat cannot
/// show (a file changed with its times put back), at the cost of reading the whole tree.
pub fn restore_thorough(ctx: &Ctx, manifest: &Manifest, commit: &Commit) -> RestoreReport {
    restore_generation(ctx, manifest, commit, true)
}

fn restore_generation(
    ctx: &Ctx,
    manifest: &Manifest,
    commit: &Commit,
    thorough: bool,
) -> RestoreReport {
    let root = manifest.root_hash();
    sync_core::fault::point(sync_core::fault::BEFORE_RESTORE_LOCK);
    let _lock = match state::hooks_lock(ctx.root) {
        Ok(l) => l,
        Err(e) => {
            return RestoreReport {
                root,
                errors: vec![(STATE_DIR.to_string(), e.to_string())],
                ..RestoreReport::default()
            }
        }
    };
    if let Some(why) = refusal(ctx) {
        return refused(root, why);
    }
    if commit.root != root {
        tracing::warn!(
            "commit names generation {}, the manifest is {root}: restoring the manifest",
            commit.root
        );
    }
    let rep = restore::restore(
        ctx,
        manifest,
        root,
        restore::Options {
            master: false,
            recover: pending(ctx.staging),
            thorough,
        },
    );
    if rep.applied {
        authority::restored(ctx);
    }
    rep
}

/// At agent and hook start: completes a restore a crash interrupted, so live holds one whole
/// generation. `Ok(None)` when there was nothing to complete.
pub fn recover(ctx: &Ctx) -> Result<Option<RestoreReport>, HookError> {
    let _lock = state::hooks_lock(ctx.root)?;
    recover_locked(ctx)
}

fn recover_locked(ctx: &Ctx) -> Result<Option<RestoreReport>, HookError> {
    let Some(p) = pending(ctx.staging) else {
        return Ok(None);
    };
    let staging = Staging::open(ctx.staging)?;
    if staging.is_dirty() {
        // Staging may hold parts of the next generation; the next commit's restore finishes.
        return Ok(Some(refused(p.root, "an interrupted restore waits for the staging tree, which holds an interrupted sync: the next commit completes it".into())));
    }
    let Some(m) = staging.committed() else {
        return Ok(Some(refused(
            p.root,
            "an interrupted restore waits, but staging has no committed generation".into(),
        )));
    };
    let root = m.root_hash();
    if p.root != root {
        tracing::warn!(
            "the restore journal names generation {}, staging holds {root}: restoring that",
            p.root,
        );
    }
    tracing::info!("completing the restore of generation {root} interrupted by a crash");
    // Completed even on a node that became master since: live must not stay a mix.
    let master = Node::new(ctx.root).vrrp_state() == Some(VrrpState::Master);
    Ok(Some(restore::restore(
        ctx,
        m,
        root,
        restore::Options {
            master,
            recover: Some(p),
            thorough: false,
        },
    )))
}

/// `ha-sync hook EVENT`: NOTIFY_SYNC completes an interrupted restore or restores the
/// generation committed in staging (refused on the master; nothing is written nor fired when
/// live already holds it); the other events record the VRRP state and act (see [`hooks`]).
pub fn run_hook(ctx: &Ctx, event: Event) -> Result<HookOutcome, HookError> {
    let ticket = match event {
        Event::NotifySync => None,
        e => Some(state::take_ticket(ctx.root, e.as_str())?),
    };
    let _lock = state::hooks_lock(ctx.root)?;
    let previous = Node::new(ctx.root).vrrp_state();
    let mut out = HookOutcome {
        event,
        previous,
        superseded: false,
        restore: None,
        errors: Vec::new(),
        alert: None,
    };
    if let Some(t) = ticket {
        if state::latest_ticket(ctx.root) != Some(t) {
            tracing::info!("{event}: a later keepalived event is queued; this one is skipped");
            out.superseded = true;
            return Ok(out);
        }
    }
    match event {
        Event::NotifySync => {
            let rep = match recover_locked(ctx)? {
                Some(r) => r,
                None => restore_committed(ctx)?,
            };
            out.restore = Some(rep);
            return Ok(out);
        }
        Event::NotifyMaster => {
            set_vrrp_state(ctx.root, VrrpState::Master)?;
            authority::mark_master(ctx)?;
        }
        Event::NotifyBackup => set_vrrp_state(ctx.root, VrrpState::Backup)?,
        Event::NotifyFault => set_vrrp_state(ctx.root, VrrpState::Fault)?,
        Event::NotifyStop => set_vrrp_state(ctx.root, VrrpState::Stop)?,
    }
    // A journal left by a crash is completed before the node changes role.
    if let Some(rep) = recover_locked(ctx)? {
        out.restore = Some(rep);
    }
    out.alert = FailoverAlert::of(event, previous, Node::new(ctx.root).role());
    out.errors = match event {
        Event::NotifyMaster => hooks::master(ctx, previous),
        Event::NotifyBackup => hooks::backup(ctx),
        Event::NotifyFault => hooks::teardown(ctx, true),
        Event::NotifyStop => hooks::teardown(ctx, false),
        Event::NotifySync => Vec::new(),
    };
    // A backup stepping down from master takes the generation it refused while it was
    // master: the primary's next sync finds staging up to date and would not send it again.
    // Nothing is written when live already holds it.
    if event == Event::NotifyBackup
        && out.restore.is_none()
        && Node::new(ctx.root).role() == Some(Role::Backup)
    {
        match restore_committed(ctx) {
            Ok(r) => out.restore = Some(r),
            Err(e) => out
                .errors
                .push(format!("restore of the committed generation: {e}")),
        }
    }
    Ok(out)
}

fn restore_committed(ctx: &Ctx) -> Result<RestoreReport, HookError> {
    let staging = Staging::open(ctx.staging)?;
    let Some(m) = staging.committed() else {
        return Ok(refused(
            Hash::default(),
            "staging holds no committed generation (or its manifest does not validate)".into(),
        ));
    };
    let root = m.root_hash();
    if staging.is_dirty() {
        return Ok(refused(
            root,
            "staging holds an interrupted sync; the next commit restores".into(),
        ));
    }
    if let Some(why) = refusal(ctx) {
        return Ok(refused(root, why));
    }
    let rep = restore::restore(
        ctx,
        m,
        root,
        restore::Options {
            master: false,
            recover: None,
            thorough: false,
        },
    );
    if rep.applied {
        authority::restored(ctx);
    }
    Ok(rep)
}
