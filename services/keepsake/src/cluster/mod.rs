//! Many servers on one store: which server serves each shard, and getting every request to it.
//!
//! - **Who should serve** a shard is decided by a coordinator: etcd (`--cluster`,
//!   [`etcd`]), where servers register under a lease and the assignment ([`assign`]) is one
//!   key written by compare-and-swap; or a fixed list (`--own-shards`, for deployments that
//!   assign shards themselves). Without either, this process serves every shard.
//! - **Who can write** is decided in the store: a server takes a shard with
//!   [`keepsake_log::Log::acquire`] (the ownership fence) before serving it, so a server that
//!   lost a shard — paused, partitioned, slow — never acknowledges another batch of it.
//! - **Routing** (`api/forward.rs`): any server answers any request. One for a user whose shard
//!   another server serves is forwarded there (once: a forwarded request is never forwarded
//!   again); while a shard moves, the answer is 503 `unavailable` with `Retry-After`, never a
//!   stale read.
//!
//! Invariants:
//! - A shard is [`Route::Local`] only between a successful `acquire` and the start of its
//!   release, and only while this server's etcd lease is surely alive (its last keep-alive
//!   answered less than the lease's TTL ago, minus a margin): a server whose lease may have
//!   expired stops serving before another can take its shards.
//! - A server takes a shard from another only once that one released it (wrote so in etcd
//!   after draining) or left (its lease expired): reads never overlap between two owners.

pub mod assign;
pub mod etcd;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use keepsake_log::Log;
use tracing::{info, warn};

/// The header a request forwarded by another server carries: that server's node id. Such a
/// request is never forwarded again.
pub const FORWARDED_BY: &str = "x-keepsake-forwarded-by";

/// Where requests for one shard go now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Served here, under this owner generation.
    Local(u64),
    /// Served by another server, at this base URL.
    Remote {
        /// Its node id.
        node: String,
        /// Its advertised base URL.
        url: String,
    },
    /// Moving, or no server serves it now: 503 with `Retry-After`.
    Unavailable,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Requests forwarded to another server.
    pub forwards: AtomicU64,
    /// Forwards that failed (the other server did not answer): answered 503.
    pub forward_errors: AtomicU64,
    /// Requests answered 503 because their shard was moving.
    pub moving: AtomicU64,
    /// Shards this server took.
    pub acquired: AtomicU64,
    /// Shards this server handed over.
    pub released: AtomicU64,
}

/// Work done after a shard is taken and before it is served (the device registry's refresh,
/// so that a revocation made through the previous owner holds here at once).
pub type BeforeServing = Arc<
    dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
>;

/// This server's place in a cluster: its id and the route of every shard.
pub struct Cluster {
    /// `--node-id`.
    pub node: String,
    routes: RwLock<Vec<Route>>,
    /// Counters.
    pub stats: ClusterStats,
    before_serving: std::sync::OnceLock<BeforeServing>,
    /// With a lease (etcd): nothing is served here from this moment on, unless a keep-alive
    /// moves it (`None`: no lease, static ownership).
    serving_until: RwLock<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("routes", &self.routes())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A member that serves nothing yet (its shard count is set once the store is open).
    pub fn new(node: String) -> Arc<Self> {
        Arc::new(Self {
            node,
            routes: RwLock::new(Vec::new()),
            stats: ClusterStats::default(),
            before_serving: std::sync::OnceLock::new(),
            serving_until: RwLock::new(None),
        })
    }

    /// Sets what runs after a shard is taken and before it is served.
    pub fn before_serving(&self, hook: BeforeServing) {
        let _ = self.before_serving.set(hook);
    }

    /// Sizes the route table for the store's shards (every one unavailable until routed).
    pub fn size(&self, shards: u32) {
        if let Ok(mut r) = self.routes.write() {
            r.resize(shards as usize, Route::Unavailable);
        }
    }

    /// Where a request for `shard` goes. A shard served here is unavailable once the lease may
    /// have expired, whatever the coordinator's loop has done yet.
    pub fn route(&self, shard: u32) -> Route {
        match self
            .routes
            .read()
            .ok()
            .and_then(|r| r.get(shard as usize).cloned())
        {
            Some(Route::Local(_)) if !self.lease_holds() => Route::Unavailable,
            Some(route) => route,
            None => Route::Unavailable,
        }
    }

    /// Moves the serving deadline (a keep-alive was answered), or sets none (no lease).
    pub(crate) fn serve_until(&self, deadline: Option<tokio::time::Instant>) {
        if let Ok(mut d) = self.serving_until.write() {
            *d = deadline;
        }
    }

    /// False once this server's lease may have expired.
    pub fn lease_holds(&self) -> bool {
        self.serving_until
            .read()
            .map(|d| d.is_none_or(|d| tokio::time::Instant::now() < d))
            .unwrap_or(false)
    }

    /// Every shard's route (`/metrics`, fan-out), as [`Cluster::route`] gives it.
    pub fn routes(&self) -> Vec<Route> {
        let n = self.routes.read().map(|r| r.len()).unwrap_or(0);
        (0..n as u32).map(|s| self.route(s)).collect()
    }

    pub(crate) fn set(&self, shard: u32, route: Route) {
        if let Ok(mut r) = self.routes.write()
            && let Some(slot) = r.get_mut(shard as usize)
        {
            *slot = route;
        }
    }

    /// Shards this server holds (served, or held while its lease is in doubt).
    pub fn local_shards(&self) -> Vec<u32> {
        // The table as set (not [`Cluster::route`]): what must be handed over, served or not.
        (0u32..)
            .zip(self.routes.read().map(|r| r.clone()).unwrap_or_default())
            .filter(|(_, r)| matches!(r, Route::Local(_)))
            .map(|(s, _)| s)
            .collect()
    }

    /// Takes `shard` in the store and serves it.
    pub(crate) async fn take(&self, log: &Log, shard: u32, assignment: u64) -> bool {
        match log.acquire(shard, assignment).await {
            Ok(generation) => {
                if let Some(hook) = self.before_serving.get()
                    && let Err(e) = hook().await
                {
                    warn!(shard, error = %e, "not serving the shard: the work before serving it failed; will retry");
                    log.release(shard).await;
                    return false;
                }
                self.set(shard, Route::Local(generation));
                self.stats.acquired.fetch_add(1, Ordering::Relaxed);
                info!(shard, generation, assignment, node = %self.node, "serving the shard");
                true
            }
            Err(e) => {
                warn!(shard, error = %e, "taking the shard failed; will retry");
                false
            }
        }
    }

    /// Stops serving `shard` (503 from now on) and hands it over: the requests already in the
    /// writer's queue are answered first.
    pub(crate) async fn hand_over(&self, log: &Log, shard: u32) {
        self.set(shard, Route::Unavailable);
        log.release(shard).await;
        self.stats.released.fetch_add(1, Ordering::Relaxed);
        info!(shard, node = %self.node, "handed the shard over");
    }
}

impl Cluster {
    /// Lets go of every shard held here whose ownership fence shows a newer owner (static
    /// ownership: another instance took it, as in a rolling update that starts the new one
    /// first). One HEAD per held shard per call; writes were refused already (the fence), and
    /// this stops reads too.
    pub async fn check_fences(&self, log: &Log) {
        let held: Vec<(u32, u64)> = (0u32..)
            .zip(self.routes.read().map(|r| r.clone()).unwrap_or_default())
            .filter_map(|(s, r)| match r {
                Route::Local(g) => Some((s, g)),
                _ => None,
            })
            .collect();
        for (shard, generation) in held {
            match keepsake_log::owner::superseded(log.store().as_ref(), shard, generation).await {
                Ok(true) => {
                    warn!(
                        shard,
                        generation, "another server took the shard; letting it go"
                    );
                    self.hand_over(log, shard).await;
                }
                Ok(false) => {}
                Err(e) => warn!(shard, error = %e, "checking the shard's ownership fence failed"),
            }
        }
    }
}

/// Static ownership (`--own-shards`): takes the listed shards at start; every other shard
/// answers 503 here (the deployment routes its users to the server that owns it).
pub async fn serve_static(cluster: &Cluster, log: &Log, shards: &[u32]) -> anyhow::Result<()> {
    let count = log.descriptor().shard_count;
    if let Some(s) = shards.iter().find(|s| **s >= count) {
        anyhow::bail!(
            "--own-shards names shard {s}, but the store has {count} shards (0-{})",
            count - 1
        );
    }
    for s in shards {
        // Retried: the store may be briefly unavailable at start.
        let mut tries = 0;
        while !cluster.take(log, *s, 0).await {
            tries += 1;
            if tries >= 10 {
                anyhow::bail!("could not take shard {s} in the store");
            }
            tokio::time::sleep(std::time::Duration::from_millis(200 * tries)).await;
        }
    }
    Ok(())
}
