//! ha-sync engine: everything a sync does except the network.
//!
//! Synchronous and free of tokio: the agents drive it over any byte stream.

pub mod fsx;
pub mod manifest;
pub mod path;
pub mod runner;
pub mod delta;
pub mod wire;
pub mod scan;
pub mod apply;
pub mod uci;
pub mod restore_list;
pub mod session;
pub mod local;
pub mod sample;
