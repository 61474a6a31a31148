//! `ns-ha-config` (here `ha-sync cluster`) ends with the incumbent's words for scripts that
//! parse them: `SUCCESS` on stdout, `ERROR: cause` on stderr, uncoloured when not a terminal.

use std::process::Command;

const HA_SYNC: &str = env!("CARGO_BIN_EXE_ha-sync");

#[test]
fn a_failed_action_ends_with_error_and_the_cause() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(HA_SYNC)
        .args(["cluster", "--root"])
        .arg(d.path())
        .args(["check-primary-node", "lan"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("ERROR: "), "{err}");
    assert!(err.contains("lan"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
}

#[test]
fn a_successful_action_ends_with_success() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("etc/config")).unwrap();
    std::fs::write(
        d.path().join("etc/config/network"),
        "\nconfig interface 'lan'\n\toption device 'br-lan'\n\toption proto 'static'\n\toption ipaddr '192.168.100.238/24'\n",
    )
    .unwrap();
    let out = Command::new(HA_SYNC)
        .args(["cluster", "--root"])
        .arg(d.path())
        .args(["check-primary-node", "lan"])
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{o}{e}");
    assert_eq!(o.lines().last(), Some("SUCCESS"), "{o}");
}
