//! sync-agent

pub mod agent;
pub mod alerts;
pub mod config;
pub mod control;
pub mod daemon;
pub mod status;
pub mod transport;
pub mod triggers;
