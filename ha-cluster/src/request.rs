//! What the primary asks of the backup, and what it answers: typed, like the sync's
//! `wire::Msg`, and used by both ends (the agent's handlers in [`crate::remote`] and
//! [`crate::bootstrap`], the clients, the actions through [`Peer`]).
//!
//! On the wire each remote action is an SSH `exec` of an exact command string
//! ([`RemoteAction::command`]) on the agent: the request is one JSON object on stdin, ended by
//! EOF (its fields those of the [`ClusterRequest`] variant, plus its `action` tag), the answer
//! one JSON object on stdout, or exit status 1 and the error text on stderr. The command says
//! which action it is: the agent takes the tag from the command (requests of earlier versions
//! have none), and the answer's type from the action.
//!
//! This module depends on no other module of the crate that calls the peer, so the actions,
//! the upload and the agent's handlers all build on it without importing each other.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::addr::Cidr;
use crate::keepalived::Spec;
use crate::ClusterError;

/// The named actions the backup's agent runs for the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteAction {
    /// Check HA interfaces on the backup: exist, static; report device and address.
    Validate,
    /// Write the backup's cluster sections (and conntrackd) from the primary's spec.
    Configure,
    Enable,
    Disable,
    Reset,
}

impl RemoteAction {
    pub const ALL: [RemoteAction; 5] = [
        RemoteAction::Validate,
        RemoteAction::Configure,
        RemoteAction::Enable,
        RemoteAction::Disable,
        RemoteAction::Reset,
    ];

    /// The exact `exec` command string the agent accepts.
    pub fn command(self) -> &'static str {
        match self {
            RemoteAction::Validate => "ha-sync-cluster validate",
            RemoteAction::Configure => "ha-sync-cluster configure",
            RemoteAction::Enable => "ha-sync-cluster enable",
            RemoteAction::Disable => "ha-sync-cluster disable",
            RemoteAction::Reset => "ha-sync-cluster reset",
        }
    }

    /// The `action` tag of its [`ClusterRequest`].
    fn tag(self) -> &'static str {
        match self {
            RemoteAction::Validate => "validate",
            RemoteAction::Configure => "configure",
            RemoteAction::Enable => "enable",
            RemoteAction::Disable => "disable",
            RemoteAction::Reset => "reset",
        }
    }
}

/// An interface the backup must have, static, with `address` when one is expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WantedIface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
}

/// One request of the primary to the backup's agent, one variant per [`RemoteAction`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum ClusterRequest {
    /// Check the interfaces (before the primary adds one).
    Validate {
        interfaces: Vec<WantedIface>,
    },
    /// Write the backup's sections from the primary's `spec`; then start the services
    /// (`start`, at init) or reload them; drop the `removed` interfaces from its network.
    Configure {
        spec: Spec,
        #[serde(default)]
        start: bool,
        #[serde(default)]
        removed: Vec<String>,
    },
    Enable,
    Disable,
    Reset,
}

/// The backup's interface, as validate found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundIface {
    pub name: String,
    pub device: String,
    pub address: Option<Cidr>,
}

/// The answer to [`ClusterRequest::Validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    /// Whether the backup has a cluster role already.
    pub configured: bool,
    pub interfaces: Vec<FoundIface>,
}

/// What the backup answers, by action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAnswer {
    Validated(Validation),
    /// To configure: the backup's sections are written.
    Configured {
        configured: bool,
    },
    /// To enable, disable, reset.
    Done,
}

#[derive(Serialize, Deserialize)]
struct ConfiguredWire {
    configured: bool,
}

/// Parses a JSON document, or says what it got.
fn parse<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ClusterError> {
    serde_json::from_slice(bytes).map_err(|e| ClusterError::Invalid(format!("bad {what}: {e}")))
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, ClusterError> {
    serde_json::to_vec(value)
        .map_err(|e| ClusterError::Invalid(format!("encoding the {what}: {e}")))
}

impl ClusterRequest {
    pub fn action(&self) -> RemoteAction {
        match self {
            ClusterRequest::Validate { .. } => RemoteAction::Validate,
            ClusterRequest::Configure { .. } => RemoteAction::Configure,
            ClusterRequest::Enable => RemoteAction::Enable,
            ClusterRequest::Disable => RemoteAction::Disable,
            ClusterRequest::Reset => RemoteAction::Reset,
        }
    }

    /// What goes on the agent's stdin.
    pub fn to_wire(&self) -> Result<Vec<u8>, ClusterError> {
        encode("request", self)
    }

    /// The request of `action` from what arrived on stdin (nothing counts as `{}`).
    pub fn from_wire(action: RemoteAction, body: &[u8]) -> Result<ClusterRequest, ClusterError> {
        let mut fields: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ClusterError::Invalid(format!("request is not a JSON object: {e}")))?
        };
        // The command names the action; a tag in the body cannot say otherwise.
        fields.insert("action".into(), Value::String(action.tag().into()));
        serde_json::from_value(Value::Object(fields)).map_err(|e| {
            ClusterError::Invalid(format!("bad request for {}: {e}", action.command()))
        })
    }
}

impl ClusterAnswer {
    /// What goes on the agent's stdout.
    pub fn to_wire(&self) -> Result<Vec<u8>, ClusterError> {
        match self {
            ClusterAnswer::Validated(v) => encode("answer", v),
            ClusterAnswer::Configured { configured } => encode(
                "answer",
                &ConfiguredWire {
                    configured: *configured,
                },
            ),
            ClusterAnswer::Done => Ok(b"{}".to_vec()),
        }
    }

    /// The answer to `action` from the agent's stdout.
    pub fn from_wire(action: RemoteAction, body: &[u8]) -> Result<ClusterAnswer, ClusterError> {
        let what = format!("answer to {}", action.command());
        Ok(match action {
            RemoteAction::Validate => ClusterAnswer::Validated(parse(&what, body)?),
            RemoteAction::Configure => {
                let c: ConfiguredWire = parse(&what, body)?;
                ClusterAnswer::Configured {
                    configured: c.configured,
                }
            }
            RemoteAction::Enable | RemoteAction::Disable | RemoteAction::Reset => {
                let _: Map<String, Value> = parse(&what, body)?;
                ClusterAnswer::Done
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Image upload (`upgrade-remote`)

/// The exec command of the image upload on the agent.
pub(crate) const UPLOAD_COMMAND: &str = "ha-sync-cluster upgrade";
/// Largest image accepted (OpenWrt x86 images are tens of MB; NethSecurity's about 150 MB).
pub const MAX_IMAGE: u64 = 1 << 30;

/// What precedes the image on the wire: one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageHeader {
    /// File name on the primary, for the logs.
    pub name: String,
    pub size: u64,
    /// blake3 of the whole image, hex.
    pub blake3: String,
}

impl ImageHeader {
    /// Reads `image` once to size and hash it.
    pub fn of(image: &Path) -> Result<ImageHeader, ClusterError> {
        let mut f = File::open(image).map_err(ClusterError::io(image))?;
        let meta = f.metadata().map_err(ClusterError::io(image))?;
        if !meta.is_file() {
            return Err(ClusterError::Invalid(format!(
                "{} is not a regular file; give the image file",
                image.display()
            )));
        }
        if meta.len() > MAX_IMAGE {
            return Err(ClusterError::Invalid(format!(
                "{} is {} bytes, larger than any image ({MAX_IMAGE} bytes at most)",
                image.display(),
                meta.len()
            )));
        }
        let mut hasher = blake3::Hasher::new();
        let n = std::io::copy(&mut f, &mut hasher).map_err(ClusterError::io(image))?;
        Ok(ImageHeader {
            name: image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            size: n,
            blake3: hasher.finalize().to_hex().to_string(),
        })
    }

    /// The header line.
    pub fn to_line(&self) -> Result<Vec<u8>, ClusterError> {
        let mut line = encode("header", self)?;
        line.push(b'\n');
        Ok(line)
    }
}

/// The backup's answer to an upload, sent before it installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAnswer {
    /// `installing`.
    pub result: String,
    /// The image on the backup, as the router sees it.
    pub image: String,
}

impl UploadAnswer {
    pub fn to_wire(&self) -> Result<Vec<u8>, ClusterError> {
        encode("answer", self)
    }

    pub fn from_wire(body: &[u8]) -> Result<UploadAnswer, ClusterError> {
        parse(&format!("answer to {UPLOAD_COMMAND}"), body)
    }
}

// ---------------------------------------------------------------------------------------------
// First contact (`check-backup-node`, `init-backup-node`)

/// The steps of `ha-sync cluster serve-bootstrap STEP`, run by root on the backup over port
/// 22; the request is a JSON object on stdin, as for the agent's actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "lowercase")]
pub enum BootstrapRequest {
    /// As [`ClusterRequest::Validate`].
    Check { interfaces: Vec<WantedIface> },
    /// Install the cluster key (`cluster_key`, an OpenSSH public key line), then as
    /// [`ClusterRequest::Configure`].
    Init {
        spec: Spec,
        cluster_key: String,
        #[serde(default)]
        start: bool,
    },
}

/// The backup's answer to [`BootstrapRequest::Init`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Initialized {
    pub configured: bool,
    /// The agent's host key (OpenSSH public key line), for the primary to pin.
    pub host_key: String,
}

/// What the backup answers to a bootstrap step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapAnswer {
    Checked(Validation),
    Initialized(Initialized),
}

impl BootstrapRequest {
    /// The step's name on the command line.
    pub fn step(&self) -> &'static str {
        match self {
            BootstrapRequest::Check { .. } => "check",
            BootstrapRequest::Init { .. } => "init",
        }
    }

    pub fn to_wire(&self) -> Result<Vec<u8>, ClusterError> {
        encode("request", self)
    }

    /// The request of `step` from what arrived on stdin.
    pub fn from_wire(step: &str, body: &[u8]) -> Result<BootstrapRequest, ClusterError> {
        if !["check", "init"].contains(&step) {
            return Err(ClusterError::Invalid(format!(
                "unknown bootstrap step {step:?} (expected check or init)"
            )));
        }
        let mut fields: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| ClusterError::Invalid(format!("request is not a JSON object: {e}")))?;
        fields.insert("step".into(), Value::String(step.into()));
        serde_json::from_value(Value::Object(fields))
            .map_err(|e| ClusterError::Invalid(format!("bad {step} request: {e}")))
    }
}

impl BootstrapAnswer {
    pub fn to_wire(&self) -> Result<Vec<u8>, ClusterError> {
        match self {
            BootstrapAnswer::Checked(v) => encode("answer", v),
            BootstrapAnswer::Initialized(i) => encode("answer", i),
        }
    }

    /// The answer to `step` from the backup's stdout.
    pub fn from_wire(step: &str, body: &[u8]) -> Result<BootstrapAnswer, ClusterError> {
        let what = format!("answer to {step}");
        Ok(match step {
            "init" => BootstrapAnswer::Initialized(parse(&what, body)?),
            _ => BootstrapAnswer::Checked(parse(&what, body)?),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The peer

/// The backup, as the primary's actions reach it: one request, one answer.
pub trait Peer {
    fn call(&self, request: &ClusterRequest) -> Result<ClusterAnswer, ClusterError>;

    /// Sends a firmware image for the backup to check and install (see [`crate::upgrade`]).
    fn send_image(&self, header: &ImageHeader, image: &Path) -> Result<UploadAnswer, ClusterError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_of_earlier_versions_still_parse() {
        // Earlier primaries sent the fields only; the command names the action.
        let r = ClusterRequest::from_wire(
            RemoteAction::Validate,
            br#"{"interfaces":[{"name":"lan","address":"192.168.100.239"},{"name":"dmz"}]}"#,
        )
        .expect("validate");
        assert_eq!(
            r,
            ClusterRequest::Validate {
                interfaces: vec![
                    WantedIface {
                        name: "lan".into(),
                        address: Some(Ipv4Addr::new(192, 168, 100, 239)),
                    },
                    WantedIface {
                        name: "dmz".into(),
                        address: None,
                    },
                ],
            }
        );
        for (action, body) in [
            (RemoteAction::Enable, &b""[..]),
            (RemoteAction::Disable, &b"{}"[..]),
            (RemoteAction::Reset, &b" \n"[..]),
        ] {
            let r = ClusterRequest::from_wire(action, body).expect("unit");
            assert_eq!(r.action(), action);
        }
    }

    #[test]
    fn the_command_decides_the_action() {
        let sent = ClusterRequest::Enable.to_wire().expect("encode");
        let r = ClusterRequest::from_wire(RemoteAction::Disable, &sent).expect("decode");
        assert_eq!(r, ClusterRequest::Disable);
    }

    #[test]
    fn missing_fields_are_named() {
        let e = ClusterRequest::from_wire(RemoteAction::Validate, b"{}").expect_err("no ifaces");
        assert!(e.to_string().contains("interfaces"), "{e}");
        let e = ClusterRequest::from_wire(RemoteAction::Configure, b"[1]").expect_err("array");
        assert!(e.to_string().contains("not a JSON object"), "{e}");
    }

    #[test]
    fn answers_round_trip_in_the_old_layout() {
        let v = ClusterAnswer::Validated(Validation {
            configured: false,
            interfaces: vec![FoundIface {
                name: "lan".into(),
                device: "br-lan".into(),
                address: Some("192.168.100.239/24".parse().expect("cidr")),
            }],
        });
        let wire = v.to_wire().expect("encode");
        let json: Value = serde_json::from_slice(&wire).expect("json");
        assert_eq!(json["interfaces"][0]["device"], "br-lan");
        assert_eq!(json["interfaces"][0]["address"], "192.168.100.239/24");
        assert_eq!(json["configured"], false);
        assert_eq!(
            ClusterAnswer::from_wire(RemoteAction::Validate, &wire).expect("decode"),
            v
        );
        assert_eq!(ClusterAnswer::Done.to_wire().expect("encode"), b"{}");
        assert_eq!(
            ClusterAnswer::from_wire(RemoteAction::Configure, br#"{"configured":true}"#)
                .expect("decode"),
            ClusterAnswer::Configured { configured: true }
        );
    }
}
