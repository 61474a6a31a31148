//! The OpenWrt service files of `packaging/openwrt/`, run by a real shell against stand-ins of
//! the OpenWrt functions they call (procd, config_*, uci), since no OpenWrt runs here: which
//! command procd gets for each HA role and setting, which keepalived events reach `ha-sync
//! hook`, what the ns-ha-config wrapper runs. The stand-ins record each call in a log.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/openwrt")
}

/// Stand-ins for /etc/rc.common + /lib/functions/procd.sh + uci: settings come from
/// `HA_ROLE` and `CFG_<option>` variables; procd calls are appended to `$LOG`.
const OPENWRT_STANDINS: &str = r#"
log() { printf '%s\n' "$*" >> "$LOG"; }
uci() {
	# uci -q get keepalived.primary / keepalived.backup
	[ "$1" = -q ] && shift
	[ "$1" = get ] || return 1
	case "$2" in
	keepalived.primary) [ "$HA_ROLE" = primary ] ;;
	keepalived.backup) [ "$HA_ROLE" = backup ] ;;
	*) return 1 ;;
	esac
}
config_load() { log "config_load $1"; }
config_get() { eval "v=\${CFG_$3-}"; [ -n "$v" ] || v=$4; eval "$1=\$v"; }
config_get_bool() {
	eval "v=\${CFG_$3-}"; [ -n "$v" ] || v=$4
	case "$v" in 1|on|true|yes|enabled) v=1 ;; *) v=0 ;; esac
	eval "$1=\$v"
}
procd_open_instance() { log "open_instance $*"; }
procd_set_param() { log "set_param $*"; }
procd_append_param() { log "append_param $*"; }
procd_close_instance() { log "close_instance"; }
procd_add_reload_trigger() { log "reload_trigger $*"; }
"#;

/// Runs the init script's `start_service` (and `service_triggers`) with `env` set.
fn start_service(env: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let init = packaging().join("ha-sync.init");
    // rc.common is the interpreter on OpenWrt: here the script is sourced after the
    // stand-ins, its first line being a comment to sh.
    let script = format!(
        "{OPENWRT_STANDINS}\n. '{}'\nstart_service\nservice_triggers\n",
        init.display()
    );
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(&script);
    run_logged(sh, &log, env)
}

/// Runs `cmd` with `LOG=log` and `env`; returns the lines the stand-ins logged.
fn run_logged(mut cmd: Command, log: &Path, env: &[(&str, &str)]) -> Vec<String> {
    let out = cmd
        .env("LOG", log)
        .envs(env.iter().copied())
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{env:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn every_shell_file_parses() {
    for name in [
        "ha-sync.init",
        "ha-sync.uci-defaults",
        "hotplug-keepalived-ha-sync",
        "ns-ha-config",
    ] {
        let out = Command::new("sh")
            .arg("-n")
            .arg(packaging().join(name))
            .output()
            .expect("sh -n");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn init_script_runs_the_daemon_of_the_role() {
    let primary = start_service(&[("HA_ROLE", "primary")]);
    assert_eq!(
        primary,
        vec![
            "config_load ha-sync",
            "open_instance watch",
            "set_param command /usr/sbin/ha-sync watch --interval 60",
            "set_param respawn 3600 5 0",
            "set_param stdout 1",
            "set_param stderr 1",
            "close_instance",
            "reload_trigger keepalived ha-sync",
        ]
    );
    let backup = start_service(&[
        ("HA_ROLE", "backup"),
        ("CFG_listen", "10.0.0.2:65022"),
        ("CFG_staging_only", "1"),
        ("CFG_log_level", "debug"),
    ]);
    assert_eq!(
        backup,
        vec![
            "config_load ha-sync",
            "open_instance serve",
            "set_param command /usr/sbin/ha-sync serve --listen 10.0.0.2:65022",
            "append_param command --staging-only",
            "set_param env HA_SYNC_LOG=debug",
            "set_param respawn 3600 5 0",
            "set_param stdout 1",
            "set_param stderr 1",
            "close_instance",
            "reload_trigger keepalived ha-sync",
        ]
    );
    // the reconcile interval of the primary is configurable
    let slow = start_service(&[("HA_ROLE", "primary"), ("CFG_interval", "300")]);
    assert!(slow.contains(&"set_param command /usr/sbin/ha-sync watch --interval 300".into()));
    // HA off, or the service disabled: no instance at all
    for env in [
        vec![("HA_ROLE", "")],
        vec![("HA_ROLE", "primary"), ("CFG_enabled", "0")],
    ] {
        let calls = start_service(&env);
        assert!(
            !calls.iter().any(|c| c.starts_with("open_instance")),
            "{env:?}: {calls:?}"
        );
    }
}

/// Runs the keepalived hotplug script with `env`; returns what `ha-sync` was asked to do.
fn hotplug(env: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("log");
    let bin = dir.path().join("bin");
    fs::create_dir_all(&bin).expect("mkdir");
    // /usr/sbin/ha-sync is not on this host: the script falls back to the one on PATH.
    let stub = bin.join("ha-sync");
    fs::write(&stub, "#!/bin/sh\necho \"ha-sync $*\" >> \"$LOG\"\n").expect("stub");
    fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let mut sh = Command::new("sh");
    sh.arg(packaging().join("hotplug-keepalived-ha-sync"))
        .env_clear()
        .env("PATH", path);
    run_logged(sh, &log, env)
}

#[test]
fn keepalived_events_reach_the_hook_once() {
    if Path::new("/usr/sbin/ha-sync").exists() || Path::new("/etc/default/ha-sync").exists() {
        eprintln!(
            "SKIPPED keepalived_events_reach_the_hook_once: ha-sync is installed on this host"
        );
        return;
    }
    for state in ["MASTER", "BACKUP", "FAULT", "STOP"] {
        let action = format!("NOTIFY_{state}");
        assert_eq!(
            hotplug(&[
                ("ACTION", &action),
                ("TYPE", "INSTANCE"),
                ("NAME", "primary")
            ]),
            vec![format!("ha-sync hook {action}")]
        );
        // the same event of a sync group is not acted on twice
        assert!(hotplug(&[("ACTION", &action), ("TYPE", "GROUP")]).is_empty());
    }
    // a NOTIFY_SYNC fired by ha-sync itself does not call back into it; one from elsewhere does
    assert!(hotplug(&[("ACTION", "NOTIFY_SYNC"), ("HA_SYNC_CHANGED", "/tmp/x")]).is_empty());
    assert_eq!(
        hotplug(&[("ACTION", "NOTIFY_SYNC")]),
        vec!["ha-sync hook NOTIFY_SYNC"]
    );
    assert!(hotplug(&[("ACTION", "ifup")]).is_empty());
}

#[test]
fn ns_ha_config_wrapper_passes_its_words_to_ha_sync_cluster() {
    if Path::new("/usr/sbin/ha-sync").exists() {
        eprintln!("SKIPPED ns_ha_config_wrapper: ha-sync is installed on this host");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("ha-sync");
    fs::write(&bin, "#!/bin/sh\nprintf '%s|' \"$@\"\n").expect("stub");
    fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let out = Command::new("sh")
        .arg(packaging().join("ns-ha-config"))
        .args(["add-vip", "lan", "192.168.100.66/24"])
        .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
        .output()
        .expect("sh");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "cluster|add-vip|lan|192.168.100.66/24|"
    );
}

/// The prompt follows the live VRRP state (issue 12): `[P]` on the master, `[S]` elsewhere,
/// nothing outside a cluster or before keepalived's first event.
#[test]
fn the_prompt_shows_the_live_vrrp_state() {
    let root = tempfile::tempdir().expect("tempdir");
    let mark = |state: Option<&str>| -> String {
        let rec = root.path().join("var/run/ha-sync/vrrp_state");
        match state {
            Some(s) => {
                fs::create_dir_all(rec.parent().unwrap()).unwrap();
                fs::write(&rec, format!("{s}\n")).unwrap();
            }
            None => {
                let _ = fs::remove_file(&rec);
            }
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(". \"$1\"; eval \"printf '%s' \\\"$PS1\\\"\"")
            .arg("sh")
            .arg(packaging().join("99-ha-sync-prompt.sh"))
            .env("HA_SYNC_ROOT", root.path())
            .env("PS1", "# ")
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        mark(Some("master")),
        "# ",
        "no cluster here: the prompt is untouched"
    );
    fs::create_dir_all(root.path().join("etc/config")).unwrap();
    fs::write(root.path().join("etc/config/keepalived"), "").unwrap();
    assert_eq!(mark(Some("master")), "[P]# ");
    assert_eq!(mark(Some("backup")), "[S]# ");
    assert_eq!(mark(Some("fault")), "[S]# ");
    assert_eq!(mark(None), "# ");
}
