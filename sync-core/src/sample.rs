//! A deterministic firewall-like tree, the shape of `shared/bench/mkdata.py`: UCI files,
//! certificates, private keys, many small configs in nested directories, a few large IP
//! lists, incompressible databases, OpenVPN client files, symlinks. Used by `ha-sync demo`,
//! the tests and the benchmark, so that all three speak of the same kind of tree.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Small deterministic PRNG (splitmix64): no dependency, same tree on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

fn write(root: &Path, rel: &str, data: &[u8], mode: u32) -> io::Result<()> {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&p, data)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
}

fn text_lines(rng: &mut Rng, n: u64) -> Vec<u8> {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 ._-='";
    let mut out = Vec::new();
    for _ in 0..n {
        let len = rng.range(10, 60);
        out.extend((0..len).map(|_| A[rng.range(0, A.len() as u64 - 1) as usize]));
        out.push(b'\n');
    }
    out
}

fn uci_rules(rng: &mut Rng, n: u64) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "config rule 'r{i}'\n\toption name 'rule{i}'\n\toption src 'lan'\n\toption dest_port '{}'\n\toption target 'ACCEPT'\n\n",
            rng.range(1, 65535)
        ));
    }
    s.into_bytes()
}

fn ip_list(rng: &mut Rng, n: u64) -> Vec<u8> {
    let mut s = String::with_capacity(n as usize * 18);
    for _ in 0..n {
        s.push_str(&format!(
            "{}.{}.{}.{}/32\n",
            rng.range(1, 223),
            rng.range(0, 255),
            rng.range(0, 255),
            rng.range(0, 255)
        ));
    }
    s.into_bytes()
}

fn base64ish(rng: &mut Rng, n: usize) -> Vec<u8> {
    const B: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(n + n / 76 + 1);
    for i in 0..n {
        out.push(B[(rng.next_u64() % 64) as usize]);
        if i % 76 == 75 {
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    out
}

/// The router's configuration that makes the tree the restore list: `/etc` mirrored whole
/// (sync_list), a few files through sysupgrade.conf, the incumbent's default exclusions.
pub fn write_router_config(root: &Path, hostname: &str) -> io::Result<()> {
    write(
        root,
        "etc/sysupgrade.conf",
        b"# kept across upgrades\n/etc/shadow\n",
        0o644,
    )?;
    write(
        root,
        crate::node::KEEPALIVED_UCI,
        b"config globals 'globals'\n\toption alt_config_file '/etc/keepalived/keepalived.conf'\n\n\
config peer 'ha_peer'\n\toption address '127.0.0.1'\n\toption ssh_port '65022'\n\
\tlist sync_list '/etc/config'\n\tlist sync_list '/etc/ssl'\n\tlist sync_list '/etc/misc'\n\
\tlist sync_list '/etc/banip'\n\tlist sync_list '/etc/db'\n\tlist sync_list '/etc/openvpn'\n\
\tlist sync_list '/etc/links'\n\tlist sync_list '/etc/new'\n\tlist sync_list '/etc/ha'\n\
\tlist exclude_list '/etc/config/network'\n\tlist exclude_list '/etc/config/keepalived'\n\
\tlist exclude_list '/etc/config/system'\n",
        0o644,
    )?;
    write(
        root,
        "etc/config/system",
        format!("config system\n\toption hostname '{hostname}'\n").as_bytes(),
        0o644,
    )?;
    write(
        root,
        "etc/config/network",
        b"config interface 'lan'\n\toption device 'br-lan'\n\toption proto 'static'\n",
        0o644,
    )
}

/// Creates the sample tree under `root/etc`; `scale` multiplies the file counts.
pub fn generate(root: &Path, scale: u64) -> io::Result<()> {
    let mut rng = Rng::new(42);
    for i in 0..60 {
        let n = rng.range(5, 150);
        write(
            root,
            &format!("etc/config/cfg{i}"),
            &uci_rules(&mut rng, n),
            0o644,
        )?;
    }
    for i in 0..300 * scale {
        let n = rng.range(900, 4000) as usize;
        let mut c = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        c.extend(base64ish(&mut rng, n));
        c.extend_from_slice(b"-----END CERTIFICATE-----\n");
        write(root, &format!("etc/ssl/certs/c{i}.pem"), &c, 0o644)?;
    }
    for i in 0..20 {
        write(
            root,
            &format!("etc/ssl/private/k{i}.key"),
            &base64ish(&mut rng, 2300),
            0o600,
        )?;
    }
    for i in 0..1500 * scale {
        let depth = rng.range(1, 4);
        let d: Vec<String> = (0..depth)
            .map(|_| format!("d{}", rng.range(0, 6)))
            .collect();
        let n = rng.range(2, 120);
        write(
            root,
            &format!("etc/misc/{}/f{i}.conf", d.join("/")),
            &text_lines(&mut rng, n),
            0o644,
        )?;
    }
    for i in 0..5 {
        let n = rng.range(120_000, 450_000);
        write(
            root,
            &format!("etc/banip/list{i}.v4"),
            &ip_list(&mut rng, n),
            0o644,
        )?;
    }
    for i in 0..3 {
        write(
            root,
            &format!("etc/db/users{i}.db"),
            &rng.bytes(1 << 20),
            0o640,
        )?;
    }
    for i in 0..100 {
        write(
            root,
            &format!("etc/openvpn/ccd/client{i}"),
            &text_lines(&mut rng, 5),
            0o644,
        )?;
    }
    std::fs::create_dir_all(root.join("etc/links"))?;
    for i in 0..10 {
        let p = root.join(format!("etc/links/l{i}"));
        if p.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("../config/cfg{i}"), p)?;
        }
    }
    write(root, "etc/shadow", &text_lines(&mut rng, 20), 0o600)
}

/// The benchmark's mutations: `edit`, `bigedit`, `delete`, `add`, `touch`.
pub fn mutate(root: &Path, kind: &str) -> io::Result<()> {
    let mut rng = Rng::new(7);
    match kind {
        "edit" => {
            let p = root.join("etc/config/cfg3");
            let s = std::fs::read_to_string(&p)?.replacen("'ACCEPT'", "'REJECT'", 1);
            std::fs::write(p, s)
        }
        "bigedit" => {
            let p = root.join("etc/banip/list2.v4");
            let text = std::fs::read_to_string(&p)?;
            let mut lines: Vec<String> = text.lines().map(|l| format!("{l}\n")).collect();
            for _ in 0..lines.len() / 100 {
                let i = rng.range(0, lines.len() as u64 - 1) as usize;
                lines[i] = format!("10.{}.{}.0/24\n", rng.range(0, 255), rng.range(0, 255));
            }
            let mut out = lines.concat().into_bytes();
            out.extend(ip_list(&mut rng, 1000));
            std::fs::write(p, out)
        }
        "delete" => std::fs::remove_dir_all(root.join("etc/openvpn/ccd")),
        "add" => {
            for i in 0..50 {
                write(
                    root,
                    &format!("etc/new/n{i}.conf"),
                    &text_lines(&mut rng, 30),
                    0o644,
                )?;
            }
            Ok(())
        }
        "touch" => {
            let now = filetime::FileTime::now();
            filetime::set_file_mtime(root.join("etc/config/cfg5"), now)
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unknown mutation {other:?}"),
        )),
    }
}
