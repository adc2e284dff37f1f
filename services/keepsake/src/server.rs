//! Running the server: open the store, bind, recover, serve, shut down cleanly.
//!
//! Start-up order: the listener is bound first, so `/healthz` answers during recovery and
//! `/readyz` (and every data route, with 503) says when the log is open. On SIGTERM or SIGINT the
//! server stops accepting connections, lets in-flight requests finish (their commits are
//! answered), ends long polls early, and then drains every shard writer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use keepsake_log::{Log, LogConfig, LogError};
use keepsake_model::{Clock, IdGenerator, RandomIds, SystemClock};
use keepsake_store::{open_store_opts, read_descriptor};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::api::forward;
use crate::api::{self, AppState, Limits, Ready};
use crate::auth::{SigningKey, TokenKeys};
use crate::cluster::Cluster;
use crate::config::{AuthArgs, FleetArgs, Membership, StoreArgs};
use crate::devices::Registry;
use crate::metrics::Metrics;

/// Everything `keepsake serve` is configured with: one value per concern, each built once from
/// its flags ([`crate::config`]).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The store and its retry policy.
    pub store: StoreArgs,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The operator token, device-token keys, the revocation refresh.
    pub auth: AuthArgs,
    /// Shards of a new store (an existing store keeps its own; a different value refuses).
    pub shards: Option<u32>,
    /// The log's configuration; its `view_memory_bytes` and `footer_memory_bytes` are the
    /// whole server's (divided among
    /// the shards at start).
    pub log: LogConfig,
    /// Request limits.
    pub limits: Limits,
    /// Fleet restores.
    pub fleet: FleetArgs,
    /// Alone, or which shards in a cluster.
    pub membership: Membership,
    /// Resident memory beyond `log.view_memory_bytes` past which the views give way
    /// ([`crate::resident`]).
    pub memory_overhead_bytes: u64,
    /// Over that limit, return the allocator's dirty pages to the system before the views
    /// give way (`--allocator-purge-over-limit`).
    pub purge_over_limit: bool,
    /// While over it, the views give way by every reading's excess added up, not the last
    /// one's alone (`--memory-give-way-added-up`).
    pub give_way_added_up: bool,
}

/// Shards a new store gets when none are configured.
pub const DEFAULT_SHARDS: u32 = 4;

fn random_secret(ids: &dyn IdGenerator) -> Vec<u8> {
    // Two v4 UUIDs from the OS's CSPRNG: 244 random bits.
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(ids.random().as_bytes());
    out.extend_from_slice(ids.random().as_bytes());
    out
}

/// Reads a secret file, or creates it (owner-readable only) with `make()`.
fn secret_file(path: &Path, make: impl FnOnce() -> String) -> Result<(String, bool)> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Ok(text) = std::fs::read_to_string(path) {
        return Ok((text.trim().to_string(), false));
    }
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    let value = make();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    writeln!(f, "{value}")?;
    f.sync_all()?;
    Ok((value, true))
}

/// The operator token and token keys: from configuration, or for the embedded default
/// (a local store with none configured) generated once into `<data>/.secrets/`.
fn secrets(
    cfg: &ServerConfig,
    local_dir: Option<&Path>,
    ids: &dyn IdGenerator,
) -> Result<(String, TokenKeys)> {
    let dir: Option<PathBuf> = local_dir.map(|d| d.join(".secrets"));
    let admin = match (&cfg.auth.admin_token, &dir) {
        (Some(t), _) if t.len() >= 16 => t.clone(),
        (Some(_), _) => bail!("KEEPSAKE_ADMIN_TOKEN must be at least 16 characters"),
        (None, Some(dir)) => {
            let path = dir.join("admin-token");
            let (token, created) = secret_file(&path, || B64.encode(random_secret(ids)))?;
            if created {
                info!(file = %path.display(), "generated the operator token; read it from this file");
            } else {
                info!(file = %path.display(), "operator token read from file");
            }
            token
        }
        (None, None) => bail!("set KEEPSAKE_ADMIN_TOKEN: only a local file store generates one"),
    };
    let specs: Vec<String> = match (cfg.auth.token_keys.is_empty(), &dir) {
        (false, _) => cfg.auth.token_keys.clone(),
        (true, Some(dir)) => {
            let path = dir.join("token-keys");
            let (text, _) = secret_file(&path, || {
                SigningKey::new("k1", random_secret(ids))
                    .map(|k| k.to_spec())
                    .unwrap_or_default()
            })?;
            text.split([',', '\n'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        }
        (true, None) => bail!(
            "set KEEPSAKE_TOKEN_KEYS (id:base64url-secret,...): only a local file store generates one"
        ),
    };
    let keys = specs
        .iter()
        .map(|s| SigningKey::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("KEEPSAKE_TOKEN_KEYS: {e}"))?;
    let keys = TokenKeys::new(keys).map_err(|e| anyhow::anyhow!("KEEPSAKE_TOKEN_KEYS: {e}"))?;
    Ok((admin, keys))
}

async fn resume_fleet(fleet: &Arc<crate::fleet::Fleet>) {
    match keepsake_store::with_cause(keepsake_store::Cause::Restore, fleet.resume_all()).await {
        // Logged even when there is nothing to resume: the line says the look was made.
        Ok(n) => info!(jobs = n, "resumed unfinished fleet restores"),
        Err(e) => warn!(error = %e, "looking for unfinished fleet restores failed"),
    }
}

/// How often a static member looks whether another instance took one of its shards.
const STATIC_FENCE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts serving this member's shards: the listed ones (static), or etcd's coordinator, which
/// hands every shard over when `leaving` is notified and then says so on `left`.
async fn start_membership(
    cluster: &Arc<Cluster>,
    membership: &Membership,
    log: &Arc<Log>,
    addr: SocketAddr,
    leaving: Arc<tokio::sync::Notify>,
    left: tokio::sync::oneshot::Sender<()>,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    match membership {
        Membership::Alone => Ok(None),
        Membership::Static { shards, .. } => {
            crate::cluster::serve_static(cluster, log, shards).await?;
            let (cluster, log) = (cluster.clone(), log.clone());
            Ok(Some(tokio::spawn(async move {
                // Every few seconds: a shard another instance took is let go (reads stop too).
                loop {
                    tokio::select! {
                        _ = leaving.notified() => break,
                        _ = tokio::time::sleep(STATIC_FENCE_CHECK) => cluster.check_fences(&log).await,
                    }
                }
                for s in cluster.local_shards() {
                    cluster.hand_over(&log, s).await;
                }
                let _ = left.send(());
            })))
        }
        Membership::Etcd {
            node,
            endpoints,
            advertise,
            lease,
        } => {
            let advertise = match advertise {
                Some(a) => a.clone(),
                None if !addr.ip().is_unspecified() => format!("http://{addr}"),
                None => bail!(
                    "listening on {addr}: say where other servers reach this one with --advertise"
                ),
            };
            let cfg = crate::cluster::etcd::EtcdConfig {
                endpoints: endpoints.clone(),
                node: node.clone(),
                advertise,
                lease: *lease,
            };
            let coordinator =
                crate::cluster::etcd::Coordinator::connect(cfg, cluster.clone(), log.clone())
                    .await?;
            let flag = coordinator.leaving();
            let run = tokio::spawn(coordinator.run());
            Ok(Some(tokio::spawn(async move {
                leaving.notified().await;
                flag.store(true, std::sync::atomic::Ordering::Release);
                let _ = run.await;
                let _ = left.send(());
            })))
        }
    }
}

/// Runs the server until `shutdown` resolves.
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ids: Arc<dyn IdGenerator> = Arc::new(RandomIds);
    let store = open_store_opts(&cfg.store.url, cfg.store.open_options())
        .with_context(|| format!("open store {}", cfg.store.url))?;
    let (operator_token, keys) = secrets(&cfg, store.local_dir.as_deref(), ids.as_ref())?;

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port when listening on :0.
    info!(store = %store.description, "listening on http://{addr}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cluster = cfg.membership.node().map(|n| Cluster::new(n.to_string()));
    let state = Arc::new(AppState {
        ready: OnceLock::new(),
        keys,
        operator_token,
        limits: cfg.limits,
        clock: clock.clone(),
        ids: ids.clone(),
        metrics: Metrics::with_store(store.stats.clone()),
        shutdown: stop_rx.clone(),
        mass_delete: cfg.log.policy.mass_delete,
        delete_guard: crate::delete_guard::DeleteGuard::default(),
        cluster: cluster.clone(),
    });
    let mut app = api::router(state.clone(), crate::dav::router());
    if cluster.is_some() {
        let routing = forward::Forwarding::new(state.clone())
            .context("the client that forwards requests to other servers")?;
        app = app.layer(axum::middleware::from_fn_with_state(
            routing,
            forward::route,
        ));
    }
    let mut graceful = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = graceful.wait_for(|s| *s).await;
            })
            .await
    });
    // Set on SIGTERM before the HTTP server stops: a cluster member first hands its shards
    // over (requests for them answer 503 meanwhile), then stops.
    let leaving = Arc::new(tokio::sync::Notify::new());
    let (left_tx, left_rx) = tokio::sync::oneshot::channel::<()>();
    let membered = cluster.is_some();
    let leave_now = leaving.clone();
    let signal = tokio::spawn(async move {
        shutdown.await;
        if membered {
            leave_now.notify_one();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(20), left_rx).await;
        }
        let _ = stop_tx.send(true);
    });

    // Counted as start-up: recovering every shard and the registry's first load.
    let recovered = keepsake_store::with_cause(keepsake_store::Cause::Startup, async {
        // A store keeps its own shard count; a new one gets the configured count, else the
        // default. Only an empty store is new: one that holds data but lost its descriptor is
        // refused by `Log::open` (`StoreError::DescriptorMissing`), whatever is configured.
        let retried = store.retrying(cfg.store.retry());
        let existing = read_descriptor(retried.as_ref()).await?;
        let shards = match (cfg.shards, &existing) {
            (Some(n), _) => Some(n),
            (None, None) => Some(DEFAULT_SHARDS),
            (None, Some(_)) => None,
        };
        let shards_now = shards
            .or(existing.map(|d| d.shard_count))
            .unwrap_or(DEFAULT_SHARDS);
        let log_cfg = LogConfig {
            view_memory_bytes: cfg.log.view_memory_bytes / shards_now.max(1) as usize,
            footer_memory_bytes: cfg.log.footer_memory_bytes / shards_now.max(1) as usize,
            cluster_node: cfg.membership.node().map(String::from),
            ..cfg.log.clone()
        };
        let log = Arc::new(
            Log::open(
                store.inner.clone(),
                shards,
                log_cfg,
                clock.clone(),
                ids.clone(),
            )
            .await
            // Name the store in the recovery commands the error shows.
            .map_err(|e| match e {
                LogError::Open(e) => LogError::Open(e.for_store(&cfg.store.url)),
                other => other,
            })?,
        );
        let registry = Registry::open(retried, clock.now()).await?;
        let fleet = crate::fleet::Fleet::new(
            log.clone(),
            clock.clone(),
            usize::try_from(cfg.fleet.concurrency).unwrap_or(usize::MAX),
            cfg.fleet.users_per_second,
        );
        anyhow::Ok(Ready {
            log,
            registry,
            fleet,
        })
    })
    .await;
    let ready = match recovered {
        Ok(r) => r,
        Err(e) => {
            error!(error = %format!("{e:#}"), "recovery failed; stopping");
            signal.abort();
            return Err(e.context("recover the log"));
        }
    };
    let log = ready.log.clone();
    let registry = ready.registry.clone();
    let fleet = ready.fleet.clone();
    // A member takes its shards (static) or starts its coordinator before it says it is ready:
    // a static server is ready once it serves its shards.
    let coordinator = match (&cluster, &cfg.membership) {
        (Some(cluster), membership) => {
            cluster.size(log.descriptor().shard_count);
            fleet.restore_elsewhere(
                crate::fleet_remote::Remote::new(cluster.clone(), state.operator_token.clone())
                    .context("the client that sends restores to other servers")?,
            );
            let (registry, clock) = (registry.clone(), clock.clone());
            cluster.before_serving(Arc::new(move || {
                let (registry, clock) = (registry.clone(), clock.clone());
                Box::pin(async move {
                    registry
                        .refresh(clock.now())
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("refreshing revocations: {e}"))
                })
            }));
            start_membership(cluster, membership, &log, addr, leaving, left_tx).await?
        }
        _ => None,
    };
    let _ = state.ready.set(ready);
    info!(store_id = %log.descriptor().store_id, shards = log.descriptor().shard_count, "ready");

    // In a cluster every member resumes unfinished jobs: each user's restore is idempotent
    // (its restore id), and batch records take the next free number, so two runs of one job
    // finish it once.
    resume_fleet(&fleet).await;
    let refresh = cfg.auth.revocation_refresh();
    let mut refresh_stop = stop_rx.clone();
    let refresh_clock = clock.clone();
    let refresher = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(refresh) => {}
                _ = refresh_stop.wait_for(|s| *s) => break,
            }
            let refreshed = keepsake_store::with_cause(
                keepsake_store::Cause::Devices,
                registry.refresh(refresh_clock.now()),
            );
            match refreshed.await {
                Ok(r) => tracing::debug!(full = r.full, listed = r.listed, "revocations refreshed"),
                Err(e) => warn!(error = %e, "refreshing revocations failed"),
            }
        }
    });

    let limit = (cfg.log.view_memory_bytes as u64).saturating_add(cfg.memory_overhead_bytes);
    let resident = tokio::spawn(crate::resident::run(
        log.clone(),
        limit,
        cfg.purge_over_limit,
        cfg.give_way_added_up,
        stop_rx.clone(),
    ));

    let served = server.await;
    if let Some(c) = coordinator {
        let _ = c.await;
    }
    info!("HTTP server stopped; draining the writers");
    log.shutdown().await;
    refresher.abort();
    resident.abort();
    info!("stopped");
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context("serve HTTP"),
        Err(e) => Err(e).context("HTTP server task"),
    }
}
