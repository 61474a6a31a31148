//! `conntrackd.conf` for the cluster: FTFW over UDP 3780 on the main LAN (the HA link), the
//! connection table of the active node replicated to the other, so established connections
//! survive a switchover.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::keepalived::Spec;
use crate::Role;

/// Where OpenWrt's conntrackd reads its configuration (and where the hooks expect it).
pub const CONF: &str = "etc/conntrackd/conntrackd.conf";
pub const PORT: u16 = 3780;

/// Per-instance paths (lock file, control socket, log): the defaults on a router; tests
/// running two instances on one host give each its own.
#[derive(Debug, Clone)]
pub struct Paths {
    pub lock: String,
    pub socket: String,
    pub log: String,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            lock: "/var/lock/conntrack.lock".into(),
            socket: "/var/run/conntrackd.ctl".into(),
            log: "/var/log/conntrackd.log".into(),
        }
    }
}

/// The addresses whose own flows are not replicated: loopback, both nodes' addresses on
/// every HA interface and every virtual IP (traffic to the firewall itself is not worth
/// carrying over: the node that held it is the one that failed).
pub fn ignored(spec: &Spec) -> Vec<Ipv4Addr> {
    let mut out = vec![Ipv4Addr::LOCALHOST];
    for i in &spec.interfaces {
        out.push(i.primary);
        out.push(i.backup);
    }
    out.extend(spec.vips().iter().map(|v| v.addr));
    let mut seen = std::collections::HashSet::new();
    out.retain(|a| seen.insert(*a));
    out
}

/// Renders the configuration of this node (`role`) for `spec`; `device` is this node's
/// device of the main LAN. `None` when the spec has no main LAN.
pub fn render(spec: &Spec, role: Role, device: &str, paths: &Paths) -> Option<String> {
    let (local, peer) = spec.addresses(role)?;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Written by ha-sync (ns-ha-config); changes are overwritten."
    );
    let _ = writeln!(o, "Sync {{");
    let _ = writeln!(o, "\tMode FTFW {{");
    let _ = writeln!(o, "\t\tDisableExternalCache Off");
    let _ = writeln!(o, "\t}}");
    let _ = writeln!(o, "\tUDP {{");
    let _ = writeln!(o, "\t\tIPv4_address {local}");
    let _ = writeln!(o, "\t\tIPv4_Destination_Address {peer}");
    let _ = writeln!(o, "\t\tPort {PORT}");
    let _ = writeln!(o, "\t\tInterface {device}");
    let _ = writeln!(o, "\t\tChecksum on");
    let _ = writeln!(o, "\t}}");
    let _ = writeln!(o, "}}");
    let _ = writeln!(o, "General {{");
    let _ = writeln!(o, "\tSystemd off");
    let _ = writeln!(o, "\tSyslog on");
    let _ = writeln!(o, "\tHashSize 8192");
    let _ = writeln!(o, "\tHashLimit 65535");
    let _ = writeln!(o, "\tLogFile {}", paths.log);
    let _ = writeln!(o, "\tLockFile {}", paths.lock);
    let _ = writeln!(o, "\tUNIX {{");
    let _ = writeln!(o, "\t\tPath {}", paths.socket);
    let _ = writeln!(o, "\t}}");
    let _ = writeln!(o, "\tNetlinkBufferSize 2097152");
    let _ = writeln!(o, "\tNetlinkBufferSizeMaxGrowth 8388608");
    let _ = writeln!(o, "\tFilter From Userspace {{");
    let _ = writeln!(o, "\t\tProtocol Accept {{");
    let _ = writeln!(o, "\t\t\tTCP");
    let _ = writeln!(o, "\t\t\tUDP");
    let _ = writeln!(o, "\t\t\tICMP");
    let _ = writeln!(o, "\t\t}}");
    let _ = writeln!(o, "\t\tAddress Ignore {{");
    for a in ignored(spec) {
        let _ = writeln!(o, "\t\t\tIPv4_address {a}");
    }
    let _ = writeln!(o, "\t\t}}");
    let _ = writeln!(o, "\t}}");
    let _ = writeln!(o, "}}");
    Some(o)
}
