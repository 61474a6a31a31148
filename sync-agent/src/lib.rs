//! sync-agent
