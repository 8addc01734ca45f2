//! What the operations surface may see of the runtime, and all it may see:
//! the metrics, the health the stream thread publishes, the stores of the
//! active partitions (read-only, for `GET /workflows/{id}`), and the
//! shutdown flag. The stream thread writes it; the HTTP side only reads it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::state::Store;

pub struct View {
    pub metrics: Arc<Metrics>,
    /// Set by the binary on SIGTERM or SIGINT; the stream thread stops when it sees it.
    pub shutdown: Arc<AtomicBool>,
    health: Mutex<Health>,
    /// The stores of the active partitions.
    stores: RwLock<HashMap<i32, Arc<Store>>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    pub in_group: bool,
    pub home_partitions: usize,
    pub assigned: Vec<i32>,
    pub restoring: Vec<i32>,
    /// Partitions stopped because their state store failed, and why.
    pub stopped: BTreeMap<i32, String>,
    pub failure: Option<String>,
    /// Set while a partition rewound after a failed commit cannot seek back: why.
    pub seeking: Option<String>,
    /// Set while the Kafka cluster cannot be reached: why.
    pub unreachable: Option<String>,
}

impl View {
    pub fn new(metrics: Arc<Metrics>) -> View {
        View {
            metrics,
            shutdown: Arc::new(AtomicBool::new(false)),
            health: Mutex::new(Health::default()),
            stores: RwLock::new(HashMap::new()),
        }
    }

    pub fn health(&self) -> Health {
        self.health.lock().expect("health lock").clone()
    }

    /// Changes the health as the stream thread sees it.
    pub fn update_health(&self, change: impl FnOnce(&mut Health)) {
        change(&mut self.health.lock().expect("health lock"));
    }

    /// Records why the Kafka cluster cannot be reached (`None`: it can), and logs the change.
    pub fn set_unreachable(&self, why: Option<String>) {
        let mut h = self.health.lock().expect("health lock");
        if h.unreachable.is_some() != why.is_some() {
            match &why {
                Some(why) => warn!(reason = %why, "the Kafka cluster is unreachable; librdkafka keeps retrying"),
                None => info!("the Kafka cluster is reachable again"),
            }
        }
        h.unreachable = why;
    }

    /// Shows an active partition's store.
    pub fn show_store(&self, partition: i32, store: Arc<Store>) {
        self.stores.write().expect("stores lock").insert(partition, store);
    }

    /// Stops showing a partition's store (revoked, stopped or shut down).
    pub fn hide_store(&self, partition: i32) {
        self.stores.write().expect("stores lock").remove(&partition);
    }

    pub fn hide_all_stores(&self) {
        self.stores.write().expect("stores lock").clear();
    }

    /// The stores shown now, to read outside the lock.
    pub fn stores(&self) -> Vec<(i32, Arc<Store>)> {
        self.stores.read().expect("stores lock").iter().map(|(p, s)| (*p, Arc::clone(s))).collect()
    }

    pub fn shows_store(&self, partition: i32) -> bool {
        self.stores.read().expect("stores lock").contains_key(&partition)
    }
}
