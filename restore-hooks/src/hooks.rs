//! What each keepalived event does, in the incumbent's order (its hotplug scripts ran in
//! name order: alert state, conntrackd, network, services, cron).
//!
//! | event | steps |
//! |---|---|
//! | NOTIFY_MASTER | alert timestamp on the transition; conntrackd `-c -f -R -B`; imported interfaces up (on a backup, or after FAULT/STOP); hotspot MAC; gratuitous ARP per WAN IPv4; services restarted; cron jobs back |
//! | NOTIFY_BACKUP | conntrackd `-s` (start it if down) `-t -n`; on a backup, imported interfaces down and the hotspot device's own MAC back; kept-stopped services stopped; cron overlay |
//! | NOTIFY_FAULT | conntrackd `-t`; imported interfaces down, own MAC back (any role: a faulty node must not hold the WAN); services stopped; cron overlay |
//! | NOTIFY_STOP | as NOTIFY_FAULT without conntrackd |
//! | NOTIFY_SYNC | after a restore that changed something: import of `/etc/ha`, reload of the services whose files changed, `hotplug-call keepalived` with `ACTION=NOTIFY_SYNC` |
//!
//! A failing command does not stop the hook (the shell scripts went on too): it is logged and
//! listed in the outcome's errors.

use crate::records::{self, NETWORK};
use crate::services::{self, has_init_script, KEPT_STOPPED, RESTARTED_ON_MASTER};
use crate::state;
use crate::{cron, restore, Ctx, HookError};
use crate::{Role, VrrpState};
use sync_core::fsx::{Dir, Meta};
use sync_core::manifest::Hash;
use sync_core::node::Node;
use sync_core::path::RelPath;
use sync_core::runner::{Cmd, CmdOutput};
use sync_core::uci::{self, Package};

const CONNTRACKD: &str = "/usr/sbin/conntrackd";
const CONNTRACKD_CONF: &str = "/etc/conntrackd/conntrackd.conf";
pub(crate) const HOTPLUG_CALL: &str = "/sbin/hotplug-call";
/// The file listing the paths a NOTIFY_SYNC changed, one a line; its path is in
/// `HA_SYNC_CHANGED` for the hotplug scripts.
/// (In the state directory.)
pub const CHANGED_FILE: &str = "changed";

struct Steps<'a> {
    ctx: &'a Ctx<'a>,
    errors: Vec<String>,
}

impl<'a> Steps<'a> {
    fn new(ctx: &'a Ctx<'a>) -> Steps<'a> {
        Steps {
            ctx,
            errors: Vec::new(),
        }
    }

    fn fail(&mut self, msg: String) {
        tracing::warn!("{msg}");
        self.errors.push(msg);
    }

    /// Runs `cmd`; a failure is listed unless `quiet`.
    fn run_as(&mut self, cmd: Cmd, quiet: bool) -> Option<CmdOutput> {
        tracing::info!("running {}", cmd.line());
        match self.ctx.runner.run(&cmd) {
            Ok(out) => {
                if !out.success() && !quiet {
                    let code = out.code.map_or("a signal".to_string(), |c| c.to_string());
                    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
                    self.fail(format!(
                        "{}: exit {code}{}{err}",
                        cmd.line(),
                        if err.is_empty() { "" } else { ": " }
                    ));
                }
                Some(out)
            }
            Err(e) => {
                self.fail(format!("{}: {e}", cmd.line()));
                None
            }
        }
    }

    fn run(&mut self, cmd: Cmd) -> Option<CmdOutput> {
        self.run_as(cmd, false)
    }

    fn service(&mut self, svc: &str, action: &str) {
        if has_init_script(self.ctx.root, svc) {
            self.run(Cmd::new(format!("/etc/init.d/{svc}")).arg(action));
        }
    }

    fn conntrackd(&mut self, flag: &str) -> Option<CmdOutput> {
        self.run(Cmd::new(CONNTRACKD).args(["-C", CONNTRACKD_CONF, flag]))
    }

    fn has_conntrackd(&self) -> bool {
        self.ctx
            .root
            .join(CONNTRACKD_CONF.trim_start_matches('/'))
            .is_file()
    }

    fn check<T>(&mut self, r: Result<T, HookError>) -> Option<T> {
        r.map_err(|e| self.fail(e.to_string())).ok()
    }

    // ---- the steps ------------------------------------------------------------------------

    fn alert(&mut self, option: &str) {
        let now = sync_core::clock::now_secs();
        let root = self.ctx.root;
        let r = uci::state_set_section(root, "keepalived", "ha_alert", "state").and_then(|()| {
            uci::state_set(root, "keepalived", "ha_alert", option, &now.to_string())
        });
        self.check(r.map_err(HookError::from));
    }

    fn interfaces_up(&mut self) {
        let Some(ifaces) = self.check(records::interfaces(self.ctx.root)) else {
            return;
        };
        let net = self
            .check(Package::load_or_empty(&self.ctx.root.join(NETWORK)).map_err(HookError::from));
        for (name, opts) in ifaces {
            // Down on the primary too (auto 0): not ours to bring up.
            if opts
                .get("auto")
                .map(records::text_values)
                .is_some_and(|v| v == ["0"])
            {
                continue;
            }
            if net.as_ref().and_then(|n| n.get(&name, "disabled")) == Some("1") {
                continue;
            }
            self.run(Cmd::new("/sbin/ifup").arg(name));
        }
    }

    fn interfaces_down(&mut self) {
        let Some(ifaces) = self.check(records::interfaces(self.ctx.root)) else {
            return;
        };
        for (name, _) in ifaces {
            self.run(Cmd::new("/sbin/ifdown").arg(name));
        }
    }

    fn hotspot_mac(&mut self) {
        let Some(devs) = self.check(records::hotspot_devices(self.ctx.root)) else {
            return;
        };
        for (dev, mac) in devs {
            self.run(Cmd::new("/sbin/ip").args(["link", "set", "dev", &dev, "address", &mac]));
        }
    }

    /// Gives the hotspot device its own (permanent) MAC back.
    fn own_mac(&mut self) {
        let Some(devs) = self.check(records::hotspot_devices(self.ctx.root)) else {
            return;
        };
        for (dev, _) in devs {
            let Some(out) = self.run(Cmd::new("/usr/sbin/ethtool").args(["-P", &dev])) else {
                continue;
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let perm = text.lines().find_map(|l| {
                l.split_once("Permanent address:")
                    .map(|(_, m)| m.trim().to_string())
            });
            match perm {
                Some(mac) if !mac.is_empty() => {
                    self.run(
                        Cmd::new("/sbin/ip").args(["link", "set", "dev", &dev, "address", &mac]),
                    );
                }
                _ => self.fail(format!(
                    "{dev}: ethtool -P gave no permanent address; MAC left as it is"
                )),
            }
        }
    }

    fn gratuitous_arp(&mut self) {
        let Some(wans) = self.check(records::wan_ipv4(self.ctx.root)) else {
            return;
        };
        for records::WanAddr { iface, device, ips } in wans {
            let Some(dev) = device else {
                self.fail(format!(
                    "{iface}: no device in /etc/ha/wan_interfaces; no gratuitous ARP sent"
                ));
                continue;
            };
            for ip in ips {
                self.run(Cmd::new("/usr/bin/arping").args(["-c", "1", "-U", "-I", &dev, &ip]));
            }
        }
    }

    fn cron(&mut self, master: bool) {
        let r = apply_cron(self.ctx, master);
        self.check(r);
    }

    /// 500-dhcp-force: dnsmasq's `force` on every `dnsmasq` section of `/etc/config/dhcp`
    /// (serve even when another DHCP server answers). Written only when it changes.
    fn dhcp_force(&mut self, on: bool) {
        let path = self.ctx.root.join(DHCP);
        if !path.is_file() {
            return;
        }
        let Some(mut pkg) = self.check(Package::load(&path).map_err(HookError::from)) else {
            return;
        };
        let want = if on { "1" } else { "0" };
        let mut changed = false;
        for sec in pkg.sections.iter_mut().filter(|s| s.kind == "dnsmasq") {
            if sec.get("force") != Some(want) {
                changed = true;
                let r = sec.set("force", want).map_err(HookError::from);
                self.check(r);
            }
        }
        if changed {
            tracing::info!("dhcp: force={want} on every dnsmasq section");
            let r = pkg.write_atomic(&path).map_err(HookError::from);
            self.check(r);
        }
    }

    /// 500-nathelpers: the NAT helper modules, when this node has them configured.
    fn nat_helpers(&mut self) {
        if self
            .ctx
            .root
            .join(NATHELPERS.trim_start_matches('/'))
            .is_file()
            && self
                .ctx
                .root
                .join(LOAD_MODULES.trim_start_matches('/'))
                .is_file()
        {
            self.run(Cmd::new(LOAD_MODULES));
        }
    }

    /// 900-telegraf: the Internet probes (ping, dns) off on a backup, which has no Internet
    /// access; moved aside, not deleted, so the configuration is kept.
    fn telegraf_probes(&mut self, on: bool) {
        for name in TELEGRAF_PROBES {
            let live = self.ctx.root.join(name.trim_start_matches('/'));
            let aside = live.with_extension("conf.disabled");
            let (from, to) = if on { (&aside, &live) } else { (&live, &aside) };
            if from.is_file() {
                let r = std::fs::rename(from, to).map_err(crate::at(from));
                self.check(r);
            }
        }
    }

    /// 01-user: the admin's `/etc/keepalived.user`, with `ACTION` as keepalived's hotplug
    /// scripts see it.
    fn user_script(&mut self, action: &str) {
        if self
            .ctx
            .root
            .join(USER_SCRIPT.trim_start_matches('/'))
            .is_file()
            && !self.chain_has("01-user")
        {
            let mut cmd = Cmd::new("/bin/sh").arg(USER_SCRIPT).env("ACTION", action);
            cmd.clear_env = true;
            self.run(cmd);
        }
    }

    /// Whether the keepalived package's own hotplug script `name` is installed: it runs in
    /// the same `hotplug-call keepalived` chain as ha-sync's, and then does its job itself.
    fn chain_has(&self, name: &str) -> bool {
        self.ctx.root.join(HOTPLUG_DIR).join(name).is_file()
    }

    /// ns-ha-enable's last step: procd applies the configuration the transition changed.
    fn reload_config(&mut self) {
        if self
            .ctx
            .root
            .join(RELOAD_CONFIG.trim_start_matches('/'))
            .is_file()
        {
            self.run(Cmd::new(RELOAD_CONFIG));
        }
    }
}

const DHCP: &str = "etc/config/dhcp";
const NATHELPERS: &str = "/etc/modules.d/ns-nathelpers";
const LOAD_MODULES: &str = "/usr/sbin/load-kernel-modules";
const TELEGRAF_PROBES: &[&str] = &[
    "/etc/telegraf.conf.d/ping.conf",
    "/etc/telegraf.conf.d/dns.conf",
];
const USER_SCRIPT: &str = "/etc/keepalived.user";
const LOGGER: &str = "/usr/bin/logger";
/// keepalived's hotplug scripts (the keepalived package's and ha-sync's `010-ha-sync`).
pub const HOTPLUG_DIR: &str = "etc/hotplug.d/keepalived";
const RELOAD_CONFIG: &str = "/sbin/reload_config";

/// Whether the interfaces of the records are this node's to switch: on a backup always, on
/// the primary (or with HA off) only to undo what a FAULT or STOP did.
fn owns_imported(role: Option<Role>, previous: Option<VrrpState>) -> bool {
    role == Some(Role::Backup) || matches!(previous, Some(VrrpState::Fault | VrrpState::Stop))
}

pub(crate) fn master(ctx: &Ctx, previous: Option<VrrpState>) -> Vec<String> {
    let role = Node::new(ctx.root).role();
    let mut s = Steps::new(ctx);
    if previous != Some(VrrpState::Master) {
        match role {
            Some(Role::Primary) => s.alert("primary_recovered_at"),
            Some(Role::Backup) => s.alert("primary_failed_at"),
            None => {}
        }
    }
    if s.has_conntrackd() {
        for flag in ["-c", "-f", "-R", "-B"] {
            s.conntrackd(flag);
        }
    }
    if owns_imported(role, previous) {
        s.interfaces_up();
    }
    s.hotspot_mac();
    s.gratuitous_arp();
    s.dhcp_force(true);
    s.nat_helpers();
    for svc in RESTARTED_ON_MASTER {
        s.service(svc, "restart");
    }
    s.cron(true);
    s.telegraf_probes(true);
    s.reload_config();
    s.user_script("NOTIFY_MASTER");
    s.errors
}

pub(crate) fn backup(ctx: &Ctx) -> Vec<String> {
    let role = Node::new(ctx.root).role();
    let mut s = Steps::new(ctx);
    if s.has_conntrackd() {
        let running = s
            .run_as(
                Cmd::new(CONNTRACKD).args(["-C", CONNTRACKD_CONF, "-s"]),
                true,
            )
            .is_some_and(|o| o.success());
        if !running {
            s.service("conntrackd", "start");
        }
        s.conntrackd("-t");
        s.conntrackd("-n");
    }
    if role == Some(Role::Backup) {
        s.interfaces_down();
        s.own_mac();
    }
    // On the primary only: a backup's dhcp file is the primary's generation (force on, as
    // its master set it), and dnsmasq stays stopped there whatever it says; editing it would
    // be drift.
    if role == Some(Role::Primary) {
        s.dhcp_force(false);
    }
    for svc in KEPT_STOPPED {
        s.service(svc, "stop");
    }
    // 555-dropbear (keepalived package) reloads it itself when installed.
    if !s.chain_has("555-dropbear") {
        s.service("dropbear", "reload");
    }
    s.cron(false);
    s.telegraf_probes(false);
    s.user_script("NOTIFY_BACKUP");
    s.errors
}

/// NOTIFY_FAULT (`fault`) and NOTIFY_STOP.
pub(crate) fn teardown(ctx: &Ctx, fault: bool) -> Vec<String> {
    let mut s = Steps::new(ctx);
    if fault && s.has_conntrackd() {
        s.conntrackd("-t");
    }
    s.interfaces_down();
    s.own_mac();
    for svc in KEPT_STOPPED {
        s.service(svc, "stop");
    }
    s.cron(false);
    s.user_script(if fault { "NOTIFY_FAULT" } else { "NOTIFY_STOP" });
    s.errors
}

/// The NOTIFY_SYNC actions after a restore that changed `changed` (router paths).
pub(crate) fn notify_sync(
    ctx: &Ctx,
    changed: &[String],
    generation: Hash,
    master: bool,
) -> Vec<String> {
    let mut s = Steps::new(ctx);
    let mut reload = Vec::new();
    if Node::new(ctx.root).role() != Some(Role::Primary) {
        if let Some(true) = s.check(records::import(ctx.root)) {
            reload.push("network".to_string());
            // The lines admins grep for (`grep "ns-ha: Importing network configuration"
            // /var/log/messages`): in syslog with the incumbent's tag, and in our log.
            let lines = s
                .check(records::describe_imported(ctx.root))
                .unwrap_or_default();
            let logger = ctx.root.join(LOGGER.trim_start_matches('/')).is_file();
            for line in lines {
                tracing::info!("{line}");
                if logger {
                    s.run(Cmd::new(LOGGER).args(["-t", "ns-ha", &line]));
                }
            }
        }
    }
    for svc in services::to_reload(ctx.root, changed, master) {
        if !reload.contains(&svc) {
            reload.push(svc);
        }
    }
    for svc in &reload {
        s.service(svc, "reload");
    }
    if changed
        .iter()
        .any(|c| c.trim_start_matches('/') == cron::CRONTAB)
    {
        let r = cron::notify_crond(ctx.root)
            .map_err(crate::at(ctx.root.join("etc/crontabs/cron.update")));
        s.check(r);
    }
    let list = Node::new(ctx.root).state_dir().join(CHANGED_FILE);
    let text: String = changed.iter().map(|c| format!("{c}\n")).collect();
    // Like the init scripts: only when the node has it (a Debian test bed has no hotplug
    // scripts to run, and a missing program would fail every restore there).
    let has_hotplug = ctx
        .root
        .join(HOTPLUG_CALL.trim_start_matches('/'))
        .is_file();
    if !has_hotplug {
        tracing::info!(
            "{HOTPLUG_CALL} not installed under {}: no NOTIFY_SYNC scripts to run",
            ctx.root.display()
        );
    }
    if has_hotplug
        && s.check(state::write_small(&list, text.as_bytes()))
            .is_some()
    {
        let mut cmd = Cmd::new(HOTPLUG_CALL)
            .arg("keepalived")
            .env("ACTION", "NOTIFY_SYNC")
            .env("HA_SYNC_CHANGED", list.display().to_string())
            .env("HA_SYNC_GENERATION", generation.to_hex());
        // As keepalived runs it (`env -i`): the scripts see the same environment either way.
        cmd.clear_env = true;
        s.run(cmd);
    }
    s.errors
}

/// Writes the effective crontab for a node that is (`master`) or is not the master, from the
/// staged source on a backup, else from the live file (see [`crate::cron`]).
pub(crate) fn apply_cron(ctx: &Ctx, master: bool) -> Result<(), HookError> {
    let live = Dir::open(ctx.root, false).map_err(crate::at(ctx.root))?;
    let rel = RelPath::new(cron::CRONTAB).expect("constant path is valid");
    let full = ctx.root.join(cron::CRONTAB);
    let d = match live.parent_of(&rel, false) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(crate::at(&full)(e)),
    };
    let cur = d.lstat(rel.file_name()).map_err(crate::at(&full))?;
    let current = match cur {
        Some(_) => Some(
            d.read_file(rel.file_name(), 16 << 20)
                .map_err(crate::at(&full))?,
        ),
        None => None,
    };
    let staged = if Node::new(ctx.root).role() == Some(Role::Backup) {
        staged_crontab(ctx)
    } else {
        None
    };
    let Some(source) = staged.or_else(|| current.clone()) else {
        return Ok(());
    };
    let Ok(text) = String::from_utf8(source) else {
        tracing::warn!("{}: not UTF-8; cron overlay not applied", full.display());
        return Ok(());
    };
    let want = cron::effective(&text, master).into_bytes();
    if current.as_deref() == Some(&want[..]) {
        return Ok(());
    }
    // Keep the file's metadata: a restore compares it with the manifest's and must not see
    // a change where only the overlay moved.
    let meta = cur.map(|s| Meta {
        mode: s.mode,
        uid: s.uid,
        gid: s.gid,
        mtime_ns: s.mtime_ns,
    });
    let meta = meta.unwrap_or(Meta {
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime_ns: sync_core::clock::now_ns(),
    });
    d.write_file_atomic(rel.file_name(), &want, Some(meta))
        .map_err(crate::at(&full))?;
    cron::notify_crond(ctx.root).map_err(crate::at(ctx.root.join("etc/crontabs/cron.update")))
}

/// The primary's crontab as committed in staging, verified against the manifest.
fn staged_crontab(ctx: &Ctx) -> Option<Vec<u8>> {
    let state = restore::open_state(ctx.staging).ok()?;
    let m = sync_core::staging::read_manifest(&state, sync_core::staging::layout::MANIFEST)?;
    let rel = RelPath::new(cron::CRONTAB).ok()?;
    let e = m.get(&rel)?;
    let d = Dir::open(ctx.staging, false)
        .ok()?
        .parent_of(&rel, false)
        .ok()?;
    let bytes = d.read_file(rel.file_name(), 16 << 20).ok()?;
    (Some(Hash::of(&bytes)) == e.file_hash()).then_some(bytes)
}
