//! Issue 11's acceptance scenario: no change lost across failover and failback.
//!
//! The real binary on two temporary roots over real SSH on loopback: `ha-sync watch` on the
//! primary P, `ha-sync serve` on the backup B, and `ha-sync hook --root R EVENT` standing in
//! for keepalived's notify lines. P's edits reach B; B's agent goes down and P changes a UCI
//! section; P fails (NOTIFY_STOP on P, NOTIFY_MASTER on B, B's agent up); an admin works on B
//! (a section added by rename as `uci commit` does, another section changed, an option P also
//! changed set differently, a file created in a listed directory, another deleted); P returns
//! (NOTIFY_BACKUP on P, its `watch` started, NOTIFY_MASTER on P, NOTIFY_BACKUP on B). Then both
//! live trees hold every one of B's edits and P's, the file both edited holds both sections'
//! changes, the conflicting option's losing value is in P's attic, and the conflict is in P's
//! `status --json` until `ha-sync resolve` settles it.

use ha_sync_tests::cluster::Keys;
use ha_sync_tests::ha_sync_bin;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use sync_core::uci::Package;

const WAIT: Duration = Duration::from_secs(30);

const FIREWALL: &str = "
config defaults
\toption input 'ACCEPT'
\toption output 'ACCEPT'

config zone 'lan'
\toption name 'lan'
\toption input 'ACCEPT'

config zone 'wan'
\toption name 'wan'
\toption input 'REJECT'
\toption masq '1'

config zone 'guest'
\toption name 'guest'
\toption input 'REJECT'

config rule
\toption name 'Allow-Ping'
\toption src 'wan'
\toption target 'ACCEPT'
";

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_default()
}

/// A node's root: its role, the restore list (`/etc/app/` and the firewall file).
fn node_root(root: &Path, role: &str) {
    let k = format!(
        "config {role} '{role}'\n\nconfig peer 'ha_peer'\n\tlist sync_list '/etc/app/'\n\
         \tlist sync_list '/etc/config/firewall'\n\toption drift_interval '0'\n"
    );
    write(root, "etc/config/keepalived", &k);
    write(root, "etc/sysupgrade.conf", "");
}

fn run(bin: &Path, args: &[&str], root: &Path) -> Output {
    let out = Command::new(bin)
        .args(args)
        .arg("--root")
        .arg(root)
        .env_remove("HA_SYNC_FAULT")
        .output()
        .expect("run ha-sync");
    assert!(
        out.status.success(),
        "ha-sync {args:?} --root {}: {}{}",
        root.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn hook(bin: &Path, root: &Path, event: &str) {
    run(bin, &["hook", event], root);
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(bin: &Path, root: &Path, keys: &Keys, port: u16, log: &Path) -> Proc {
    let child = Command::new(bin)
        .args(["serve", "--root"])
        .arg(root)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--host-key")
        .arg(&keys.host_key)
        .arg("--authorized-keys")
        .arg(&keys.authorized)
        .env_remove("HA_SYNC_FAULT")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(append(log))
        .spawn()
        .expect("spawn serve");
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "ha-sync serve did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

fn watch(bin: &Path, root: &Path, keys: &Keys, port: u16, log: &Path) -> Proc {
    let child = Command::new(bin)
        .args(["watch", "--interval", "2", "--root"])
        .arg(root)
        .args(["--peer", &format!("127.0.0.1:{port}")])
        .arg("--key")
        .arg(&keys.id)
        .arg("--known-hosts")
        .arg(&keys.known_hosts)
        .env_remove("HA_SYNC_FAULT")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(append(log))
        .spawn()
        .expect("spawn watch");
    Proc(child)
}

fn append(log: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap()
}

/// Waits until `ok` holds, else fails naming `what` with both logs.
fn wait_for(what: &str, logs: &[&PathBuf], mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        if Instant::now() > deadline {
            let text: String = logs
                .iter()
                .map(|l| {
                    format!(
                        "--- {}\n{}",
                        l.display(),
                        std::fs::read_to_string(l).unwrap_or_default()
                    )
                })
                .collect();
            panic!("timed out waiting for: {what}\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn firewall(root: &Path) -> Package {
    Package::parse(&read(root, "etc/config/firewall"), Path::new("firewall")).unwrap_or_default()
}

/// `uci commit`'s way: a temp file renamed over the package.
fn uci_commit(root: &Path, p: &Package) {
    let tmp = root.join("etc/config/.firewall-uci-tmp");
    std::fs::write(&tmp, p.render()).unwrap();
    std::fs::rename(&tmp, root.join("etc/config/firewall")).unwrap();
}

fn rule_names(p: &Package) -> Vec<String> {
    p.sections_of_kind("rule")
        .filter_map(|s| s.get("name").map(str::to_string))
        .collect()
}

#[test]
fn a_change_made_on_the_acting_backup_survives_failback() {
    let bin = ha_sync_bin();
    let d = tempfile::tempdir().unwrap();
    let (p, b) = (d.path().join("primary"), d.path().join("backup"));
    let (plog, blog) = (d.path().join("primary.log"), d.path().join("backup.log"));
    let logs = [&plog, &blog];
    node_root(&p, "primary");
    node_root(&b, "backup");
    write(&p, "etc/config/firewall", FIREWALL);
    write(&p, "etc/app/old", "to be deleted on the backup\n");
    write(&p, "etc/app/kept", "stays\n");
    let keys = Keys::new(&d.path().join("keys"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    keys.pin("127.0.0.1", port);

    // Both up, P master: P's edits reach B's live tree.
    hook(&bin, &p, "NOTIFY_MASTER");
    hook(&bin, &b, "NOTIFY_BACKUP");
    let agent = serve(&bin, &b, &keys, port, &blog);
    let daemon = watch(&bin, &p, &keys, port, &plog);
    wait_for("the first sync in B's live tree", &logs, || {
        read(&b, "etc/config/firewall") == FIREWALL && !read(&b, "etc/app/old").is_empty()
    });

    // B's agent goes down; P changes one section (lan) and an option (wan.input).
    drop(agent);
    let mut fw = firewall(&p);
    fw.set("lan", "input", "DROP").unwrap();
    fw.set("wan", "input", "DROP").unwrap();
    uci_commit(&p, &fw);
    std::thread::sleep(Duration::from_millis(300));

    // P fails: its daemon is gone with it; B takes over, its agent comes back.
    drop(daemon);
    hook(&bin, &p, "NOTIFY_STOP");
    hook(&bin, &b, "NOTIFY_MASTER");
    let _agent = serve(&bin, &b, &keys, port, &blog);

    // The admin works on B, the acting master.
    let mut fw = firewall(&b);
    fw.add_section("rule")
        .unwrap()
        .set("name", "Allow-VPN")
        .unwrap();
    fw.set("guest", "input", "ACCEPT").unwrap();
    fw.set("wan", "input", "ACCEPT").unwrap();
    uci_commit(&b, &fw);
    write(
        &b,
        "etc/app/new-on-backup",
        "made while the backup was master\n",
    );
    std::fs::remove_file(b.join("etc/app/old")).unwrap();

    // P returns: backup first, its daemon started, then it takes the VIP back.
    hook(&bin, &p, "NOTIFY_BACKUP");
    let _daemon = watch(&bin, &p, &keys, port, &plog);
    std::thread::sleep(Duration::from_millis(500));
    hook(&bin, &p, "NOTIFY_MASTER");
    hook(&bin, &b, "NOTIFY_BACKUP");

    let merged_everywhere = |root: &Path| {
        let fw = firewall(root);
        fw.get("lan", "input") == Some("DROP")
            && fw.get("guest", "input") == Some("ACCEPT")
            && fw.get("wan", "input") == Some("ACCEPT")
            && rule_names(&fw) == ["Allow-Ping", "Allow-VPN"]
            && read(root, "etc/app/new-on-backup") == "made while the backup was master\n"
            && !root.join("etc/app/old").exists()
            && read(root, "etc/app/kept") == "stays\n"
    };
    wait_for("B's edits and P's in P's live tree", &logs, || {
        merged_everywhere(&p)
    });
    wait_for("the merged tree in B's live tree", &logs, || {
        merged_everywhere(&b)
    });
    assert_eq!(
        read(&p, "etc/config/firewall"),
        read(&b, "etc/config/firewall")
    );

    // The conflicting option: the authority's (B's) value live, P's in P's attic, the
    // conflict in P's status.
    let attic = run(&bin, &["attic", "/etc/config/firewall", "--json"], &p);
    let attic: serde_json::Value = serde_json::from_slice(&attic.stdout).unwrap();
    let kept = attic.as_array().expect("attic list");
    assert!(
        kept.iter().any(|k| k["reason"] == "pull"),
        "P's version replaced by the merge is kept: {attic}"
    );
    let seq = kept.iter().rev().find(|k| k["reason"] == "pull").unwrap()["seq"]
        .as_u64()
        .unwrap();
    let version = std::fs::read_to_string(
        sync_core::node::Node::new(&p)
            .attic_dir()
            .join(format!("v/{seq}")),
    )
    .unwrap();
    let losing = Package::parse(&version, Path::new("attic")).unwrap();
    assert_eq!(
        losing.get("wan", "input"),
        Some("DROP"),
        "P's losing value is kept"
    );

    let status = run(&bin, &["status", "--json"], &p);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let conflicts = status["conflicts"].as_array().expect("conflicts in status");
    assert_eq!(conflicts.len(), 1, "{status}");
    assert_eq!(conflicts[0]["path"], "etc/config/firewall");
    assert_eq!(conflicts[0]["section"], "wan");
    assert_eq!(conflicts[0]["option"], "input");
    assert_eq!(conflicts[0]["primary"], "'DROP'");
    assert_eq!(conflicts[0]["backup"], "'ACCEPT'");
    assert!(
        status["alerts"]["conflict_at"].is_number(),
        "ha:sync:conflict raised: {status}"
    );

    // Settled for the primary: its value goes live on P, the daemon sends it to B.
    let out = run(
        &bin,
        &["resolve", "/etc/config/firewall", "--keep", "primary"],
        &p,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 conflict(s) settled"));
    wait_for("the primary's value back on both nodes", &logs, || {
        firewall(&p).get("wan", "input") == Some("DROP")
            && firewall(&b).get("wan", "input") == Some("DROP")
            && firewall(&b).get("guest", "input") == Some("ACCEPT")
    });
    let status = run(&bin, &["status", "--json"], &p);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["conflicts"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
    // `ha-sync diff`: the nodes agree; a hand edit on the backup shows at option level.
    let diff = |p: &Path| {
        Command::new(&bin)
            .args(["diff", "--root"])
            .arg(p)
            .args(["--peer", &format!("127.0.0.1:{port}")])
            .arg("--key")
            .arg(&keys.id)
            .arg("--known-hosts")
            .arg(&keys.known_hosts)
            .output()
            .expect("ha-sync diff")
    };
    let out = diff(&p);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.starts_with("in sync"),
        "{text}"
    );
    let mut fw = firewall(&b);
    fw.set("guest", "input", "REJECT").unwrap();
    uci_commit(&b, &fw);
    write(&b, "etc/app/stray", "only on the backup\n");
    let out = diff(&p);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("/etc/config/firewall guest.input: here 'ACCEPT' | peer 'REJECT'"),
        "{text}"
    );
    assert!(
        text.contains("/etc/app/stray: here absent | peer file"),
        "{text}"
    );

    for l in logs {
        let text = std::fs::read_to_string(l).unwrap_or_default();
        for line in text
            .lines()
            .filter(|l| l.contains("pull") || l.contains("authority"))
        {
            eprintln!(
                "failback: {}: {line}",
                l.file_name().unwrap().to_string_lossy()
            );
        }
    }
    // B is no longer the authority: its mark went with the restore of the merged generation.
    assert!(restore_hooks::authority::authority(&sync_core::node::Node::new(&b)).is_none());
}
