//! The cluster set-up as an admin runs it, against a real OpenSSH server: two network
//! namespaces (primary 198.18.61.1, backup 198.18.61.2), Debian's sshd on the backup's port 22
//! with a root password known only to this test, the `ha-sync` binary on both sides.
//!
//! - `check-backup-node` / `init-backup-node` with the password on stdin, as the spec shows
//!   (`echo PASSWORD | ns-ha-config init-backup-node lan`): a wrong one is refused without the
//!   password in any output; the right one installs the cluster key and pins the agent.
//! - Then everything goes through the agent (`ha-sync serve`) on 65022 with the cluster key:
//!   `add-vip` reaches the backup's keepalived configuration, `ssh-remote` runs a command there,
//!   `upgrade-remote` uploads an image and reports the backup's refusal (no sysupgrade here).
//!
//! Nothing on the host is touched: each process runs in a private mount namespace where
//! `/etc/init.d` holds recording stand-ins, `/etc/shadow` (for sshd only) a test root
//! password, and `/usr/local/bin/ha-sync` the binary under test with the backup's root.
//! Skips, saying why, when not root or when namespaces, sshd or openssl are missing.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ha_sync_tests::cluster::NetnsPair;

const HA_SYNC: &str = env!("CARGO_BIN_EXE_ha-sync");
const PASSWORD: &str = "Test,Only-4711";
/// Init scripts the actions may call; each stand-in appends `NAME ARGS` to the log.
const SERVICES: [&str; 6] = [
    "keepalived",
    "conntrackd",
    "ha-sync",
    "network",
    "cron",
    "dropbear",
];

fn skip(why: &str) {
    eprintln!("SKIPPED bootstrap_sshd: {why}");
}

/// The part of the sandbox both nodes share: private mounts, init.d stand-ins.
fn sandbox_prelude(log: &Path) -> String {
    let mut s = String::from("set -e\nmount -t tmpfs ha-sync-test /etc/init.d\n");
    for svc in SERVICES {
        s.push_str(&format!(
            "printf '#!/bin/sh\\necho \"{svc} $*\" >> {log}\\n' > /etc/init.d/{svc}\n\
             chmod 0755 /etc/init.d/{svc}\n",
            log = log.display()
        ));
    }
    s
}

/// `ip netns exec NS unshare -m sh -c SCRIPT sh ARGS...`
fn sandboxed(ns: &str, script: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        ns,
        "unshare",
        "-m",
        "--propagation",
        "private",
    ])
    .args(["sh", "-c", script, "sh"])
    .args(args);
    c
}

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const NETWORK: &str = "
config interface 'loopback'
\toption device 'lo'
\toption proto 'static'
\toption ipaddr '127.0.0.1'
\toption netmask '255.0.0.0'

config interface 'lan'
\toption device 'br-lan'
\toption proto 'static'
\toption ipaddr 'ADDR'
\toption netmask '255.255.255.0'
";

fn node_root(dir: &Path, name: &str, addr: &str) -> PathBuf {
    let root = dir.join(name);
    fs::create_dir_all(root.join("etc/config")).expect("mkdir");
    fs::write(
        root.join("etc/config/network"),
        NETWORK.replace("ADDR", addr),
    )
    .expect("network");
    fs::write(root.join("etc/config/dhcp"), "").expect("dhcp");
    root
}

/// Waits (bounded) until something accepts TCP connections on `addr` inside `ns`.
fn wait_port(ns: &str, addr: &str, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "ss",
                "-Htln",
                &format!("src {addr}:{port}"),
            ])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn init_backup_node_over_real_sshd_then_everything_through_the_agent() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root (network namespaces, mounts, sshd)");
    }
    for tool in ["/usr/sbin/sshd", "/usr/bin/openssl", "/usr/bin/unshare"] {
        if !Path::new(tool).exists() {
            return skip(&format!("{tool} is missing (.ci/run installs it)"));
        }
    }
    let pair = match NetnsPair::create("bs", 61) {
        Ok(p) => p,
        Err(e) => return skip(&format!("cannot create network namespaces: {e}")),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let primary = node_root(d, "primary", &pair.addr_a);
    let backup = node_root(d, "backup", &pair.addr_b);
    let plog = d.join("primary-services.log");
    let blog = d.join("backup-services.log");

    // --- the backup: sshd on port 22 with a known root password
    let hash = Command::new("openssl")
        .args(["passwd", "-6", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .expect("stdin")
                .write_all(PASSWORD.as_bytes())?;
            c.wait_with_output()
        })
        .expect("openssl passwd");
    let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
    assert!(hash.starts_with("$6$"), "openssl passwd: {hash}");
    let shadow = d.join("shadow");
    fs::write(&shadow, format!("root:{hash}:19000:0:99999:7:::\n")).expect("shadow");
    let ssh = d.join("ssh");
    fs::create_dir_all(&ssh).expect("mkdir");
    let host_key = ssh.join("host_ed25519");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let conf = ssh.join("sshd_config");
    fs::write(
        &conf,
        format!(
            "ListenAddress {addr}:22\nHostKey {key}\nPidFile {pid}\nUsePAM no\n\
             PasswordAuthentication yes\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication no\nPermitRootLogin yes\nStrictModes no\n",
            addr = pair.addr_b,
            key = host_key.display(),
            pid = ssh.join("sshd.pid").display()
        ),
    )
    .expect("sshd_config");
    // The command sshd runs (`ha-sync cluster serve-bootstrap ...`) finds this wrapper on
    // its PATH: the binary under test, serving the backup's root.
    let backup_sandbox = format!(
        "{prelude}mount -t tmpfs ha-sync-test /usr/local/bin\n\
         printf '#!/bin/sh\\nexec {bin} \"$@\" --root {root}\\n' > /usr/local/bin/ha-sync\n\
         chmod 0755 /usr/local/bin/ha-sync\n\
         mount --bind {shadow} /etc/shadow\n\
         mount -t tmpfs ha-sync-test /run\nmkdir -m 0755 /run/sshd\n\
         exec \"$@\"\n",
        prelude = sandbox_prelude(&blog),
        bin = HA_SYNC,
        root = backup.display(),
        shadow = shadow.display()
    );
    let sshd_log = fs::File::create(d.join("sshd.log")).expect("log");
    let mut procs = Killed(Vec::new());
    procs.0.push(
        sandboxed(
            &pair.b,
            &backup_sandbox,
            &[
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
                &conf.display().to_string(),
            ],
        )
        .stderr(sshd_log)
        .spawn()
        .expect("sshd"),
    );
    assert!(
        wait_port(&pair.b, &pair.addr_b, 22),
        "sshd did not start: {}",
        fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
    );

    // --- the primary: the CLI in its own sandbox, the password on stdin
    let primary_sandbox = format!("{}exec \"$@\"\n", sandbox_prelude(&plog));
    let cli = |args: &[&str], stdin: &str| -> Output {
        let mut all = vec![HA_SYNC, "cluster", "--root"];
        let root = primary.display().to_string();
        all.push(&root);
        all.extend_from_slice(args);
        let mut child = sandboxed(&pair.a, &primary_sandbox, &all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ha-sync");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("ha-sync output")
    };
    let vip = "198.18.61.10/24";
    let o = cli(
        &["init-primary-node", &pair.addr_a, &pair.addr_b, vip, "lan"],
        "",
    );
    assert!(o.status.success(), "init-primary-node: {}", text(&o));

    // a wrong password: refused by sshd, and said so without the password
    let wrong = "Wrong,Guess-1234";
    let o = cli(
        &["check-backup-node", &pair.addr_b, "lan"],
        &format!("{wrong}\n"),
    );
    assert!(!o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("refused the password of root"), "{t}");
    assert!(!t.contains(wrong), "{t}");

    // the right one: the backup's requirements are checked there
    let o = cli(
        &["check-backup-node", &pair.addr_b, "lan"],
        &format!("{PASSWORD}\n"),
    );
    assert!(o.status.success(), "check-backup-node: {}", text(&o));
    assert!(!text(&o).contains(PASSWORD));

    let o = cli(&["init-backup-node", "lan"], &format!("{PASSWORD}\n"));
    assert!(o.status.success(), "init-backup-node: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Backup agent host key (port 65022) pinned: SHA256:"),
        "{out}"
    );
    assert!(!text(&o).contains(PASSWORD));
    // the backup now holds the cluster key, its keepalived role, and started its services
    let cluster_pub = fs::read_to_string(primary.join("etc/ha-sync/id_ed25519.pub")).expect("pub");
    let key_b64 = cluster_pub.split_whitespace().nth(1).expect("key");
    let ak = fs::read_to_string(backup.join("etc/ha-sync/authorized_keys")).expect("ak");
    assert!(ak.contains(key_b64), "{ak}");
    let k = fs::read_to_string(backup.join("etc/config/keepalived")).expect("backup uci");
    assert!(k.contains("config vrrp_instance 'backup'"), "{k}");
    let started = fs::read_to_string(&blog).unwrap_or_default();
    assert!(started.contains("keepalived restart"), "{started}");
    assert!(started.contains("conntrackd restart"), "{started}");
    let known = fs::read_to_string(primary.join("etc/ha-sync/known_hosts")).expect("known_hosts");
    assert!(
        known.starts_with(&format!("[{}]:65022 ssh-ed25519 ", pair.addr_b)),
        "{known}"
    );

    // --- from now on: the agent on 65022 and the cluster key (port 22 no longer needed)
    let serve_sandbox = format!("{}exec \"$@\"\n", sandbox_prelude(&blog));
    let listen = format!("{}:65022", pair.addr_b);
    let broot = backup.display().to_string();
    procs.0.push(
        sandboxed(
            &pair.b,
            &serve_sandbox,
            &[HA_SYNC, "serve", "--root", &broot, "--listen", &listen],
        )
        .stdout(Stdio::null())
        .stderr(fs::File::create(d.join("serve.log")).expect("log"))
        .spawn()
        .expect("serve"),
    );
    assert!(
        wait_port(&pair.b, &pair.addr_b, 65022),
        "agent did not start: {}",
        fs::read_to_string(d.join("serve.log")).unwrap_or_default()
    );
    let o = cli(&["add-vip", "lan", "198.18.61.11/24"], "");
    assert!(o.status.success(), "add-vip: {}", text(&o));
    let k = fs::read_to_string(backup.join("etc/config/keepalived")).expect("backup uci");
    assert!(
        k.contains("198.18.61.11/24"),
        "the backup did not get the VIP: {k}"
    );

    // ssh-remote without a terminal: the command runs on the backup (its hostname namespace
    // is the host's, so prove it by the address it sees)
    let o = cli(
        &["ssh-remote"],
        "ip -4 -o addr show | grep -o '198.18.61.[0-9]*/24'; echo done-$((2+3))\n",
    );
    assert!(o.status.success(), "ssh-remote: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("{}/24", pair.addr_b)), "{out}");
    assert!(!out.contains(&format!("{}/24", pair.addr_a)), "{out}");
    assert!(out.contains("done-5"), "{out}");

    // upgrade-remote: the image travels, the backup says why it cannot install it here
    let image = d.join("image.img.gz");
    fs::write(&image, vec![0x5au8; 300_000]).expect("image");
    let o = cli(&["upgrade-remote", &image.display().to_string()], "");
    assert!(!o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("/sbin/sysupgrade not found on the backup"),
        "{t}"
    );
    assert!(!backup.join("tmp/ha-sync-upgrade.img").exists());
}
