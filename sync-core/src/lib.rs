#![deny(unreachable_pub)]
//! ha-sync engine: everything a sync does except the network.
//!
//! Synchronous and free of tokio: the agents drive it over any byte stream.

pub mod attic;
mod bounded;
pub mod clock;
pub mod delta;
pub mod fault;
pub mod fsx;
pub mod keepalived;
pub mod limits;
pub mod local;
pub mod manifest;
pub mod node;
pub mod path;
pub mod prepare;
pub mod pull;
pub mod restore_list;
pub mod runner;
pub mod sample;
mod scan;
pub mod session;
pub mod staging;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod uci;
mod uci_merge;
pub mod wire;

// The types most callers need, at the crate root.
pub use manifest::{Entry, Hash, Kind, Manifest};
pub use node::{Node, Role, VrrpState};
pub use path::RelPath;
pub use runner::{Cmd, Runner};
pub use session::SyncError;
// Modules no other crate needs whole: what it does use, here.
pub use scan::{ScanError, ScanStats, Scanner, StatCache};
pub use uci_merge::merge3_text;
