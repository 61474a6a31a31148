//! Migration from ns-ha (issue 12, item 2): both nodes start from the UCI the incumbent's
//! `init_local` writes (INCUMBENT-SOURCE §1.1): `dropbear.ha_link` on the agent's port, the
//! primary's dropbear RSA key in `/etc/keepalived/keys/id_rsa` and its public half as the
//! backup's `ha_peer.ssh_pubkey`, the `ha_sync` vrrp_script with its `sender`/`receiver`
//! track_scripts, `sync_dir=/tmp/ns-ha`, ns-ha's hotplug scripts. `migrate` runs on the
//! backup, its real agent (`ha-sync serve`) starts, `migrate` runs on the primary (which logs
//! in with the incumbent's key, pins the agent, hands over the ed25519 cluster key), and a real
//! `ha-sync now` then syncs into the staging tree the incumbent used.

use ha_cluster::migrate;
use ha_cluster::Ctx;
use ha_sync_tests::ha_sync_bin;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sync_core::node::{Node, VrrpState};
use sync_core::runner::RecordingRunner;
use sync_core::uci::Package;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

const DROPBEAR: &str = "
config dropbear
\toption PasswordAuth 'on'
\toption RootPasswordAuth 'on'
\toption Port '22'

config dropbear 'ha_link'
\toption Port '65022'
\toption RootPasswordAuth '0'
\toption PasswordAuth '0'
";

/// `/etc/config/keepalived` as ns.ha's `init_local` writes it for `role`.
fn incumbent_keepalived(role: &str, port: u16, pubkey: &str) -> String {
    let common = "
config globals 'globals'
\toption enabled '1'

config ipaddress 'lan_ipaddress'
\toption name 'lan_ha'
\toption address '192.168.100.240/24'
\toption device 'br-lan'
\toption label_suffix 'ha'
\toption ns_link 'network/lan'

config vrrp_script 'ha_sync'
\toption name 'ha_sync'
\toption script '/usr/libexec/ns-rsync.sh'
\toption interval '600'
\toption weight '100'

config track_interface 'lan_track'
\toption name 'lan_ha'
\toption value 'br-lan'
\toption weight '100'
\toption ns_link 'network/lan'

config interface_up_down_delays 'lan_delays'
\toption device 'br-lan'
\toption up_delay '1'
\toption down_delay '1'
";
    let (track, track_name, peer_name, mode, extra, inst, name, state, prio, src) = match role {
        "primary" => (
            "ha_sender",
            "sender",
            "backup",
            "send",
            "\toption ssh_key '/etc/keepalived/keys/id_rsa'\n\tlist sync_list '/etc/ha'\n\
             \tlist sync_list '/etc/app'\n\tlist exclude_list '/etc/config/network'\n\
             \tlist exclude_list '/etc/config/keepalived'\n"
                .to_string(),
            "primary",
            "master",
            "MASTER",
            "100",
            "192.168.100.238",
        ),
        _ => (
            "ha_receiver",
            "receiver",
            "master",
            "receive",
            format!("\toption ssh_pubkey '{}'\n", pubkey.trim()),
            "backup",
            "backup",
            "BACKUP",
            "50",
            "192.168.100.239",
        ),
    };
    format!(
        "{common}
config track_script '{track}'
\toption name '{track_name}'
\toption value 'ha_sync'
\toption weight '100'

config peer 'ha_peer'
\toption name '{peer_name}'
\toption address '127.0.0.1'
\toption sync '1'
\toption sync_mode '{mode}'
\toption sync_dir '/tmp/ns-ha'
\toption ssh_port '{port}'
{extra}
config vrrp_instance '{inst}'
\toption name '{name}'
\toption state '{state}'
\toption interface 'br-lan'
\toption virtual_router_id '100'
\toption priority '{prio}'
\toption advert_int '1'
\toption nopreempt '0'
\tlist virtual_ipaddress 'lan_ha'
\toption unicast_src_ip '{src}'
\tlist unicast_peer '{peer_name}'
\toption auth_type 'PASS'
\toption auth_pass '1a2b3c4d'
\tlist track_interface 'lan_ha'
\tlist track_script '{track_name}'
"
    )
}

#[test]
fn a_pair_the_incumbent_set_up_migrates_and_syncs() {
    let d = tempfile::tempdir().unwrap();
    let (p, b) = (d.path().join("primary"), d.path().join("backup"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    // The incumbent's pairing: an RSA key made by dropbearkey on the primary.
    let openssh = d.path().join("rsa");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"])
        .arg(&openssh)
        .status()
        .expect("ssh-keygen (openssh-client, installed by .ci/run)");
    assert!(st.success());
    let key = sync_agent::transport::load_private_key(&openssh).unwrap();
    let dropbear = sync_agent::transport::to_dropbear_rsa(&key).unwrap();
    std::fs::create_dir_all(p.join("etc/keepalived/keys")).unwrap();
    std::fs::write(p.join(migrate::INCUMBENT_KEY), dropbear).unwrap();
    let pubkey = std::fs::read_to_string(openssh.with_extension("pub")).unwrap();

    for (root, role) in [(&p, "primary"), (&b, "backup")] {
        write(
            root,
            "etc/config/keepalived",
            &incumbent_keepalived(role, port, &pubkey),
        );
        write(root, "etc/config/dropbear", DROPBEAR);
        write(root, "etc/sysupgrade.conf", "");
        for hook in ["02-rsync", "10-adjust", "100-conntrackd", "900-telegraf"] {
            write(
                root,
                &format!("etc/hotplug.d/keepalived/{hook}"),
                "#!/bin/sh\n",
            );
        }
    }
    write(&p, "etc/app/conf", "from the primary\n");
    // The incumbent's staging tree on the backup, with an old generation in it.
    write(&b, "tmp/ns-ha/etc/app/conf", "an old generation\n");

    // 1. The backup.
    let r = RecordingRunner::new();
    let m = migrate::migrate_local(&Ctx {
        root: &b,
        runner: &r,
    })
    .expect("migrate the backup");
    assert!(m.converted_key.is_none());
    let lines = r.lines();
    for want in [
        "/etc/init.d/dropbear restart",
        "/etc/init.d/ha-sync restart",
        "/etc/init.d/keepalived restart",
    ] {
        assert!(lines.iter().any(|l| l == want), "{want} not in {lines:?}");
    }
    let dropbear = Package::load(&b.join("etc/config/dropbear")).unwrap();
    assert_eq!(dropbear.get("ha_link", "enable"), Some("0"));
    let k = Package::load(&b.join("etc/config/keepalived")).unwrap();
    for gone in ["ha_sync", "ha_receiver"] {
        assert!(k.section(gone).is_none(), "{gone} still there");
    }
    assert!(k.get_list("backup", "track_script").is_empty());
    assert!(
        k.section("ha_catchup").is_none(),
        "the gate is the primary's"
    );
    assert_eq!(k.get("globals", "enabled"), Some("1"));
    assert!(!b.join("etc/hotplug.d/keepalived/02-rsync").exists());
    assert!(b.join(migrate::MOVED_HOOKS).join("02-rsync").is_file());
    let auth = std::fs::read_to_string(b.join("etc/ha-sync/authorized_keys")).unwrap();
    assert_eq!(auth.trim(), pubkey.trim(), "the incumbent's key authorized");
    // Idempotent.
    let again = migrate::migrate_local(&Ctx {
        root: &b,
        runner: &RecordingRunner::new(),
    })
    .unwrap();
    assert!(
        again.steps.is_empty(),
        "a second run changes nothing: {:?}",
        again.steps
    );

    // Its agent, as its init script starts it (the keys in /etc/ha-sync, port 65022 here
    // `port`), with the incumbent's staging tree.
    Node::new(&b).set_vrrp_state(VrrpState::Backup).unwrap();
    let mut agent = Command::new(ha_sync_bin())
        .args(["serve", "--root"])
        .arg(&b)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("HA_SYNC_FAULT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "ha-sync serve did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }

    // 2. The primary: local part, then the key exchange over the incumbent's pairing.
    let r = RecordingRunner::new();
    let ctx = Ctx {
        root: &p,
        runner: &r,
    };
    let m = migrate::migrate_local(&ctx).expect("migrate the primary");
    let rsa = m.converted_key.expect("the ns-ha key converted");
    let k = Package::load(&p.join("etc/config/keepalived")).unwrap();
    assert!(k.section("ha_sync").is_none() && k.section("ha_sender").is_none());
    assert_eq!(k.get_list("primary", "track_script"), ["ha_catchup_track"]);
    assert_eq!(k.get("ha_peer", "sync_dir"), Some("/tmp/ns-ha"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let h = rt
        .block_on(migrate::hand_over(&ctx, &rsa))
        .expect("hand over the cluster key");
    assert!(
        h.pinned.is_some(),
        "first contact pins the agent's host key"
    );
    let auth = std::fs::read_to_string(b.join("etc/ha-sync/authorized_keys")).unwrap();
    let cluster = std::fs::read_to_string(p.join("etc/ha-sync/id_ed25519.pub")).unwrap();
    assert_eq!(
        auth.trim(),
        cluster.trim(),
        "only the cluster key from now on"
    );
    assert!(auth.starts_with("ssh-ed25519 "));
    assert!(!p.join(migrate::converted_key()).exists());
    let k = Package::load(&p.join("etc/config/keepalived")).unwrap();
    assert_eq!(k.get("ha_peer", "ssh_key"), Some("/etc/ha-sync/id_ed25519"));

    // 3. A sync: the primary's daemonless `now`, with its own configuration only.
    Node::new(&p).set_vrrp_state(VrrpState::Master).unwrap();
    let out = Command::new(ha_sync_bin())
        .args(["now", "--no-daemon", "--root"])
        .arg(&p)
        .env_remove("HA_SYNC_FAULT")
        .output()
        .expect("ha-sync now");
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        out.status.success(),
        "ha-sync now after the migration: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(b.join("tmp/ns-ha/etc/app/conf")).unwrap(),
        "from the primary\n",
        "staged where the incumbent staged"
    );
    assert_eq!(
        std::fs::read_to_string(b.join("etc/app/conf")).unwrap(),
        "from the primary\n",
        "restored to the backup's live tree"
    );
}
