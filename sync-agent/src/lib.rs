#![deny(unreachable_pub)]
//! The networked half of ha-sync: the agents over SSH (russh), the primary's daemon, status
//! and alerts.
//!
//! - [`backup`]: the backup agent assembled (`serve`); [`agent`]: its sync handler and the
//!   primary's one-shot `now`; [`daemon`]: the primary's `watch`.
//! - [`hook`]: keepalived's events on either node, with their alerts.
//! - [`transport`]: the SSH server and client; [`control`]: the daemon's control socket.

pub mod agent;
pub mod alerts;
pub mod backup;
pub mod control;
pub mod daemon;
pub mod drift;
mod gate;
pub mod hook;
mod link;
pub mod pull;
mod record;
mod schedule;
pub mod status;
pub mod transport;
pub mod triggers;

// The front doors: the primary's daemon and one sync, the backup's agent, the transport.
pub use agent::{now, NowError, NowOptions};
pub use daemon::{Daemon, DaemonConfig};
pub use transport::{ClientConfig, Connection, Server};
