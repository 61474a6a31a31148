//! Key files: private keys, host keys, authorized_keys and known_hosts (OpenSSH formats).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};
use sha1::Sha1;

use super::{Result, TransportError};
use sync_core::fsx;

/// `SHA256:...` fingerprint of a public key, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The name a host has in known_hosts: `host` for port 22, `[host]:port` otherwise.
pub fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

fn hostname() -> String {
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(s) = fs::read_to_string(path) {
            let s = s.trim();
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "localhost".to_string()
}

/// Writes `data` to `path` durably and atomically with exactly `mode` ([`fsx::write_atomic`]).
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    fsx::write_atomic(path, data, mode, fsx::Durability::Durable)
        .map_err(|e| TransportError::io("cannot write", path, e))
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            fs::create_dir_all(parent)
                .map_err(|e| TransportError::io("cannot create directory", parent, e))?;
        }
    }
    Ok(())
}

fn pub_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".pub");
    PathBuf::from(s)
}

/// Generates an ed25519 key pair: `out` (OpenSSH private key, mode 0600) and `out.pub`
/// (`ssh-ed25519 AAAA... ha-sync@<hostname>`, mode 0644). Both written atomically; parent
/// directories are created. Refuses to overwrite an existing `out`.
pub fn generate_keypair(out: &Path) -> Result<()> {
    if out.exists() {
        return Err(TransportError::KeyExists {
            path: out.to_path_buf(),
        });
    }
    create_parent(out)?;
    let mut key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .map_err(|e| TransportError::KeyGen(e.to_string()))?;
    key.set_comment(format!("ha-sync@{}", hostname()));
    write_keypair(&key, out)
}

/// Writes `key` to `out` (OpenSSH format, 0600) and its public half to `out.pub`.
fn write_keypair(key: &PrivateKey, out: &Path) -> Result<()> {
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| TransportError::KeyEncode {
            path: out.to_path_buf(),
            reason: e.to_string(),
        })?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| TransportError::KeyEncode {
            path: pub_path(out),
            reason: e.to_string(),
        })?;
    write_atomic(out, private.as_bytes(), 0o600)?;
    write_atomic(&pub_path(out), format!("{public}\n").as_bytes(), 0o644)
}

/// Reads a dropbear private key file (what `dropbearkey` writes, the incumbent's
/// `/etc/keepalived/keys/id_rsa`): RSA (`ssh-rsa`, e, n, d, p, q as SSH mpints) or ed25519
/// (`ssh-ed25519`, 32 secret and 32 public bytes), and writes it to `out` as an OpenSSH
/// private key (0600) with `out.pub`, so the pairing the incumbent made keeps working.
pub fn convert_dropbear_key(src: &Path, out: &Path) -> Result<PublicKey> {
    use russh::keys::ssh_encoding::Mpint;
    use russh::keys::ssh_key::private::{
        Ed25519Keypair, KeypairData, RsaKeypair, RsaPrivateKey as SshRsaPrivate,
    };
    use russh::keys::ssh_key::public::RsaPublicKey;
    let bad = |reason: String| TransportError::KeyLoad {
        path: src.to_path_buf(),
        reason,
    };
    let data = fs::read(src).map_err(|e| bad(e.to_string()))?;
    let mut rest = &data[..];
    let mut field = || -> Result<&[u8]> {
        if rest.len() < 4 {
            return Err(bad("truncated dropbear key".into()));
        }
        let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + n {
            return Err(bad("truncated dropbear key".into()));
        }
        let (f, r) = rest[4..].split_at(n);
        rest = r;
        Ok(f)
    };
    let kind = field()?.to_vec();
    let mpint = |b: &[u8]| Mpint::from_bytes(b).map_err(|e| bad(format!("bad number: {e}")));
    let keypair = match &kind[..] {
        b"ssh-rsa" => {
            let (e, n, d, p, q) = (
                mpint(field()?)?,
                mpint(field()?)?,
                mpint(field()?)?,
                mpint(field()?)?,
                mpint(field()?)?,
            );
            let crypto = |e: russh::keys::ssh_key::Error| bad(format!("RSA key: {e}"));
            // Dropbear keeps no CRT coefficient: the rsa crate computes it from the factors.
            let partial = RsaKeypair::new(
                RsaPublicKey::new(e, n).map_err(crypto)?,
                SshRsaPrivate::new(d, Mpint::from_positive_bytes(&[1]), p, q).map_err(crypto)?,
            )
            .map_err(crypto)?;
            let full = rsa::RsaPrivateKey::try_from(&partial).map_err(crypto)?;
            KeypairData::Rsa(RsaKeypair::try_from(&full).map_err(crypto)?)
        }
        b"ssh-ed25519" => {
            let both = field()?;
            let seed: [u8; 32] = both
                .get(..32)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| bad("short ed25519 key".into()))?;
            KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed))
        }
        other => {
            return Err(bad(format!(
                "dropbear key of type {:?}: only ssh-rsa and ssh-ed25519 are converted",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let key = PrivateKey::new(keypair, "ns-ha (converted from dropbear)")
        .map_err(|e| TransportError::KeyGen(e.to_string()))?;
    create_parent(out)?;
    write_keypair(&key, out)?;
    Ok(key.public_key().clone())
}

/// An RSA key in dropbear's file format (what `dropbearkey -t rsa` writes): the inverse of
/// [`convert_dropbear_key`], for the migration test bench and for handing a key back to a
/// dropbear client.
pub fn to_dropbear_rsa(key: &PrivateKey) -> Result<Vec<u8>> {
    use russh::keys::ssh_key::private::KeypairData;
    let KeypairData::Rsa(kp) = key.key_data() else {
        return Err(TransportError::KeyGen("not an RSA key".into()));
    };
    let mut out = Vec::new();
    let mut put = |b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    put(b"ssh-rsa");
    for m in [
        kp.public().e(),
        kp.public().n(),
        kp.private().d(),
        kp.private().p(),
        kp.private().q(),
    ] {
        put(m.as_bytes());
    }
    Ok(out)
}

/// Loads an unencrypted OpenSSH (or PEM/PKCS#8) private key: ed25519, RSA or ECDSA.
pub fn load_private_key(path: &Path) -> Result<PrivateKey> {
    let text = fs::read_to_string(path).map_err(|e| TransportError::KeyLoad {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    russh::keys::decode_secret_key(&text, None).map_err(|e| TransportError::KeyLoad {
        path: path.to_path_buf(),
        reason: match e {
            russh::keys::Error::KeyIsEncrypted => {
                "the key is protected by a passphrase; ha-sync needs an unencrypted key".into()
            }
            e => e.to_string(),
        },
    })
}

/// Loads the host key at `path`, generating an ed25519 key (and `path.pub`) on first start.
/// A key file readable by group or others is chmod'ed to 0600 with a warning.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey> {
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!("generating host key {}", path.display());
            generate_keypair(path)?;
        }
        Err(e) => return Err(TransportError::io("cannot stat", path, e)),
        Ok(meta) => {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "host key {} has mode {:o}, readable by others; setting it to 600",
                    path.display(),
                    mode & 0o7777
                );
                fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                    .map_err(|e| TransportError::io("cannot chmod", path, e))?;
            }
        }
    }
    load_private_key(path)
}

/// Reads a public key file (`ssh-ed25519 AAAA... comment`).
pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    russh::keys::load_public_key(path).map_err(|e| TransportError::KeyLoad {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Splits an OpenSSH line into whitespace-separated fields, keeping double-quoted parts
/// (with `\"` escapes) inside one field, as sshd does for authorized_keys options.
fn split_fields(line: &str) -> Vec<&str> {
    let bytes = line.as_bytes();
    let mut fields = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        let mut quoted = false;
        while i < bytes.len() && (quoted || !bytes[i].is_ascii_whitespace()) {
            match bytes[i] {
                b'\\' if quoted && i + 1 < bytes.len() => i += 1,
                b'"' => quoted = !quoted,
                _ => {}
            }
            i += 1;
        }
        fields.push(&line[start..i]);
    }
    fields
}

/// Parses `type base64` into a key, checking that the type matches the blob.
fn parse_key(kind: &str, b64: &str) -> Option<PublicKey> {
    let key = russh::keys::parse_public_key_base64(b64).ok()?;
    (key.algorithm().as_str() == kind).then_some(key)
}

/// One accepted key of an authorized_keys file.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    pub key: PublicKey,
    /// Options before the key (`restrict`, `command="..."`), kept but not enforced.
    pub options: Option<String>,
    pub comment: String,
    /// 1-based line number.
    pub line: usize,
}

/// The keys allowed to log in, from an OpenSSH authorized_keys file.
#[derive(Debug, Clone, Default)]
pub struct AuthorizedKeys {
    pub path: PathBuf,
    pub keys: Vec<AuthorizedKey>,
}

impl AuthorizedKeys {
    /// Reads `path`. Comments and blank lines are skipped; a leading options field is kept
    /// but not enforced; lines that do not parse are skipped with a warning.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).map_err(|e| TransportError::io("cannot read", path, e))?;
        Ok(Self::parse(path, &text))
    }

    /// Parses authorized_keys text; `path` is only used in warnings.
    pub fn parse(path: &Path, text: &str) -> Self {
        let mut keys = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_fields(line);
            let parsed = match fields.as_slice() {
                [kind, b64, rest @ ..] if parse_key(kind, b64).is_some() => {
                    parse_key(kind, b64).map(|k| (k, None, rest.join(" ")))
                }
                [options, kind, b64, rest @ ..] => {
                    parse_key(kind, b64).map(|k| (k, Some(options.to_string()), rest.join(" ")))
                }
                _ => None,
            };
            match parsed {
                Some((key, options, comment)) => keys.push(AuthorizedKey {
                    key,
                    options,
                    comment,
                    line: i + 1,
                }),
                None => tracing::warn!(
                    "{} line {}: not a public key, ignored",
                    path.display(),
                    i + 1
                ),
            }
        }
        AuthorizedKeys {
            path: path.to_path_buf(),
            keys,
        }
    }

    /// Whether `key` is listed (key data compared, comments ignored).
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.keys.iter().any(|k| k.key.key_data() == key.key_data())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What known_hosts says about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// An entry for the host has this key.
    Known,
    /// No entry for the host.
    Unknown,
    /// The host has entries, none with this key; `line` (1-based) is the first of them.
    /// A key marked `@revoked` is reported as changed too.
    Changed { line: usize },
}

/// `*` and `?` wildcards, as in OpenSSH host patterns.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob_match(rest, &text[1..]),
        Some((c, rest)) => {
            text.first().is_some_and(|t| t.eq_ignore_ascii_case(c)) && glob_match(rest, &text[1..])
        }
    }
}

fn hashed_match(entry: &str, name: &str) -> bool {
    // |1|base64(salt)|base64(hmac_sha1(salt, name))
    let mut parts = entry.split('|').skip(2);
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else {
        return false;
    };
    let b64 = &data_encoding::BASE64;
    let (Ok(salt), Ok(hash)) = (b64.decode(salt.as_bytes()), b64.decode(hash.as_bytes())) else {
        return false;
    };
    let Ok(mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(name.as_bytes())
        .verify_slice(&hash)
        .is_ok()
}

/// Whether a known_hosts host field (comma-separated patterns, hashed entries, `!negation`)
/// matches `name` (`host` or `[host]:port`).
fn hosts_match(field: &str, name: &str) -> bool {
    let mut matched = false;
    for pat in field.split(',') {
        if pat.starts_with("|1|") {
            if hashed_match(pat, name) {
                matched = true;
            }
        } else if let Some(neg) = pat.strip_prefix('!') {
            if glob_match(neg.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if glob_match(pat.as_bytes(), name.as_bytes()) {
            matched = true;
        }
    }
    matched
}

/// Checks `key` for `host`:`port` against an OpenSSH known_hosts file. A missing file means
/// [`HostKeyStatus::Unknown`]. Hashed entries (`|1|`), wildcards and `!` negations are
/// understood; `@cert-authority` lines are ignored; unparseable lines are skipped.
pub fn check_known_host(
    path: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
) -> Result<HostKeyStatus> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HostKeyStatus::Unknown),
        Err(e) => return Err(TransportError::io("cannot read", path, e)),
    };
    let name = known_hosts_name(host, port);
    let mut first_other = None;
    let mut known = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut hosts = fields.next().unwrap_or_default();
        let mut revoked = false;
        if hosts.starts_with('@') {
            match hosts {
                "@revoked" => revoked = true,
                _ => continue, // @cert-authority: we don't accept host certificates
            }
            hosts = fields.next().unwrap_or_default();
        }
        if !hosts_match(hosts, &name) {
            continue;
        }
        let (Some(kind), Some(b64)) = (fields.next(), fields.next()) else {
            tracing::warn!("{} line {}: no key, ignored", path.display(), i + 1);
            continue;
        };
        let Some(recorded) = parse_key(kind, b64) else {
            tracing::warn!("{} line {}: bad key, ignored", path.display(), i + 1);
            continue;
        };
        let same = recorded.key_data() == key.key_data();
        if revoked {
            if same {
                return Ok(HostKeyStatus::Changed { line: i + 1 });
            }
        } else if same {
            known = true;
        } else if first_other.is_none() {
            first_other = Some(i + 1);
        }
    }
    Ok(match (known, first_other) {
        (true, _) => HostKeyStatus::Known,
        (false, Some(line)) => HostKeyStatus::Changed { line },
        (false, None) => HostKeyStatus::Unknown,
    })
}

/// Records `key` for `host`:`port` in known_hosts (`[host]:port ssh-ed25519 AAAA...`),
/// creating the file and its directory if needed. The file is rewritten atomically; nothing
/// is written when the key is already known.
pub fn pin_known_host(path: &Path, host: &str, port: u16, key: &PublicKey) -> Result<()> {
    if check_known_host(path, host, port, key)? == HostKeyStatus::Known {
        return Ok(());
    }
    let mut text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(TransportError::io("cannot read", path, e)),
    };
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let mut plain = key.clone();
    plain.set_comment("");
    let encoded = plain.to_openssh().map_err(|e| TransportError::KeyEncode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    text.push_str(&format!(
        "{} {}\n",
        known_hosts_name(host, port),
        encoded.trim_end()
    ));
    create_parent(path)?;
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write_atomic(path, text.as_bytes(), mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_incumbents_dropbear_rsa_key_converts_to_the_same_key() {
        let d = tempfile::tempdir().unwrap();
        let rsa = PrivateKey::random(
            &mut russh::keys::key::safe_rng(),
            Algorithm::Rsa { hash: None },
        )
        .unwrap();
        let src = d.path().join("id_rsa");
        std::fs::write(&src, to_dropbear_rsa(&rsa).unwrap()).unwrap();
        let out = d.path().join("converted");
        let public = convert_dropbear_key(&src, &out).unwrap();
        assert_eq!(public.key_data(), rsa.public_key().key_data());
        let loaded = load_private_key(&out).unwrap();
        assert_eq!(loaded.public_key().key_data(), rsa.public_key().key_data());
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(&src, b"garbage").unwrap();
        let e = convert_dropbear_key(&src, &out).unwrap_err().to_string();
        assert!(e.contains("id_rsa"), "{e}");
    }

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const ED2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    #[test]
    fn authorized_keys_options_comments() {
        let text = format!(
            "# comment\n\n{ED} alice@a\nrestrict,command=\"echo a b\",from=\"10.0.0.1\" {ED2} with spaces in comment\ngarbage line\n"
        );
        let ak = AuthorizedKeys::parse(Path::new("ak"), &text);
        assert_eq!(ak.keys.len(), 2);
        assert_eq!(ak.keys[0].line, 3);
        assert_eq!(ak.keys[1].line, 4);
        assert_eq!(
            ak.keys[1].options.as_deref(),
            Some("restrict,command=\"echo a b\",from=\"10.0.0.1\"")
        );
        assert_eq!(ak.keys[1].comment, "with spaces in comment");
        let mut k = key(ED2);
        k.set_comment("other comment");
        assert!(ak.contains(&k));
        let ak1 = AuthorizedKeys::parse(Path::new("ak"), &format!("{ED}\n"));
        assert!(!ak1.contains(&k));
    }

    #[test]
    fn known_hosts_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kh");
        let k1 = key(ED);
        let k2 = key(ED2);
        assert_eq!(
            check_known_host(&path, "h", 65022, &k1).unwrap(),
            HostKeyStatus::Unknown
        );
        pin_known_host(&path, "h", 65022, &k1).unwrap();
        pin_known_host(&path, "h", 65022, &k1).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("[h]:65022 ssh-ed25519 "));
        assert_eq!(
            check_known_host(&path, "h", 65022, &k1).unwrap(),
            HostKeyStatus::Known
        );
        assert_eq!(
            check_known_host(&path, "h", 22, &k1).unwrap(),
            HostKeyStatus::Unknown
        );
        assert_eq!(
            check_known_host(&path, "other", 65022, &k1).unwrap(),
            HostKeyStatus::Unknown
        );
        // A comment line before must not shift the reported line number.
        fs::write(&path, format!("# c\n\nx {ED}\n{}", text)).unwrap();
        assert_eq!(
            check_known_host(&path, "h", 65022, &k2).unwrap(),
            HostKeyStatus::Changed { line: 4 }
        );
        // Revoked.
        fs::write(&path, format!("@revoked * {ED}\n")).unwrap();
        assert_eq!(
            check_known_host(&path, "h", 65022, &k1).unwrap(),
            HostKeyStatus::Changed { line: 1 }
        );
    }

    #[test]
    fn known_hosts_hashed_and_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kh");
        // From russh's own tests: hashed "example.com".
        fs::write(
            &path,
            "|1|O33ESRMWPVkMYIwJ1Uw+n877jTo=|nuuC5vEqXlEZ/8BXQR7m619W6Ak= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF\n\
             198.18.0.*,!198.18.0.9 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ\n",
        )
        .unwrap();
        let hk =
            key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF");
        assert_eq!(
            check_known_host(&path, "example.com", 22, &hk).unwrap(),
            HostKeyStatus::Known
        );
        assert_eq!(
            check_known_host(&path, "example.org", 22, &hk).unwrap(),
            HostKeyStatus::Unknown
        );
        assert_eq!(
            check_known_host(&path, "198.18.0.2", 22, &key(ED)).unwrap(),
            HostKeyStatus::Known
        );
        assert_eq!(
            check_known_host(&path, "198.18.0.9", 22, &key(ED)).unwrap(),
            HostKeyStatus::Unknown
        );
    }

    #[test]
    fn keypair_files_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/id_ed25519");
        generate_keypair(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let pubp = pub_path(&path);
        assert_eq!(
            fs::metadata(&pubp).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let pubtext = fs::read_to_string(&pubp).unwrap();
        assert!(pubtext.starts_with("ssh-ed25519 AAAA"), "{pubtext}");
        assert!(pubtext.trim_end().contains(" ha-sync@"), "{pubtext}");
        let private = load_private_key(&path).unwrap();
        assert_eq!(
            private.public_key().key_data(),
            load_public_key(&pubp).unwrap().key_data()
        );
        assert!(matches!(
            generate_keypair(&path),
            Err(TransportError::KeyExists { .. })
        ));
        // Host key: loads the existing one, fixes a loose mode.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let host = load_or_create_host_key(&path).unwrap();
        assert_eq!(
            host.public_key().key_data(),
            private.public_key().key_data()
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Created when missing.
        let fresh = dir.path().join("etc/ha-sync/host_key");
        load_or_create_host_key(&fresh).unwrap();
        assert_eq!(
            fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn load_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = load_private_key(&missing).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        let bad = dir.path().join("bad");
        fs::write(&bad, "not a key").unwrap();
        let err = load_private_key(&bad).unwrap_err().to_string();
        assert!(err.contains(&bad.display().to_string()), "{err}");
    }
}
