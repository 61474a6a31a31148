//! `ha-sync watch`: the primary's daemon. A change on the primary reaches the backup about
//! a quarter of a second later, by itself.
//!
//! - **One connection.** The SSH connection to the backup stays open; every sync is a new
//!   channel on it ([`Connection`]), so a sync costs no TCP or SSH handshake, no key exchange
//!   and no login. russh's keepalive (15 s) notices a dead peer; a lost connection is
//!   re-opened with capped exponential backoff, and the first sync on the new one catches up
//!   whatever changed meanwhile.
//! - **Triggers.** inotify on everything that decides what is synced ([`crate::triggers`]),
//!   debounced into bursts (the first change after quiet at once; then 200 ms of quiet, at
//!   most 2 s); a periodic reconcile (default 60 s) as the safety net; `ha-sync now` over the control socket ([`crate::control`]).
//!   Between them the daemon sleeps: no polling.
//! - **Cheap syncs.** The stat cache stays in memory, so a sync of an unchanged tree reads
//!   no file. A change-triggered sync whose manifest equals what the backup committed on this
//!   connection sends nothing at all (e.g. a file saved with the same content and mtime).
//! - **Never from a backup.** It syncs only while the node is the configured primary (UCI
//!   section `keepalived.primary`) and VRRP master (the hooks' record of keepalived's last
//!   event, else keepalived's own dumps). A change of either is an inotify event too.
//! - **Status and alerts** after every sync: [`crate::status`] (UCI state as the incumbent,
//!   plus `status.json`) and [`crate::alerts`] (`ha:sync:failed` after N failures in a row or
//!   a change left waiting too long; cleared by a success). Sync health never touches VRRP.
//!
//! Logs go to stderr through `tracing`; under procd (`procd_set_param stderr 1`) they reach
//! syslog as `ha-sync[pid]`.

use crate::agent::{self, NowError};
use crate::alerts::{self, Alert, AlertConfig};
use crate::control::{self, ControlError, NowReply};
use crate::gate::{gate, Gate};
use crate::link::Link;
use crate::record::{self, FailureAlert, History};
use crate::schedule::{Due, Schedule};
use crate::status::{self, DaemonStatus, Outcome, RestoreRecord, SyncRecord};
use crate::transport::ClientConfig;
use crate::triggers::{self, Debounce, Plan, RawEvent, Relevance, Watcher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sync_core::fsx;
use sync_core::manifest::{Hash, Kind};
use sync_core::node::Node;
use sync_core::prepare::{self, Prepared};
use sync_core::runner::Runner;
use sync_core::wire::RestoreReport;
use sync_core::StatCache;
use tokio::sync::mpsc;

/// Default period of the reconcile sync.
pub const RECONCILE: Duration = Duration::from_secs(60);
/// First and longest wait before retrying after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a fence (see `Engine::fence`) may take before the daemon scans instead.
const FENCE_WAIT: Duration = Duration::from_secs(1);

/// What the daemon needs; [`DaemonConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub root: PathBuf,
    pub client: ClientConfig,
    /// Control socket (default `<root>/var/run/ha-sync.sock`).
    pub socket: PathBuf,
    /// Period of the reconcile sync; zero: none.
    pub reconcile: Duration,
    pub quiet: Duration,
    pub max_delay: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Alert settings; `None`: from `keepalived.ha_peer` (read again when that file changes).
    pub alerts: Option<AlertConfig>,
    /// Deadline of each sync session; `None`: from the manifest
    /// (`sync_core::manifest::session_deadline`).
    pub session_deadline: Option<Duration>,
}

impl DaemonConfig {
    pub fn new(root: PathBuf, client: ClientConfig) -> DaemonConfig {
        DaemonConfig {
            socket: sync_core::node::Node::new(&root).control_socket(),
            root,
            client,
            reconcile: RECONCILE,
            quiet: triggers::QUIET,
            max_delay: triggers::MAX_DELAY,
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
            alerts: None,
            session_deadline: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("another ha-sync daemon runs for this root (it holds {})", path.display())]
    AlreadyRunning { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Triggers(#[from] triggers::TriggerError),
    #[error("daemon task failed: {0}")]
    Task(String),
}

pub use crate::schedule::Trigger;

pub use crate::control::DaemonHandle;
use crate::control::Request;

/// A started daemon.
pub struct Daemon {
    handle: DaemonHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Daemon {
    pub fn handle(&self) -> DaemonHandle {
        self.handle.clone()
    }

    /// Waits until the daemon stopped.
    pub async fn wait(self) -> Result<(), DaemonError> {
        self.task
            .await
            .map_err(|e| DaemonError::Task(e.to_string()))
    }
}

/// Runs the daemon until `shutdown` completes (or a `stop` request).
pub async fn run(
    cfg: DaemonConfig,
    runner: Arc<dyn Runner>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let d = start(cfg, runner).await?;
    let h = d.handle();
    let mut wait = std::pin::pin!(d.wait());
    tokio::select! {
        r = &mut wait => return r,
        () = shutdown => h.stop().await,
    }
    wait.await
}

/// An exclusive, non-blocking lock held for the daemon's life: a second `watch` on the same
/// root refuses to start.
fn daemon_lock(path: &Path) -> Result<fsx::Lock, DaemonError> {
    match fsx::Lock::try_acquire(path) {
        Ok(Some(l)) => Ok(l),
        Ok(None) => Err(DaemonError::AlreadyRunning {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(DaemonError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Takes the daemon lock, binds the control socket, sets the watches and starts the loop.
/// The first sync runs at once when this node is the active primary.
pub async fn start(cfg: DaemonConfig, runner: Arc<dyn Runner>) -> Result<Daemon, DaemonError> {
    let node = Node::new(&cfg.root);
    let state_dir = node.state_dir();
    std::fs::create_dir_all(&state_dir).map_err(|source| DaemonError::Io {
        path: state_dir.clone(),
        source,
    })?;
    let lock = daemon_lock(&state_dir.join("watch.lock"))?;
    let listener = control::bind(&cfg.socket)?;
    let (watcher, events, overflow) = Watcher::new()?;
    let cache = StatCache::load(&prepare::stat_cache_path(&node));
    let (tx, requests) = mpsc::channel(16);
    let status = Arc::new(Mutex::new(DaemonStatus {
        pid: std::process::id(),
        started: status::epoch_now(),
        peer: cfg.client.peer.clone(),
        socket: cfg.socket.display().to_string(),
        ..DaemonStatus::default()
    }));
    let handle = DaemonHandle::new(tx, status.clone(), cfg.client.peer.clone());
    let alerts_cfg = cfg
        .alerts
        .clone()
        .unwrap_or_else(|| AlertConfig::load(&cfg.root));
    let mut engine = Engine {
        failure_alert: FailureAlert::new(
            alerts::is_raised(&cfg.root, Alert::SyncFailed),
            alerts_cfg.failures,
        ),
        alerts: alerts_cfg,
        sched: Schedule::new(
            Debounce::new(cfg.quiet, cfg.max_delay),
            cfg.reconcile,
            (cfg.backoff_min, cfg.backoff_max),
        ),
        link: Link::new(cfg.client.clone()),
        cfg,
        runner,
        cache: Arc::new(Mutex::new(cache)),
        prepared: None,
        restore_failed: None,
        watcher,
        events: Some(events),
        overflow,
        fences: 0,
        dirty: true,
        list_dirty: true,
        gate_dirty: false,
        plan: Plan::default(),
        rescan: false,
        gate: Gate::default(),
        status,
        degraded: false,
        rescans: 0,
        history: History::default(),
        _lock: lock,
    };
    // Watch the list's inputs and the gate from the start, before the first sync.
    match sync_core::restore_list::compute(&engine.cfg.root, engine.runner.as_ref()) {
        Ok(list) => engine.replan(&list, false),
        Err(e) => tracing::warn!("restore list: {e}; watches follow the first sync"),
    }
    engine.refresh_gate(true);
    engine.commit();
    let serve = tokio::spawn(control::serve(listener, handle.clone()));
    let task = tokio::spawn(async move {
        engine.run(requests).await;
        serve.abort();
        engine.shutdown().await;
    });
    Ok(Daemon { handle, task })
}

/// The outcome of one sync attempt, before it is recorded.
struct Attempt {
    outcome: Outcome,
    record: SyncRecord,
    error: Option<String>,
}

struct Engine {
    cfg: DaemonConfig,
    runner: Arc<dyn Runner>,
    /// Shared with the blocking scan task.
    cache: Arc<Mutex<StatCache>>,
    prepared: Option<Prepared>,
    /// A generation whose restore on the backup failed, and the report.
    restore_failed: Option<(Hash, RestoreRecord)>,
    /// The connection to the backup (`crate::link`).
    link: Link,
    watcher: Watcher,
    /// notify's events; `None` once its thread is gone.
    events: Option<mpsc::Receiver<RawEvent>>,
    overflow: Arc<triggers::Overflow>,
    /// Fences written (see `fence`).
    fences: u64,
    /// A relevant event came since the last scan began: the manifest in `prepared` may be
    /// stale.
    dirty: bool,
    /// ... and one that may change the restore list itself (see `Plan::list_may_change`).
    list_dirty: bool,
    /// The role or the VRRP state may have changed: read them again.
    gate_dirty: bool,
    plan: Plan,
    /// What waits and what is due when (pure: `crate::schedule`).
    sched: Schedule,
    /// Events were lost: the next sync re-establishes every watch.
    rescan: bool,
    gate: Gate,
    status: Arc<Mutex<DaemonStatus>>,
    alerts: AlertConfig,
    /// `ha:sync:failed`, decided by `crate::record`.
    failure_alert: FailureAlert,
    degraded: bool,
    rescans: u64,
    /// What syncs did; reaches the shared status only with status.json (see `commit`).
    history: History,
    _lock: fsx::Lock,
}

impl Engine {
    async fn run(&mut self, mut requests: mpsc::Receiver<Request>) {
        loop {
            let deadline = self.deadline();
            let conn = self.link.current();
            let lost = async move {
                match conn {
                    Some(c) => c.closed().await,
                    None => std::future::pending().await,
                }
            };
            let overflow = self.overflow.clone();
            tokio::select! {
                req = requests.recv() => match req {
                    Some(Request::Now(reply)) => {
                        let r = self.sync(Trigger::Now).await;
                        let _ = reply.send(r);
                    }
                    Some(Request::Inject(ev)) => self.on_event(ev),
                    Some(Request::Stop) | None => break,
                },
                ev = recv(&mut self.events) => {
                    let Some(ev) = ev else {
                        tracing::error!("the inotify thread stopped; only the reconcile timer is left");
                        self.events = None;
                        self.degraded = true;
                        continue;
                    };
                    self.on_event(ev);
                    // Take what is queued in one go: a burst is classified, not slept on.
                    while let Some(ev) = self.events.as_mut().and_then(|rx| rx.try_recv().ok()) {
                        self.on_event(ev);
                    }
                    self.after_events();
                }
                () = overflow.wait() => {
                    self.on_event(RawEvent::Rescan("the daemon fell behind the events".into()));
                    self.after_events();
                }
                () = lost => self.on_connection_lost(),
                () = sleep_until(deadline) => self.on_timer().await,
            }
        }
    }

    /// Makes sure every event the kernel queued so far has been handled: writes a file in a
    /// watched directory and handles events until its own comes through (inotify keeps the
    /// order of one instance's events). False when that cannot be known (no watcher, lost
    /// events, no answer within a second): the caller then scans.
    async fn fence(&mut self) -> bool {
        let state_dir = Node::new(&self.cfg.root).state_dir();
        if self.overflow.is_set() || !self.plan.watches.contains_key(&state_dir) {
            return false;
        }
        let Some(mut rx) = self.events.take() else {
            return false;
        };
        self.fences += 1;
        // A name of its own: one write makes several events, and the leftovers of an earlier
        // fence must not pass for this one's (it would then return before events queued
        // after them, e.g. the write a `now` was asked for).
        let fence = state_dir.join(format!(".fence.{}", self.fences));
        let mut seen = std::fs::write(&fence, b"").is_err();
        let deadline = tokio::time::Instant::now() + FENCE_WAIT;
        let mut ok = false;
        while !seen {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ev)) => {
                    seen = matches!(&ev, RawEvent::Paths(ps) if ps.contains(&fence));
                    ok = seen;
                    self.on_event(ev);
                }
                Ok(None) | Err(_) => break,
            }
        }
        self.events = Some(rx);
        let _ = std::fs::remove_file(&fence);
        ok && !self.overflow.is_set()
    }

    async fn shutdown(&mut self) {
        let _ = std::fs::remove_file(&self.cfg.socket);
        self.drop_connection();
        self.save_cache().await;
        self.commit();
        tracing::info!("ha-sync daemon stopped");
    }

    /// The next time something is due, if anything.
    fn deadline(&self) -> Option<Instant> {
        let alert_wait = (!self.failure_alert.is_raised()).then_some(self.alerts.max_wait);
        self.sched.deadline(self.gate.active, alert_wait)
    }

    async fn on_timer(&mut self) {
        // Each kind at most once a tick: a sync that fails sets its retry in the future.
        for _ in 0..3 {
            let alert_wait = (!self.failure_alert.is_raised()).then_some(self.alerts.max_wait);
            let due = self
                .sched
                .next(Instant::now(), self.gate.active, self.rescan, alert_wait);
            match due {
                None => return,
                Some(Due::Trim) => release_free_memory(),
                Some(Due::Sync(t)) => {
                    self.sync(t).await;
                }
                Some(Due::Alert(waited)) => {
                    if let Some(t) = self.failure_alert.waited(waited.as_secs()) {
                        self.set_alert(t).await;
                    }
                }
            }
        }
    }

    fn on_event(&mut self, ev: RawEvent) {
        let now = Instant::now();
        match ev {
            RawEvent::Paths(paths) => {
                for p in paths {
                    match self.plan.classify(&p) {
                        Relevance::Ignore => {}
                        Relevance::Change => {
                            if !self.list_dirty && self.plan.list_may_change(&p) {
                                self.list_dirty = true;
                            }
                            self.note_change(p, now);
                        }
                        Relevance::ListInput => {
                            tracing::debug!("{}: restore list input changed", p.display());
                            if self.cfg.alerts.is_none() {
                                self.alerts = AlertConfig::load(&self.cfg.root);
                            }
                            // keepalived's config also holds the role.
                            self.list_dirty = true;
                            self.gate_dirty = true;
                            self.note_change(p, now);
                        }
                        // Acted on once the queue is drained (after_events).
                        Relevance::Gate => self.gate_dirty = true,
                    }
                }
            }
            RawEvent::Rescan(why) => {
                tracing::warn!("{why}: events may have been lost; rescanning everything");
                self.rescan = true;
                self.dirty = true;
                self.list_dirty = true;
                self.gate_dirty = true;
                self.sched.nudge(now);
                self.rescans += 1;
            }
            RawEvent::WatchError { message, limit } => {
                if limit {
                    tracing::warn!(
                        "inotify watch limit reached ({message}): some changes are only seen \
                         by the reconcile every {:?}; raise fs.inotify.max_user_watches",
                        self.cfg.reconcile
                    );
                    self.degraded = true;
                } else {
                    tracing::warn!("watch error: {message}; rescanning");
                }
                self.rescan = true;
                self.dirty = true;
                self.list_dirty = true;
                self.sched.nudge(now);
                self.rescans += 1;
            }
        }
    }

    fn note_change(&mut self, p: PathBuf, now: Instant) {
        tracing::trace!("changed: {}", p.display());
        self.dirty = true;
        self.history.diverged();
        self.sched.changed(p, now, status::epoch_now());
    }

    fn after_events(&mut self) {
        if std::mem::take(&mut self.gate_dirty) {
            self.refresh_gate(false);
        }
        self.publish();
    }

    /// Re-reads role and VRRP state; acts on a change (start sending, or stop and hang up).
    fn refresh_gate(&mut self, first: bool) {
        let g = gate(&self.cfg.root);
        if g == self.gate && !first {
            return;
        }
        let was = self.gate.active;
        self.gate = g;
        match (was, self.gate.active) {
            (false, true) => {
                tracing::info!(
                    "this node is the active primary: sending to {}",
                    self.cfg.client.peer
                );
                // The activation's sync carries what changed while inactive.
                self.sched.activated(Instant::now(), first);
            }
            (true, false) | (false, false) => {
                if was || first {
                    tracing::info!(
                        "not sending: {}",
                        self.gate.reason.as_deref().unwrap_or("inactive")
                    );
                }
                self.drop_connection();
                // Bursts wait for the node to be active again; the pending paths stay.
                self.sched.deactivated();
            }
            (true, true) => {}
        }
        self.commit();
    }

    fn on_connection_lost(&mut self) {
        tracing::warn!("connection to {} lost", self.cfg.client.peer);
        self.drop_connection();
        if self.gate.active {
            self.sched.connection_lost(Instant::now());
        }
        self.publish();
    }

    fn drop_connection(&mut self) {
        self.link.drop_now();
    }

    /// Sets the watches of `list`'s plan (all of them again after lost events).
    fn replan(&mut self, list: &sync_core::restore_list::RestoreList, reset: bool) {
        let plan = Plan::compute(&self.cfg.root, list, &self.cfg.socket);
        if plan == self.plan && !reset {
            return;
        }
        let rep = if reset {
            self.watcher.reset(&plan)
        } else {
            self.watcher.apply(&plan)
        };
        if rep.limit {
            tracing::warn!(
                "inotify watch limit reached: some changes are only seen by the reconcile; \
                 raise fs.inotify.max_user_watches"
            );
            self.degraded = true;
        } else if reset {
            self.degraded = false;
        }
        for (p, e) in &rep.failed {
            tracing::warn!("cannot watch {}: {e}", p.display());
        }
        tracing::debug!(
            "watches: {} directories (+{} -{})",
            self.watcher.len(),
            rep.added,
            rep.removed
        );
        self.plan = plan;
    }

    /// One sync, recorded; the reply `now` gets.
    async fn sync(&mut self, trigger: Trigger) -> NowReply {
        self.refresh_gate(false);
        if !self.gate.active {
            return NowReply {
                ok: false,
                peer: self.cfg.client.peer.clone(),
                sync: None,
                error: self.gate.reason.clone(),
            };
        }
        let started = Instant::now();
        // The burst this sync carries: the first of its events starts the latency clock.
        let burst = self.sched.begin_sync();
        let reset = std::mem::take(&mut self.rescan);
        let a = self.attempt(trigger, burst, reset).await;
        self.sched.sync_ended(Instant::now());
        self.finish(trigger, started, a).await
    }

    async fn attempt(&mut self, trigger: Trigger, burst: Option<Instant>, reset: bool) -> Attempt {
        let mut record = SyncRecord {
            trigger: trigger.as_str().into(),
            ..SyncRecord::default()
        };
        let fail = |outcome: Outcome, e: String, record: SyncRecord| Attempt {
            outcome,
            record,
            error: Some(e),
        };
        // Serialises with a standalone `ha-sync now` on the same root.
        let _lock = match agent::lock_async(agent::sync_lock_path(&self.cfg.root)).await {
            Ok(l) => l,
            Err(e) => return fail(Outcome::LocalFailed, e.to_string(), record),
        };
        // Failback (issue 11): before anything goes to the backup, what it changed while it
        // was master comes here. Asked on every new connection and by every sync that does
        // not follow a local change (start, activation, reconcile, retry, `now`): a backup
        // that was not master answers at once, one round trip.
        if self.link.confirmed().is_none() || trigger != Trigger::Change {
            let conn = match self.link.get().await {
                Ok(c) => c,
                Err(e) => return fail(Outcome::of_transport(&e), e.to_string(), record),
            };
            let node = Node::new(&self.cfg.root);
            match crate::pull::pull(&conn, &node, self.runner.clone()).await {
                Ok(Some(r)) if !r.taken.is_empty() || !r.merged.is_empty() => {
                    // Live moved under the last scan, and the list may follow what came.
                    self.dirty = true;
                    self.list_dirty = true;
                }
                Ok(_) => {}
                Err(e) => {
                    let o = match &e {
                        crate::pull::PullFailure::Transport(t) => Outcome::of_transport(t),
                        _ => Outcome::TransferFailed,
                    };
                    let e = NowError::from(e);
                    return fail(o, e.to_string(), record);
                }
            }
        }
        let scan_start = Instant::now();
        // Nothing relevant happened since the last scan began, as far as a fence shows: its
        // manifest is the tree's, and `now` costs one round trip. The reconcile (the safety
        // net for what inotify cannot see) and syncs after lost events always scan.
        let mut reuse = matches!(trigger, Trigger::Now | Trigger::Retry | Trigger::Reconnect)
            && !reset
            && !self.degraded
            && !self.dirty
            && self.prepared.is_some();
        if reuse {
            // The fence handles the events still queued, which may set `dirty`.
            reuse = self.fence().await && !self.dirty;
        }
        if !reuse {
            // The list is computed again after an event that may change it, and by every sync
            // that does not follow events (start, reconcile, rescan); otherwise only scanned.
            let old_list = self
                .prepared
                .as_ref()
                .filter(|_| {
                    !self.list_dirty
                        && !reset
                        && matches!(trigger, Trigger::Change | Trigger::Now | Trigger::Retry)
                })
                .map(|p| p.list.clone());
            let new_list = old_list.is_none();
            self.dirty = false;
            self.list_dirty = false;
            let (root, runner, cache) = (
                self.cfg.root.clone(),
                self.runner.clone(),
                self.cache.clone(),
            );
            let prepared = tokio::task::spawn_blocking(move || {
                let mut c = match cache.lock() {
                    Ok(c) => c,
                    Err(p) => p.into_inner(),
                };
                let node = Node::new(&root);
                crate::agent::export_records(&node);
                prepare::prepare(&node, runner.as_ref(), &mut c, old_list)
            })
            .await;
            let error = match prepared {
                Ok(Ok(p)) => {
                    // The watches follow the list (what else they depend on sets list_dirty).
                    if new_list {
                        self.replan(&p.list, reset);
                    }
                    record.files_read = p.stats.files_hashed;
                    record.bytes_read = p.stats.bytes_hashed;
                    self.prepared = Some(p);
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("scan task: {e}")),
            };
            if let Some(e) = error {
                self.prepared = None;
                self.dirty = true;
                self.list_dirty = true;
                return fail(Outcome::LocalFailed, e, record);
            }
            record.scanned = true;
        }
        record.scan_ms = scan_start.elapsed().as_secs_f64() * 1e3;
        let Some(prepared) = self.prepared.as_ref() else {
            return fail(Outcome::LocalFailed, "no manifest".into(), record);
        };
        let m = &prepared.manifest;
        record.entries = m.entries.len() as u64;
        record.files = m
            .entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::File { .. }))
            .count() as u64;
        record.bytes = m.file_bytes();
        let root_hash = m.root_hash();
        let manifest = m.clone();

        // Nothing changed since the backup committed on this very connection: a change event
        // that changed nothing (same content, same metadata) costs no message.
        if trigger == Trigger::Change
            && self.link.is_alive()
            && self.link.confirmed() == Some(root_hash)
        {
            record.generation = Some(root_hash.to_hex());
            record.up_to_date = true;
            return self.restore_outcome(record, None, None);
        }
        let conn = match self.link.get().await {
            Ok(c) => c,
            Err(e) => return fail(Outcome::of_transport(&e), e.to_string(), record),
        };
        record.network = true;
        let session_start = Instant::now();
        let result = agent::bounded_session(
            &conn,
            self.cfg.root.clone(),
            manifest,
            Box::new(|_, _| {}),
            self.cfg.session_deadline,
        )
        .await;
        record.session_ms = session_start.elapsed().as_secs_f64() * 1e3;
        let rep = match result {
            Ok(Ok(rep)) => rep,
            Ok(Err(e)) => {
                if e.is_deadline() {
                    // A session past its deadline may still wait on this connection: only
                    // dropping it ends that; the next sync connects again.
                    drop(conn);
                    self.drop_connection();
                }
                let e = NowError::Sync(e);
                return fail(e.outcome(), e.to_string(), record);
            }
            Err(e) => {
                let o = Outcome::of_transport(&e);
                if !o.keeps_connection() || conn.is_closed() {
                    self.drop_connection();
                }
                return fail(o, e.to_string(), record);
            }
        };
        self.link.sent(rep.traffic.sent);
        record.up_to_date = rep.up_to_date;
        record.changed = rep.commit.as_ref().map_or(0, |c| c.changed.len() as u64);
        record.files_sent = rep.files_sent;
        record.payload_bytes = rep.payload_bytes;
        record.wire_sent = rep.traffic.sent;
        record.wire_received = rep.traffic.received;
        record.round_trips = rep.traffic.round_trips;
        record.restore = rep.restore.as_ref().map(RestoreRecord::from);
        self.link.set_confirmed(match &rep.commit {
            Some(c) => Some(c.root),
            None if rep.up_to_date => Some(rep.root),
            None => None,
        });
        record.generation = self.link.confirmed().map(|h| h.to_hex());
        if let Err(e) = agent::check_committed(&rep) {
            // A file changed while it was read: the backup holds a consistent generation,
            // and the change's own event (or this nudge) brings the next sync.
            tracing::info!("{e}");
            self.sched.nudge(Instant::now());
        }
        if !rep.up_to_date {
            record.latency_ms = burst.map(|b| b.elapsed().as_secs_f64() * 1e3);
        }
        self.restore_outcome(record, rep.restore.as_ref(), rep.restored)
    }

    /// The outcome of a sync the backup holds, by its restore. A sync that found the backup
    /// up to date ran no restore (`report` is `None`): if the restore of that same generation
    /// failed before, live still lacks it, and the failure stands until the backup says its
    /// live tree holds the generation (`restored`, from its Welcome: a NOTIFY_BACKUP or
    /// NOTIFY_SYNC restored it since) or a new generation restores.
    fn restore_outcome(
        &mut self,
        mut record: SyncRecord,
        report: Option<&RestoreReport>,
        restored: Option<Hash>,
    ) -> Attempt {
        let generation = self.link.confirmed();
        if report.is_none() && restored.is_some() && restored == generation {
            self.restore_failed = None;
        }
        if report.is_none() {
            if let Some((_, r)) = self
                .restore_failed
                .as_ref()
                .filter(|f| Some(f.0) == generation)
            {
                record.restore = Some(r.clone());
                return Attempt {
                    outcome: Outcome::RestoreFailed,
                    record,
                    error: Some(
                        "the backup holds this generation, but its restore to live failed (see \
                         restore); a new generation, or the NOTIFY_SYNC hook on the backup, \
                         restores it"
                            .into(),
                    ),
                };
            }
            return Attempt {
                outcome: Outcome::Successful,
                record,
                error: None,
            };
        }
        let outcome = Outcome::of_restore(report);
        self.restore_failed = match (outcome, generation, &record.restore) {
            (Outcome::RestoreFailed, Some(g), Some(r)) => Some((g, r.clone())),
            _ => None,
        };
        let error = report
            .filter(|_| !outcome.is_ok())
            .map(|r| match &r.refused {
                Some(why) => format!("the backup did not restore: {why}"),
                None => format!(
                    "the backup's restore failed for {} paths: {}",
                    r.errors.len(),
                    r.errors
                        .iter()
                        .take(3)
                        .map(|(p, e)| format!("{p}: {e}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            });
        Attempt {
            outcome,
            record,
            error,
        }
    }

    /// Records an attempt: UCI state, status, alerts, the next retry or reconcile.
    async fn finish(&mut self, trigger: Trigger, started: Instant, a: Attempt) -> NowReply {
        let Attempt {
            outcome,
            mut record,
            error,
        } = a;
        let now = status::epoch_now();
        record.status = outcome.as_str().into();
        record.ok = outcome.is_ok();
        record.time = now;
        record.duration_ms = started.elapsed().as_secs_f64() * 1e3;
        record.error = error.clone();
        if let Err(e) = status::write_uci(&self.cfg.root, outcome.as_str(), now) {
            tracing::warn!("cannot record the sync status: {e}");
        }
        self.history
            .note(outcome.is_ok(), outcome.as_str(), &record, now);
        if outcome.is_ok() {
            match (record.network, record.up_to_date) {
                (false, _) => tracing::debug!("{}: nothing changed", trigger.as_str()),
                (true, true) => tracing::debug!(
                    "{}: {} up to date ({:.1} ms: scan {:.1}, session {:.1})",
                    trigger.as_str(),
                    self.cfg.client.peer,
                    record.duration_ms,
                    record.scan_ms,
                    record.session_ms
                ),
                (true, false) => tracing::info!(
                    // The incumbent's line (`INFO: Configuration sync completed for <addr>`).
                    "Configuration sync completed for {}: {}: {} changed, {} files sent; {} \
                     round trips; {:.1} ms{}",
                    self.cfg.client.peer,
                    trigger.as_str(),
                    record.changed,
                    record.files_sent,
                    record.round_trips,
                    record.duration_ms,
                    record
                        .latency_ms
                        .map(|l| format!("; change to backup {l:.0} ms"))
                        .unwrap_or_default()
                ),
            }
            self.sched.succeeded();
            if let Some(t) = self.failure_alert.after(None) {
                self.set_alert(t).await;
            }
        } else {
            let wait = self.sched.failed(Instant::now());
            tracing::warn!(
                "sync ({}) failed: {}: {}; retry in {:?}",
                trigger.as_str(),
                outcome.as_str(),
                error.as_deref().unwrap_or(""),
                wait
            );
            let failed = (outcome.as_str(), error.as_deref().unwrap_or(""));
            if let Some(t) = self.failure_alert.after(Some(failed)) {
                self.set_alert(t).await;
            }
        }
        self.sched.recorded(Instant::now());
        self.link.recycle_if_due().await;
        self.save_cache().await;
        release_free_memory();
        self.commit();
        NowReply {
            ok: outcome.is_ok(),
            peer: self.cfg.client.peer.clone(),
            sync: Some(record),
            error,
        }
    }

    /// Records a transition `crate::record` decided: UCI state, the alert command.
    async fn set_alert(&mut self, (failing, message): record::Transition) {
        let (root, runner, cmd) = (
            self.cfg.root.clone(),
            self.runner.clone(),
            self.alerts.command.clone(),
        );
        let r = tokio::task::spawn_blocking(move || {
            alerts::record(
                &root,
                runner.as_ref(),
                cmd.as_deref(),
                Alert::SyncFailed,
                failing,
                &message,
            )
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("{e}"),
            Err(e) => tracing::warn!("alert task: {e}"),
        }
        self.commit();
    }

    async fn save_cache(&self) {
        let cache = self.cache.clone();
        let path = prepare::stat_cache_path(&Node::new(&self.cfg.root));
        let r = tokio::task::spawn_blocking(move || {
            let mut c = match cache.lock() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            c.save(&path)
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("stat cache: {e}"),
            // Only when the runtime shuts down: the cache is rebuildable.
            Err(e) => tracing::debug!("stat cache task: {e}"),
        }
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, DaemonStatus> {
        match self.status.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Copies the live state (connection, gate, pending changes) into the shared status.
    fn publish(&self) {
        let mut s = self.lock_status();
        self.fill_live(&mut s);
    }

    fn fill_live(&self, s: &mut DaemonStatus) {
        s.role = self.gate.role.map(|r| r.as_str().to_string());
        s.vrrp_state = self.gate.state.clone();
        s.active = self.gate.active;
        s.inactive_reason = self.gate.reason.clone();
        s.connected = self.link.is_alive();
        s.connected_since = self.link.connected_since();
        s.consecutive_failures = self.failure_alert.failures();
        s.pending_changes = self.sched.pending_len() as u64 + u64::from(self.rescan);
        s.pending_since = self.sched.pending_since_epoch();
        s.watches.dirs = self.watcher.len() as u64;
        s.watches.degraded = self.degraded;
        s.watches.rescans = self.rescans;
        s.alert_sync_failed = self.failure_alert.is_raised();
        s.in_sync_since = self
            .history
            .in_sync_since()
            .filter(|_| self.gate.active && !self.sched.has_pending() && !self.rescan);
    }

    /// Publishes everything and writes status.json, under the status lock: whoever sees a
    /// sync in the live status finds it in the file too.
    fn commit(&self) {
        let mut s = self.lock_status();
        self.fill_live(&mut s);
        self.history.fill(&mut s);
        if let Err(e) = status::write_json(&self.cfg.root, &s) {
            tracing::warn!("{e}");
        }
    }
}

/// Hands the heap a sync freed back to the kernel: a full sync peaks at many MB of file
/// buffers, which glibc would otherwise keep for the daemon's whole life.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn recv(rx: &mut Option<mpsc::Receiver<RawEvent>>) -> Option<RawEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
