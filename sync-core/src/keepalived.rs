//! What keepalived itself reports, read from its files: the VRRP state and statistics of its
//! dumps (`/tmp/keepalived.json`, `.data`, `.stats`) and the virtual IPs of the UCI
//! `ipaddress` sections.
//!
//! Why here and not beside the `keepalived.conf` renderer (crate `ha-cluster`): `ha-sync
//! status` and the daemon (crate `sync-agent`) read these, and sync-agent must not depend on
//! the cluster crate (which depends on sync-agent for its SSH client). This module is pure
//! file parsing, like [`crate::uci`], so the engine crate is the lowest place both reach; the
//! renderer's module in `ha-cluster` points here for the reading side.

use std::path::Path;

use serde_json::{json, Value};

use crate::runner::{Cmd, Runner};
use crate::uci::{self, Package};

/// keepalived's JSON dump (on its "JSON" signal), relative to the root.
pub const JSON_DUMP: &str = "tmp/keepalived.json";
/// keepalived's text dump of its state (SIGUSR1).
pub const DATA_DUMP: &str = "tmp/keepalived.data";
/// keepalived's text dump of its statistics (SIGUSR2).
pub const STATS_DUMP: &str = "tmp/keepalived.stats";
use crate::node::KEEPALIVED_UCI as UCI;

/// keepalived's numeric states in its JSON dump.
fn json_state_name(n: i64) -> Option<&'static str> {
    match n {
        0 => Some("init"),
        1 => Some("backup"),
        2 => Some("master"),
        3 => Some("fault"),
        _ => None,
    }
}

/// The first VRRP instance of `<root>/tmp/keepalived.json`, if the file is there and parses.
fn json_instance(root: &Path) -> Option<Value> {
    let b = std::fs::read(root.join(JSON_DUMP)).ok()?;
    let v: Value = serde_json::from_slice(&b).ok()?;
    v.as_array()?.first().cloned()
}

/// `State = MASTER` of the first VRRP instance in keepalived's text dump.
fn data_state(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join(DATA_DUMP)).ok()?;
    let mut in_instance = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("VRRP Instance =") {
            in_instance = true;
        } else if in_instance {
            if let Some(v) = l.strip_prefix("State = ") {
                let s = v.trim().to_ascii_lowercase();
                if ["master", "backup", "fault", "init", "stop"].contains(&s.as_str()) {
                    return Some(s);
                }
            }
        }
    }
    None
}

/// The VRRP state of the first instance in keepalived's own dumps: its JSON dump, else its
/// text dump (each only as fresh as keepalived's last dump).
pub fn dumped_state(root: &Path) -> Option<String> {
    if let Some(n) = json_instance(root)
        .and_then(|i| i.get("data")?.get("state")?.as_i64())
        .and_then(json_state_name)
    {
        return Some(n.to_string());
    }
    data_state(root)
}

/// keepalived's statistics, in keepalived's order: the `stats` of the first instance in its
/// JSON dump, else its SIGUSR2 text dump under the same names; empty when neither exists.
pub fn stats(root: &Path) -> Vec<(String, Value)> {
    if let Some(Value::Object(m)) = json_instance(root).and_then(|i| i.get("stats").cloned()) {
        // serde_json's map is sorted: put the known counters back in keepalived's order.
        let mut out: Vec<(String, Value)> = STATS_KEYS
            .iter()
            .filter_map(|(_, _, k)| m.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        for (k, v) in &m {
            if !STATS_KEYS.iter().any(|(_, _, known)| known == k) {
                out.push((k.clone(), v.clone()));
            }
        }
        return out;
    }
    match std::fs::read_to_string(root.join(STATS_DUMP)) {
        Ok(text) => parse_stats_text(&text),
        Err(_) => Vec::new(),
    }
}

/// The text dump's `section / label` pairs in the JSON dump's names and order.
const STATS_KEYS: &[(&str, &str, &str)] = &[
    ("Advertisements", "Received", "advert_rcvd"),
    ("Advertisements", "Sent", "advert_sent"),
    ("", "Became master", "become_master"),
    ("", "Released master", "release_master"),
    ("Packet Errors", "Length", "packet_len_err"),
    (
        "Packet Errors",
        "Advertisement Interval",
        "advert_interval_err",
    ),
    ("Packet Errors", "TTL", "ip_ttl_err"),
    ("Packet Errors", "Invalid Type", "invalid_type_rcvd"),
    ("Packet Errors", "Address List", "addr_list_err"),
    ("Authentication Errors", "Invalid Type", "invalid_authtype"),
    (
        "Authentication Errors",
        "Type Mismatch",
        "authtype_mismatch",
    ),
    ("Authentication Errors", "Failure", "auth_failure"),
    ("Priority Zero", "Received", "pri_zero_rcvd"),
    ("Priority Zero", "Sent", "pri_zero_sent"),
];

/// Parses the first instance of keepalived's `/tmp/keepalived.stats`.
fn parse_stats_text(text: &str) -> Vec<(String, Value)> {
    let mut found: Vec<(String, String, u64)> = Vec::new();
    let mut section = String::new();
    let mut instances = 0;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with("VRRP Instance:") {
            instances += 1;
            if instances > 1 {
                break;
            }
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let Some((label, value)) = line.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            section = label.to_string();
            continue;
        }
        if indent <= 2 {
            section.clear();
        }
        if let Ok(n) = value.parse() {
            found.push((section.clone(), label.to_string(), n));
        }
    }
    STATS_KEYS
        .iter()
        .filter_map(|(sec, label, key)| {
            found
                .iter()
                .find(|(s, l, _)| s == sec && l == label)
                .map(|(_, _, n)| ((*key).to_string(), json!(n)))
        })
        .collect()
}

/// Asks the running keepalived for a fresh JSON dump, as the incumbent's status does: its
/// "JSON" signal (the number comes from `keepalived --signum=JSON`: it differs between
/// builds), then up to half a second for `/tmp/keepalived.json` to change. Only on the real
/// root, and only to a process that is keepalived: never a signal to a stale pid.
pub fn refresh_json(root: &Path, runner: &dyn Runner) {
    if root != Path::new("/") {
        return;
    }
    let pid = ["var/run/keepalived.pid", "run/keepalived.pid"]
        .iter()
        .find_map(|p| std::fs::read_to_string(root.join(p)).ok())
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 1);
    let Some(pid) = pid else { return };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "keepalived" {
        return;
    }
    let Ok(out) = runner.run(&Cmd::new("keepalived").arg("--signum=JSON")) else {
        return;
    };
    let Some(sig) = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<i32>()
        .ok()
    else {
        return;
    };
    let path = root.join(JSON_DUMP);
    let before = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    // SAFETY: kill has no memory effects; pid was checked to be keepalived just above.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return;
    }
    for _ in 0..25 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        if std::fs::metadata(&path).and_then(|m| m.modified()).ok() != before {
            // Written by keepalived with fprintf: give it a moment to finish the file.
            std::thread::sleep(std::time::Duration::from_millis(20));
            return;
        }
    }
}

/// The UCI `ipaddress` sections of keepalived, in file order: name -> options.
pub fn virtual_ips(root: &Path) -> Vec<(String, Vec<(String, uci::Value)>)> {
    let Ok(p) = Package::load_or_empty(&root.join(UCI)) else {
        return Vec::new();
    };
    p.sections_of_kind("ipaddress")
        .filter_map(|s| Some((s.name.clone()?, s.options.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Dumped by keepalived 2.2.7 (Debian 12) on its SIGUSR2 and JSON signals, master state.
    const STATS_TXT: &str = "VRRP Instance: VI_100\n  Advertisements:\n    Received: 0\n    Sent: 7\n  Became master: 1\n  Released master: 0\n  Packet Errors:\n    Length: 0\n    TTL: 0\n    Invalid Type: 0\n    Advertisement Interval: 0\n    Address List: 0\n  Authentication Errors:\n    Invalid Type: 0\n    Type Mismatch: 0\n    Failure: 0\n  Priority Zero:\n    Received: 0\n    Sent: 0\n";
    const STATS_JSON: &str = r#"[{"data":{"iname":"VI_100","vrid":100,"state":2,"wantstate":2},"stats":{"advert_rcvd":0,"advert_sent":7,"become_master":1,"release_master":0,"packet_len_err":0,"advert_interval_err":0,"ip_ttl_err":0,"invalid_type_rcvd":0,"addr_list_err":0,"invalid_authtype":0,"authtype_mismatch":0,"auth_failure":0,"pri_zero_rcvd":0,"pri_zero_sent":0}}]"#;

    #[test]
    fn text_stats_parse_to_the_json_names_and_order() {
        let from_text = parse_stats_text(STATS_TXT);
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("tmp")).unwrap();
        std::fs::write(d.path().join(JSON_DUMP), STATS_JSON).unwrap();
        let from_json = stats(d.path());
        assert_eq!(from_text, from_json);
        assert_eq!(from_text.len(), 14);
        // keepalived's own order, which the incumbent's status prints.
        assert_eq!(from_text[0], ("advert_rcvd".to_string(), json!(0)));
        assert_eq!(from_text[1], ("advert_sent".to_string(), json!(7)));
        assert_eq!(from_text[13].0, "pri_zero_sent");
    }
}
