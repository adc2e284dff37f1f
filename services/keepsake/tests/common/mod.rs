//! The real router on 127.0.0.1:0 over a store that fails or stalls on demand, in process.
#![allow(dead_code)] // each test file uses part of it

use std::sync::{Arc, OnceLock};

use keepsake::api::{AppState, Limits, Ready, router};
use keepsake::auth::{SigningKey, TokenKeys};
use keepsake::devices::Registry;
use keepsake::metrics::Metrics;
use keepsake_log::{Log, LogConfig};
use keepsake_model::{DeviceId, IdGenerator, RandomIds, SystemClock, UserId};
use keepsake_store::faults::FaultyStore;
use keepsake_store::{InstrumentedStore, StoreStats};
use object_store::ObjectStore;
use object_store::memory::InMemory;

/// The operator token of [`serve`]'s server.
pub const OPERATOR: &str = "operator-token-for-tests";

/// Serves a fresh one-shard memory store behind a [`FaultyStore`] (under the request counter a
/// server puts over its store, as `open_store` does): the base URL, the fault switch, the log,
/// a device token, and its user.
pub async fn serve(cfg: LogConfig) -> (String, Arc<FaultyStore>, Arc<Log>, String, UserId) {
    let faulty = FaultyStore::new(Arc::new(InMemory::new()));
    let stats = Arc::new(StoreStats::default());
    let store: Arc<dyn ObjectStore> =
        Arc::new(InstrumentedStore::new(faulty.clone(), stats.clone()));
    let log = Arc::new(
        Log::open(
            store.clone(),
            Some(1),
            cfg,
            Arc::new(SystemClock),
            Arc::new(RandomIds),
        )
        .await
        .expect("log"),
    );
    let (state, token, user) = unready_state_with(Metrics::with_store(stats));
    let registry = Registry::open(store, keepsake_model::Clock::now(&SystemClock))
        .await
        .expect("registry");
    let fleet = keepsake::fleet::Fleet::new(log.clone(), Arc::new(SystemClock), 4, 0);
    state
        .ready
        .set(Ready {
            log: log.clone(),
            registry,
            fleet,
        })
        .expect("set once");
    (listen(state).await, faulty, log, token, user)
}

/// The server's state before its log has opened (what a starting server serves while it
/// recovers), with a device token and its user.
pub fn unready_state() -> (Arc<AppState>, String, UserId) {
    unready_state_with(Metrics::default())
}

/// [`unready_state`] with these metrics.
pub fn unready_state_with(metrics: Metrics) -> (Arc<AppState>, String, UserId) {
    let keys = TokenKeys::new(vec![SigningKey::new("k", vec![7; 32]).expect("key")]).expect("keys");
    let user = UserId(RandomIds.random());
    let token = keys.sign(user, DeviceId(RandomIds.random()));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    // Never shut down: the server lives as long as the test.
    std::mem::forget(stop);
    let state = Arc::new(AppState {
        ready: OnceLock::new(),
        keys,
        operator_token: OPERATOR.into(),
        limits: Limits::default(),
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        metrics,
        shutdown: stop_rx,
        mass_delete: keepsake_model::MassDeleteGuard::default(),
        delete_guard: keepsake::delete_guard::DeleteGuard::default(),
        cluster: None,
    });
    (state, token, user)
}

/// Serves the real router over `state` on 127.0.0.1:0; returns its base URL.
pub async fn listen(state: Arc<AppState>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        async move { axum::serve(listener, router(state, keepsake::dav::router())).await },
    );
    format!("http://{addr}")
}
