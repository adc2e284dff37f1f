//! Shard assignment over etcd (`keepsake serve --cluster etcd://HOST:PORT`).
//!
//! Keys, under `/keepsake/<store id>/`:
//! - `nodes/<node id>` = `{"url": ...}`, put under this server's lease (TTL `--cluster-lease-secs`,
//!   kept alive every third of it): a server is live while its key exists.
//! - `assignment` = `{"shards": [{"node", "generation", "from"} | null, ...]}`: who should serve
//!   each shard ([`super::assign`]). Only the live server with the smallest id proposes a new
//!   one, written by compare-and-swap on the key's revision, so one assignment holds at a time.
//! - `holders/<shard>` = `{"node", "generation", "released"}`: the server that holds (or last
//!   held) the shard. A server claims it with a transaction that also checks that neither the
//!   assignment nor the holder changed since it read them, and only when the holder released it,
//!   left (its lease expired), or is itself; it then takes the shard in the store and serves it.
//!   A server handing a shard over drains it, then marks it released.
//!
//! Every server reconciles every [`TICK`]: it claims and takes a shard assigned to it once free,
//! hands over a shard assigned elsewhere, and forwards requests for other servers' shards. So
//! two servers never serve one shard at once, however often the assignment changes meanwhile
//! (a shard moved on before its assignee claimed it is claimed from its actual holder). A server stops serving everything once its lease may have expired (its
//! last answered keep-alive was sent more than the TTL minus [`LEASE_MARGIN`] ago), before
//! etcd lets another server take its shards; the store's ownership fence stops its writes
//! whatever it believes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp,
};
use keepsake_log::Log;
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, timeout};
use tracing::{info, warn};

use super::assign::{Assigned, rebalance};
use super::{Cluster, Route};

/// How often a server reconciles with etcd.
pub const TICK: Duration = Duration::from_millis(200);
/// A server stops serving this long before its lease could expire.
pub const LEASE_MARGIN: Duration = Duration::from_millis(1500);
/// Longest wait for one etcd call: the loop goes on (and the lease check with it) when etcd
/// does not answer.
const CALL: Duration = Duration::from_secs(1);

/// What `--cluster` and its companions configure.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// etcd endpoints (`http://host:port`).
    pub endpoints: Vec<String>,
    /// This server's id.
    pub node: String,
    /// The base URL other servers forward to.
    pub advertise: String,
    /// The lease's time to live.
    pub lease: Duration,
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeRecord {
    url: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Holder {
    node: String,
    generation: u64,
    released: bool,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct AssignmentRecord {
    shards: Vec<Option<Assigned>>,
}

fn prefix(store_id: &str) -> String {
    format!("/keepsake/{store_id}/")
}

async fn call<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    timeout(CALL, f)
        .await
        .map_err(|_| anyhow!("etcd: {what}: no answer within {CALL:?}"))?
        .map_err(|e| anyhow!("etcd: {what}: {e}"))
}

/// What one read of the cluster's keys shows.
#[derive(Debug, Default)]
struct Snapshot {
    nodes: BTreeMap<String, String>,
    /// Each live server's lease id.
    leases: BTreeMap<String, i64>,
    assignment: AssignmentRecord,
    revision: i64,
    /// Each shard's holder and the revision its key was last written at.
    holders: HashMap<u32, (Holder, i64)>,
}

async fn snapshot(client: &mut Client, store_id: &str) -> Result<Snapshot> {
    let p = prefix(store_id);
    let all = call(
        "read the cluster",
        client.get(p.clone(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut snap = Snapshot::default();
    for kv in all.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        let Some(rest) = key.strip_prefix(&p) else {
            continue;
        };
        if let Some(node) = rest.strip_prefix("nodes/") {
            if let Ok(r) = serde_json::from_slice::<NodeRecord>(kv.value()) {
                snap.nodes.insert(node.to_string(), r.url);
                snap.leases.insert(node.to_string(), kv.lease());
            }
        } else if rest == "assignment" {
            snap.assignment = serde_json::from_slice(kv.value())
                .with_context(|| format!("etcd key {key} is not an assignment"))?;
            snap.revision = kv.mod_revision();
        } else if let Some(shard) = rest.strip_prefix("holders/")
            && let (Ok(shard), Ok(h)) = (shard.parse(), serde_json::from_slice(kv.value()))
        {
            snap.holders.insert(shard, (h, kv.mod_revision()));
        }
    }
    Ok(snap)
}

/// A server's membership: its lease, kept alive by its own task (so that a slow reconcile —
/// a hand-over draining a queue, a take reading a shard — never delays a keep-alive).
struct Membership {
    lease: i64,
    keeper: tokio::task::JoinHandle<()>,
    /// Set by the keep-alive task when etcd no longer knows the lease (or the stream broke).
    lost: Arc<AtomicBool>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Keeps `lease` alive every third of `ttl`. Each answered keep-alive moves the cluster's
/// serving deadline to its sending time + `ttl` - [`LEASE_MARGIN`]; one not answered moves
/// nothing (the deadline passes by itself), and its stream is dropped: an answer arriving late
/// on it would otherwise be taken for the next one's, and move the deadline past the lease. A
/// lease etcd no longer knows sets `lost`.
async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    cluster: Arc<Cluster>,
    lost: Arc<AtomicBool>,
) {
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        let sent = Instant::now();
        if stream.is_none() {
            match timeout(CALL, client.lease_keep_alive(lease)).await {
                Ok(Ok(s)) => stream = Some(s),
                Ok(Err(e)) => warn!(error = %e, "opening the keep-alive stream failed; will retry"),
                Err(_) => warn!("etcd did not answer opening a keep-alive stream"),
            }
        }
        if let Some((keeper, answers)) = stream.as_mut() {
            let answered = async {
                keeper.keep_alive().await?;
                answers.message().await
            };
            match timeout(CALL, answered).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    cluster.serve_until(Some(sent + ttl.saturating_sub(LEASE_MARGIN)));
                }
                Ok(Ok(_)) => {
                    warn!("etcd no longer knows this server's lease; registering again");
                    lost.store(true, Ordering::Release);
                    return;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "a keep-alive failed; opening a new stream");
                    stream = None;
                }
                Err(_) => {
                    warn!("etcd did not answer a keep-alive; opening a new stream");
                    stream = None;
                }
            }
        }
        tokio::time::sleep_until(sent + ttl / 3).await;
    }
}

/// One server's coordinator.
pub struct Coordinator {
    cfg: EtcdConfig,
    client: Client,
    store_id: String,
    shards: u32,
    cluster: Arc<Cluster>,
    log: Arc<Log>,
    member: Option<Membership>,
    leaving: Arc<AtomicBool>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("node", &self.cfg.node)
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Connects to etcd (without registering yet).
    pub async fn connect(cfg: EtcdConfig, cluster: Arc<Cluster>, log: Arc<Log>) -> Result<Self> {
        let client = timeout(
            Duration::from_secs(5),
            Client::connect(&cfg.endpoints, None),
        )
        .await
        .map_err(|_| anyhow!("etcd {:?} did not answer within 5 s", cfg.endpoints))?
        .with_context(|| format!("connect to etcd {:?}", cfg.endpoints))?;
        let store_id = log.descriptor().store_id.to_string();
        let shards = log.descriptor().shard_count;
        Ok(Self {
            cfg,
            client,
            store_id,
            shards,
            cluster,
            log,
            member: None,
            leaving: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Set to make [`Coordinator::run`] hand every shard over and leave.
    pub fn leaving(&self) -> Arc<AtomicBool> {
        self.leaving.clone()
    }

    async fn register(&mut self) -> Result<()> {
        let ttl = i64::try_from(self.cfg.lease.as_secs().max(2)).unwrap_or(5);
        let sent = Instant::now();
        let lease = call("grant a lease", self.client.lease_grant(ttl, None))
            .await?
            .id();
        let key = format!("{}nodes/{}", prefix(&self.store_id), self.cfg.node);
        let value = serde_json::to_vec(&NodeRecord {
            url: self.cfg.advertise.clone(),
        })?;
        call(
            "register",
            self.client
                .put(key, value, Some(PutOptions::new().with_lease(lease))),
        )
        .await?;
        self.cluster
            .serve_until(Some(sent + self.cfg.lease.saturating_sub(LEASE_MARGIN)));
        let lost = Arc::new(AtomicBool::new(false));
        self.member = Some(Membership {
            lease,
            keeper: tokio::spawn(keep_alive(
                self.client.clone(),
                lease,
                self.cfg.lease,
                self.cluster.clone(),
                lost.clone(),
            )),
            lost,
        });
        info!(node = %self.cfg.node, lease, ttl, "registered in the cluster");
        Ok(())
    }

    fn lease_safe(&self) -> bool {
        self.member.is_some() && self.cluster.lease_holds()
    }

    /// Stops serving every shard (503) and lets the log go of them.
    async fn stop_serving(&mut self) {
        for s in self.cluster.local_shards() {
            self.cluster.hand_over(&self.log, s).await;
        }
        for s in 0..self.shards {
            if !matches!(self.cluster.route(s), Route::Local(_)) {
                self.cluster.set(s, Route::Unavailable);
            }
        }
    }

    /// Runs until [`Coordinator::leaving`] is set, then hands every shard over, writes so, and
    /// gives up the lease.
    pub async fn run(mut self) {
        let mut was_safe = false;
        while !self.leaving.load(Ordering::Acquire) {
            if self
                .member
                .as_ref()
                .is_some_and(|m| m.lost.load(Ordering::Acquire))
            {
                self.member = None;
            }
            if self.member.is_none() {
                // Whatever was held under the old lease is let go first: the new lease must not
                // make stale routes servable again (another server may hold those shards now).
                self.stop_serving().await;
            }
            if self.member.is_none()
                && let Err(e) = self.register().await
            {
                warn!(node = %self.cfg.node, error = %format!("{e:#}"), "registering in the cluster failed; will retry");
            }
            let safe = self.lease_safe();
            if !safe {
                if was_safe {
                    warn!(node = %self.cfg.node, "this server's lease may expire: it stops serving until etcd answers");
                }
                self.stop_serving().await;
            } else if let Err(e) = self.reconcile().await {
                warn!(node = %self.cfg.node, error = %format!("{e:#}"), "reconciling with etcd failed; will retry");
            }
            was_safe = safe;
            tokio::time::sleep(TICK).await;
        }
        self.leave().await;
    }

    async fn reconcile(&mut self) -> Result<()> {
        let snap = snapshot(&mut self.client, &self.store_id).await?;
        if !snap.nodes.contains_key(&self.cfg.node) {
            // Our key expired while we could not say otherwise: register again.
            self.member = None;
            self.stop_serving().await;
            return Ok(());
        }
        let live: Vec<String> = snap.nodes.keys().cloned().collect();
        let current = &snap.assignment.shards;
        if live.first() == Some(&self.cfg.node) {
            let next = rebalance(current, &live, self.shards as usize);
            if &next != current {
                self.propose(&next, snap.revision).await?;
                // Acted on at the next tick, from what etcd then holds.
                return Ok(());
            }
        }
        for s in 0..self.shards {
            let Some(a) = current.get(s as usize).and_then(|a| a.as_ref()) else {
                self.cluster.set(s, Route::Unavailable);
                continue;
            };
            let here = matches!(self.cluster.route(s), Route::Local(_));
            let holder = snap.holders.get(&s);
            if a.node == self.cfg.node {
                if here && self.log.owned(s).is_some() {
                    continue;
                }
                self.cluster.set(s, Route::Unavailable);
                let free = holder.is_none_or(|(h, _)| {
                    h.node == self.cfg.node || h.released || !snap.nodes.contains_key(&h.node)
                });
                let claimed = free
                    && self
                        .claim(s, a.generation, snap.revision, holder.map_or(0, |h| h.1))
                        .await?;
                // A take that failed is said released, so that no server waits on it.
                if claimed && !self.cluster.take(&self.log, s, a.generation).await {
                    self.release_if_mine(s).await?;
                }
            } else {
                let mine = holder.is_some_and(|(h, _)| h.node == self.cfg.node && !h.released);
                if here || self.log.owned(s).is_some() || mine {
                    self.cluster.hand_over(&self.log, s).await;
                    self.release_if_mine(s).await?;
                }
                let route = match snap.nodes.get(&a.node) {
                    Some(url) => Route::Remote {
                        node: a.node.clone(),
                        url: url.clone(),
                    },
                    None => Route::Unavailable,
                };
                self.cluster.set(s, route);
            }
        }
        Ok(())
    }

    /// Claims `shard` as its holder, if neither the assignment nor the holder changed since
    /// they were read (revision 0: no holder yet).
    async fn claim(
        &mut self,
        shard: u32,
        generation: u64,
        assignment: i64,
        holder: i64,
    ) -> Result<bool> {
        let p = prefix(&self.store_id);
        let key = format!("{p}holders/{shard}");
        let value = serde_json::to_vec(&Holder {
            node: self.cfg.node.clone(),
            generation,
            released: false,
        })?;
        let txn = Txn::new()
            .when([
                Compare::mod_revision(format!("{p}assignment"), CompareOp::Equal, assignment),
                Compare::mod_revision(key.clone(), CompareOp::Equal, holder),
            ])
            .and_then([TxnOp::put(key, value, None)]);
        Ok(call("claim the shard", self.client.txn(txn))
            .await?
            .succeeded())
    }

    async fn propose(&mut self, next: &[Option<Assigned>], revision: i64) -> Result<()> {
        let key = format!("{}assignment", prefix(&self.store_id));
        let value = serde_json::to_vec(&AssignmentRecord {
            shards: next.to_vec(),
        })?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        let done = call("write the assignment", self.client.txn(txn)).await?;
        if done.succeeded() {
            info!(node = %self.cfg.node, "assignment updated");
        }
        Ok(())
    }

    /// Marks `shard` released, only while etcd still names this server its unreleased holder
    /// (a transaction on the key's revision): a server that lost its lease and whose shard
    /// another server claimed meanwhile never writes over that claim.
    async fn release_if_mine(&mut self, shard: u32) -> Result<()> {
        let key = format!("{}holders/{shard}", prefix(&self.store_id));
        let got = call(
            "read the shard's holder",
            self.client.get(key.clone(), None),
        )
        .await?;
        let Some(kv) = got.kvs().first() else {
            return Ok(());
        };
        let Ok(held) = serde_json::from_slice::<Holder>(kv.value()) else {
            return Ok(());
        };
        if held.node != self.cfg.node || held.released {
            return Ok(());
        }
        let value = serde_json::to_vec(&Holder {
            released: true,
            ..held
        })?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::put(key, value, None)]);
        if !call("say the shard was released", self.client.txn(txn))
            .await?
            .succeeded()
        {
            info!(
                shard,
                "another server claimed the shard meanwhile; nothing to release"
            );
        }
        Ok(())
    }

    /// Graceful hand-off (SIGTERM): every shard drained and released, said so in etcd, and the
    /// lease revoked, so the next owners take over at once rather than after the TTL.
    async fn leave(mut self) {
        for s in self.cluster.local_shards() {
            self.cluster.hand_over(&self.log, s).await;
            if let Err(e) = self.release_if_mine(s).await {
                warn!(shard = s, error = %format!("{e:#}"), "saying the shard was released failed; the next owner waits for the lease");
            }
        }
        if let Some(m) = self.member.take()
            && let Err(e) = call("revoke the lease", self.client.lease_revoke(m.lease)).await
        {
            warn!(error = %format!("{e:#}"), "revoking the lease failed; it expires by itself");
        }
        info!(node = %self.cfg.node, "left the cluster");
    }
}

/// `keepsake cluster status`: every store's servers, and each shard's server, generation and
/// state (serving, or moving: which server still holds it).
pub async fn status(endpoints: &[String]) -> Result<String> {
    let mut client = timeout(Duration::from_secs(5), Client::connect(endpoints, None))
        .await
        .map_err(|_| anyhow!("etcd {endpoints:?} did not answer within 5 s"))??;
    let all = call(
        "read the cluster",
        client.get("/keepsake/", Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut stores: BTreeMap<String, ()> = BTreeMap::new();
    for kv in all.kvs() {
        if let Ok(k) = kv.key_str()
            && let Some(id) = k
                .strip_prefix("/keepsake/")
                .and_then(|r| r.split('/').next())
        {
            stores.insert(id.to_string(), ());
        }
    }
    let mut out = String::new();
    for id in stores.keys() {
        let snap = snapshot(&mut client, id).await?;
        out.push_str(&format!("store {id}\n  servers:\n"));
        for (node, url) in &snap.nodes {
            let owned = snap
                .assignment
                .shards
                .iter()
                .flatten()
                .filter(|a| &a.node == node)
                .count();
            // How long since its last keep-alive: the lease's TTL less what is left of it.
            let lag = match snap.leases.get(node) {
                Some(id) => {
                    match call("read a lease", client.lease_time_to_live(*id, None)).await {
                        Ok(l) if l.ttl() >= 0 => format!(
                            "last keep-alive {}s ago (lease {}s)",
                            (l.granted_ttl() - l.ttl()).max(0),
                            l.granted_ttl()
                        ),
                        _ => "lease expired".to_string(),
                    }
                }
                None => "no lease".to_string(),
            };
            out.push_str(&format!("    {node}  {url}  {owned} shards  {lag}\n"));
        }
        out.push_str("  shards:\n");
        for (s, a) in snap.assignment.shards.iter().enumerate() {
            match a {
                Some(a) => {
                    let holder = snap.holders.get(&(s as u32)).map(|(h, _)| h);
                    let state = match holder {
                        _ if !snap.nodes.contains_key(&a.node) => "server gone: moving".to_string(),
                        Some(h) if h.node == a.node && !h.released => "serving".to_string(),
                        Some(h) if !h.released && snap.nodes.contains_key(&h.node) => {
                            format!("moving: {} hands it over", h.node)
                        }
                        _ => "moving: being taken".to_string(),
                    };
                    out.push_str(&format!(
                        "    {s:>4}  {}  generation {}  {state}\n",
                        a.node, a.generation
                    ));
                }
                None => out.push_str(&format!("    {s:>4}  unassigned\n")),
            }
        }
    }
    if stores.is_empty() {
        out.push_str("no Keepsake servers registered in this etcd\n");
    }
    Ok(out)
}
