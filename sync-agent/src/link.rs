//! The daemon's link to the backup: one SSH connection kept between syncs, the generation
//! the backup committed on it, and its renewal after a session that sent much.

use crate::transport::{ClientConfig, Connection, TransportError};
use std::sync::Arc;
use sync_core::manifest::Hash;

/// A session that sent at least this much is followed by a new connection (see
/// [`Link::recycle_if_due`]).
pub(crate) const RECYCLE_AFTER: u64 = 128 << 10;

pub(crate) struct Link {
    client: ClientConfig,
    conn: Option<Arc<Connection>>,
    /// When the current connection was made (epoch seconds).
    since: Option<u64>,
    /// The generation the backup committed on the current connection.
    confirmed: Option<Hash>,
    /// The last session sent much: open a new connection once the sync is recorded.
    recycle: bool,
}

impl Link {
    pub(crate) fn new(client: ClientConfig) -> Link {
        Link {
            client,
            conn: None,
            since: None,
            confirmed: None,
            recycle: false,
        }
    }

    /// The connection, as it is (for waiting on its end).
    pub(crate) fn current(&self) -> Option<Arc<Connection>> {
        self.conn.clone()
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Since when the live connection is up.
    pub(crate) fn connected_since(&self) -> Option<u64> {
        self.since.filter(|_| self.is_alive())
    }

    /// The generation the backup committed on this connection, if known.
    pub(crate) fn confirmed(&self) -> Option<Hash> {
        self.confirmed
    }

    pub(crate) fn set_confirmed(&mut self, g: Option<Hash>) {
        self.confirmed = g;
    }

    /// The live connection, or a new one.
    pub(crate) async fn get(&mut self) -> Result<Arc<Connection>, TransportError> {
        if let Some(c) = self.conn.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        self.drop_now();
        let c = Arc::new(Connection::open(&self.client).await?);
        tracing::info!("connected to {}", self.client.peer);
        self.conn = Some(c.clone());
        self.since = Some(crate::status::epoch_now());
        Ok(c)
    }

    /// Drops the connection (said goodbye to in the background).
    pub(crate) fn drop_now(&mut self) {
        self.confirmed = None;
        self.since = None;
        if let Some(c) = self.conn.take() {
            tokio::spawn(async move {
                if let Ok(c) = Arc::try_unwrap(c) {
                    c.disconnect().await;
                }
            });
        }
    }

    /// A session sent `bytes`: a large one asks for a new connection afterwards.
    pub(crate) fn sent(&mut self, bytes: u64) {
        self.recycle = bytes >= RECYCLE_AFTER;
    }

    /// Replaces the connection after a session that sent much. russh keeps its packet
    /// buffers at the largest size a connection ever needed (its write buffer grows to a
    /// whole batch of queued packets, ~1 MiB after a full sync) until the connection ends:
    /// a new one gives that memory back. Opened at once, so the next sync finds it ready;
    /// if that fails, the next sync connects (and reports the error) as usual.
    pub(crate) async fn recycle_if_due(&mut self) {
        if !std::mem::take(&mut self.recycle) {
            return;
        }
        let Some(old) = self.conn.take() else {
            return;
        };
        self.confirmed = None;
        self.since = None;
        if let Ok(old) = Arc::try_unwrap(old) {
            old.disconnect().await;
        }
        if let Err(e) = self.get().await {
            tracing::debug!("reconnecting after a large sync: {e}");
        }
    }
}
