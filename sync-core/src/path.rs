//! Paths that came from a peer or a manifest, checked once.
//!
//! Every path in a manifest is relative to the root (`etc/config/firewall` for the router's
//! `/etc/config/firewall`). A `RelPath` can only be built through `RelPath::new`, which refuses
//! anything that could step out of the tree it is joined to: absolute paths, `..`, `.`, empty
//! components, NUL. Symlinks on the way are the job of `fsx`, which never follows them.

use crate::bounded::{head, refuse};
pub use crate::limits::{MAX_DEPTH, MAX_NAME_LEN, MAX_PATH_LEN};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Names reserved for ha-sync's own state inside a staging tree.
pub const RESERVED_TOP: &str = ".ha-sync";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {0:?} is absolute")]
    Absolute(String),
    #[error("path {0:?} has a '..' component")]
    DotDot(String),
    #[error("path {0:?} has an empty or '.' component")]
    EmptyComponent(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} is not absolute")]
    NotAbsolute(String),
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} is longer than the limit of {MAX_PATH_LEN} bytes")]
    TooLong(String),
    #[error("path {0:?} is deeper than the limit of {MAX_DEPTH} components")]
    TooDeep(String),
    #[error("path {0:?} has a component longer than the limit of {MAX_NAME_LEN} bytes")]
    NameTooLong(String),
    #[error("path {0:?} is reserved for ha-sync's own state")]
    Reserved(String),
}

/// A validated relative path with `/` separators.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RelPath(String);

impl RelPath {
    pub fn new(s: impl Into<String>) -> Result<RelPath, PathError> {
        let s = s.into();
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        // Errors quote at most the head of a path: a peer's may be kilobytes long.
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(head(&s)));
        }
        if s.contains('\0') {
            return Err(PathError::Nul(head(&s)));
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute(head(&s)));
        }
        let mut depth = 0;
        for c in s.split('/') {
            depth += 1;
            match c {
                ".." => return Err(PathError::DotDot(head(&s))),
                "" | "." => return Err(PathError::EmptyComponent(head(&s))),
                c if c.len() > MAX_NAME_LEN => return Err(PathError::NameTooLong(head(&s))),
                _ => {}
            }
        }
        if depth > MAX_DEPTH {
            return Err(PathError::TooDeep(head(&s)));
        }
        if s.split('/').next() == Some(RESERVED_TOP) {
            return Err(PathError::Reserved(head(&s)));
        }
        Ok(RelPath(s))
    }

    /// From a router path such as `/etc/config/firewall`.
    pub fn from_abs(abs: &str) -> Result<RelPath, PathError> {
        match abs.strip_prefix('/') {
            Some(rest) => RelPath::new(rest.trim_end_matches('/')),
            None => Err(PathError::NotAbsolute(abs.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The router path: `/` + self.
    pub fn to_abs(&self) -> String {
        format!("/{}", self.0)
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Parent directory, `None` at top level.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rfind('/').map(|i| RelPath(self.0[..i].to_string()))
    }

    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        RelPath::new(format!("{}/{}", self.0, name))
    }
}

impl<'de> Deserialize<'de> for RelPath {
    // Validation on the way in: a peer cannot smuggle a bad path past the type. The length
    // is checked on the borrowed input, before a huge path is copied.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RelPath;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a relative path")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RelPath, E> {
                if s.len() > MAX_PATH_LEN {
                    return Err(refuse(PathError::TooLong(head(s)).to_string()));
                }
                RelPath::new(s).map_err(|e| refuse(e.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for ok in [
            "etc",
            "etc/config/firewall",
            "etc/a b/c",
            "tmp/dhcp.leases",
            "etc/..x",
        ] {
            assert_eq!(RelPath::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_paths_that_could_escape() {
        assert_eq!(RelPath::new("../x"), Err(PathError::DotDot("../x".into())));
        assert_eq!(
            RelPath::new("a/../../b"),
            Err(PathError::DotDot("a/../../b".into()))
        );
        assert_eq!(
            RelPath::new("/etc/x"),
            Err(PathError::Absolute("/etc/x".into()))
        );
        assert_eq!(RelPath::new("a\0b"), Err(PathError::Nul("a\0b".into())));
        assert!(matches!(
            RelPath::new("a//b"),
            Err(PathError::EmptyComponent(_))
        ));
        assert!(matches!(
            RelPath::new("a/./b"),
            Err(PathError::EmptyComponent(_))
        ));
        assert!(matches!(
            RelPath::new("a/"),
            Err(PathError::EmptyComponent(_))
        ));
        assert!(matches!(RelPath::new(""), Err(PathError::Empty)));
        assert!(matches!(
            RelPath::new(".ha-sync/manifest"),
            Err(PathError::Reserved(_))
        ));
        assert!(matches!(
            RelPath::new("x".repeat(5000)),
            Err(PathError::TooLong(_))
        ));
        assert!(matches!(
            RelPath::new("x".repeat(256)),
            Err(PathError::NameTooLong(_))
        ));
        assert!(RelPath::new("x".repeat(255)).is_ok());
        assert!(RelPath::new(vec!["d"; MAX_DEPTH].join("/")).is_ok());
        assert!(matches!(
            RelPath::new(vec!["d"; MAX_DEPTH + 1].join("/")),
            Err(PathError::TooDeep(_))
        ));
    }

    #[test]
    fn deserializing_validates() {
        let bytes = postcard::to_allocvec(&"../../etc/shadow").unwrap();
        let err = postcard::from_bytes::<RelPath>(&bytes).unwrap_err();
        assert!(matches!(err, postcard::Error::SerdeDeCustom));
        // The rule it broke survives postcard (issue 14, finding 8).
        let err = postcard::from_bytes::<RelPath>(&bytes).unwrap_err();
        assert_eq!(
            crate::bounded::explain(err),
            "path \"../../etc/shadow\" has a '..' component"
        );
    }

    #[test]
    fn prefix_is_component_wise() {
        let a = RelPath::new("etc/ha").unwrap();
        assert!(RelPath::new("etc/ha/x").unwrap().starts_with(&a));
        assert!(RelPath::new("etc/ha").unwrap().starts_with(&a));
        assert!(!RelPath::new("etc/hax").unwrap().starts_with(&a));
        assert_eq!(RelPath::from_abs("/etc/ha/").unwrap(), a);
        assert_eq!(a.parent().unwrap().as_str(), "etc");
        assert_eq!(a.to_abs(), "/etc/ha");
    }
}
