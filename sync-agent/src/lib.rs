//! sync-agent

pub mod agent;
pub mod config;
pub mod transport;
