//! Placeholder for the failover client (being written separately): the same API, doing nothing, so the UI
//! builds and runs. It is replaced wholesale at merge time.

// The placeholder constructs none of the events; the real client does.
#[allow(dead_code)]
pub mod types;
pub use types::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// A cheap cloneable handle. The placeholder keeps the event sender alive so that the UI's receiver stays
/// open (a closed channel would look like a dead client) but never sends on it.
#[derive(Clone)]
pub struct Client {
    _events: Arc<UnboundedSender<ClientEvent>>,
    next_local: Arc<AtomicU64>,
}

impl Client {
    pub fn start(servers: Vec<String>) -> (Client, UnboundedReceiver<ClientEvent>) {
        let _ = servers;
        let (tx, rx) = unbounded_channel();
        let client = Client {
            _events: Arc::new(tx),
            next_local: Arc::new(AtomicU64::new(1)),
        };
        (client, rx)
    }
    pub fn create_account(&self, username: String, password: String) {
        let _ = (username, password);
    }
    pub fn login(&self, username: String, password: String) {
        let _ = (username, password);
    }
    pub fn logout(&self) {}
    pub fn delete_account(&self, password: String) {
        let _ = password;
    }
    pub fn send(&self, to: String, body: String) -> LocalId {
        let _ = (to, body);
        LocalId(format!(
            "placeholder-{}",
            self.next_local.fetch_add(1, Ordering::Relaxed)
        ))
    }
    pub fn retry(&self, local_id: LocalId) {
        let _ = local_id;
    }
    pub fn load_conversations(&self) {}
    pub fn load_history(&self, peer: String, before_id: u64) {
        let _ = (peer, before_id);
    }
    pub fn search_accounts(&self, pattern: String, page_token: String) {
        let _ = (pattern, page_token);
    }
    pub fn mark_read(&self, peer: String, up_to_id: u64) {
        let _ = (peer, up_to_id);
    }
    pub fn delete_messages(&self, ids: Vec<u64>) {
        let _ = ids;
    }
}
