//! The control plane: the API the CLI talks to, the controller loop that
//! keeps replicas as the store says, the deploy pipeline, and the gateway in
//! front of the replicas, in one process ([`up`]). Composes the store,
//! planner, orchestrator and gateway; the only crate that knows them all.

mod api;
#[cfg(test)]
mod api_tests;
mod cluster;
mod controller;
mod dashboard;
pub mod digest;
pub mod kubernetes;
pub mod package;
mod pipeline;
pub mod plan;
pub mod render;
mod rollout;
mod swarm;
mod telemetry;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use modelship_gateway::Gateway;
use modelship_orchestrator::Orchestrator;
use modelship_store::Store;
use modelship_types::Target;
use tokio::sync::Notify;

pub use api::{ApiError, DeployRequest, DeploymentSummary};
pub use pipeline::{Artifact, optimized_model};

/// What `modelship up` runs with.
pub struct Config {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub gateway: SocketAddr,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub gateway_config: modelship_gateway::Config,
    /// Gateway threads, each with its own listener and upstream pool.
    pub gateway_threads: usize,
    /// Serve the gateway over TLS.
    pub tls: Option<modelship_gateway::Tls>,
    /// Publish routes in etcd too, for other gateways.
    pub discovery: Option<modelship_gateway::etcd::Etcd>,
    /// Renders this process's Prometheus metrics for the gateway's `/metrics`.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

/// The key this data directory's replicas require (`replica.key`, mode
/// 0600, made once from 32 random bytes): kept, so replicas that outlive
/// the control plane still take the next one's gateway. Another gateway
/// reads it with `modelship gateway --replica-key-file`.
pub fn replica_key(data_dir: &std::path::Path) -> anyhow::Result<modelship_types::auth::Secret> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("replica.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let key = modelship_types::auth::parse_key(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(modelship_types::auth::Secret::new(key));
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the replica key")?;
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(key.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(modelship_types::auth::Secret::new(key))
}

/// The orchestrators replicas run on: local processes always, Docker once a
/// deployment asks for it (so `up` works where no engine runs).
pub(crate) struct Targets {
    local: Arc<dyn Orchestrator>,
    docker: tokio::sync::OnceCell<Arc<modelship_orchestrator::Docker>>,
    swarm: tokio::sync::OnceCell<Arc<modelship_orchestrator::Swarm>>,
    kubernetes: tokio::sync::OnceCell<Arc<modelship_orchestrator::Kubernetes>>,
}

impl Targets {
    pub(crate) fn local(&self) -> &Arc<dyn Orchestrator> {
        &self.local
    }

    pub(crate) async fn docker(&self) -> anyhow::Result<Arc<modelship_orchestrator::Docker>> {
        self.docker
            .get_or_try_init(|| async {
                Ok(Arc::new(modelship_orchestrator::Docker::connect().await?))
            })
            .await
            .cloned()
    }

    pub(crate) async fn swarm(&self) -> anyhow::Result<Arc<modelship_orchestrator::Swarm>> {
        self.swarm
            .get_or_try_init(|| async {
                Ok(Arc::new(modelship_orchestrator::Swarm::connect().await?))
            })
            .await
            .cloned()
    }

    pub(crate) async fn kubernetes(
        &self,
    ) -> anyhow::Result<Arc<modelship_orchestrator::Kubernetes>> {
        self.kubernetes
            .get_or_try_init(|| async {
                Ok(Arc::new(
                    modelship_orchestrator::Kubernetes::connect().await?,
                ))
            })
            .await
            .cloned()
    }

    /// Whether a Swarm deployment has been seen since this process started
    /// (its services may need removing even when no task runs).
    pub(crate) fn swarm_in_use(&self) -> bool {
        self.swarm.initialized()
    }

    /// The Docker engine, for loading images (Swarm's engine when a Swarm
    /// deployment is the first to ask).
    pub(crate) async fn engine(
        &self,
        target: Target,
    ) -> anyhow::Result<modelship_orchestrator::Engine> {
        Ok(match target {
            Target::Swarm => self.swarm().await?.engine().clone(),
            _ => self.docker().await?.engine().clone(),
        })
    }

    /// The orchestrator of per-replica targets; Swarm replicas are the
    /// tasks of services ([`crate::swarm`]), not started one by one.
    pub(crate) async fn get(&self, target: Target) -> anyhow::Result<Arc<dyn Orchestrator>> {
        match target {
            Target::Local => Ok(Arc::clone(&self.local)),
            Target::Docker => Ok(self.docker().await?),
            // Their engines start and stop replicas; the controller's
            // passes over them (`swarm`, `cluster`) set counts instead.
            other => anyhow::bail!("`{other}` replicas are not started one by one"),
        }
    }
}

/// State shared by the API, the controller and pipeline runs.
pub(crate) struct Ctx {
    pub store: Store,
    pub targets: Targets,
    pub gateway: Gateway,
    pub data_dir: PathBuf,
    /// Wakes the controller after a change.
    pub wake: Notify,
    /// Deployments with a pipeline run in progress.
    pub running: Mutex<HashSet<String>>,
    pub gateway_addr: SocketAddr,
    /// What was last applied to Kubernetes, per deployment.
    pub applied: Mutex<cluster::AppliedMap>,
    /// The latest routes for the etcd publisher, when discovery is on.
    pub published: Option<tokio::sync::watch::Sender<Routable>>,
    /// The key replicas are started with, when the gateway has keys.
    pub replica_key: Option<modelship_types::auth::Secret>,
    /// The API keys (the gateway's): Kubernetes pods, which clients reach
    /// through their Service rather than the gateway, require them.
    pub api_keys: std::collections::BTreeSet<String>,
    /// Each deployment's rollout analysis as the controller last measured
    /// it (the shadow phase or canary step under way), for `status`.
    pub analyses: Mutex<std::collections::HashMap<String, modelship_planner::Analysis>>,
    /// The last hour's figures per deployment, for the dashboard.
    pub telemetry: Mutex<telemetry::Telemetry>,
    /// Counts the sampler's ticks: the dashboard's streams send on each.
    pub ticks: tokio::sync::watch::Sender<u64>,
    /// Turns true when the control plane stops: open streams end then, or
    /// the API's graceful shutdown would wait for them forever.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl Ctx {
    /// Logs something that happened to a deployment and records it for
    /// `status` and `history`.
    pub(crate) fn record_event(
        &self,
        deployment: &str,
        message: String,
    ) -> Result<(), modelship_store::StoreError> {
        tracing::info!(deployment, "{message}");
        self.store.add_event(&modelship_types::Event {
            deployment: deployment.to_owned(),
            at: modelship_orchestrator::now_ms(),
            message,
        })
    }

    /// [`Ctx::record_event`] where a failure to record must not stop the
    /// caller (the controller, a pipeline run): it is logged.
    pub(crate) fn event(&self, deployment: &str, message: String) {
        if let Err(e) = self.record_event(deployment, message) {
            tracing::error!("cannot record an event: {e:#}");
        }
    }
}

/// What the gateway may route to: ready replicas and revision shares.
pub(crate) type Routable = (
    Vec<modelship_gateway::Route>,
    std::collections::HashMap<(String, u32), modelship_gateway::Share>,
);

/// The addresses a started control plane listens on.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub api: SocketAddr,
    pub gateway: SocketAddr,
}

/// Starts the control plane; returns once both listeners are bound, with
/// the addresses and a future that runs it until `shutdown` resolves.
pub async fn up(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(Bound, impl std::future::Future<Output = anyhow::Result<()>>)> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let lock = lock_data_dir(&config.data_dir)?;
    let store = Store::open(&config.data_dir.join("state.db"))?;
    let api_listener = tokio::net::TcpListener::bind(config.api)
        .await
        .with_context(|| format!("cannot listen on {} (--api-port)", config.api))?;
    // One set of keys guards the gateway and the API; replicas then get a
    // key of their own that only the gateway sends.
    let api_keys = config.gateway_config.api_keys.clone();
    let replica_key = if api_keys.is_empty() {
        None
    } else {
        Some(replica_key(&config.data_dir)?)
    };
    let mut gateway_config = config.gateway_config;
    gateway_config.upstream_key = replica_key.as_ref().map(|k| k.expose().to_owned());
    let gateway = Gateway::new(gateway_config, config.metrics);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (gateway_addr, gw) = modelship_gateway::serve(
        gateway.clone(),
        config.gateway,
        config.gateway_threads,
        config.tls,
        stop_rx.clone(),
    )
    .with_context(|| format!("cannot listen on {} (--gateway-port)", config.gateway))?;
    let bound = Bound {
        api: api_listener.local_addr()?,
        gateway: gateway_addr,
    };
    // No pipeline task survives the control plane that ran it; recorded
    // rollouts do, and the controller goes on with them. A second `up` on
    // the same data directory fails at its lock above, before it touches
    // the first one's state.
    let interrupted = store.interrupt_runs(modelship_orchestrator::now_ms())?;
    let published = config.discovery.map(|etcd| {
        let (tx, rx) = tokio::sync::watch::channel(Routable::default());
        tokio::spawn(publish_to_etcd(etcd, rx));
        tx
    });
    let ctx = Arc::new(Ctx {
        store,
        targets: Targets {
            local: config.orchestrator,
            docker: tokio::sync::OnceCell::new(),
            swarm: tokio::sync::OnceCell::new(),
            kubernetes: tokio::sync::OnceCell::new(),
        },
        applied: Mutex::default(),
        gateway: gateway.clone(),
        data_dir: config.data_dir,
        wake: Notify::new(),
        running: Mutex::new(HashSet::new()),
        gateway_addr: bound.gateway,
        published,
        replica_key,
        api_keys: api_keys.clone(),
        analyses: Mutex::default(),
        telemetry: Mutex::default(),
        ticks: tokio::sync::watch::Sender::new(0),
        stopping: stop_rx.clone(),
    });
    reap(&ctx).await?;
    for run in interrupted {
        retry(&ctx, run);
    }
    let controller = tokio::spawn(controller::Controller::new(Arc::clone(&ctx)).run());
    let sampler = tokio::spawn(telemetry::run(Arc::clone(&ctx)));
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api = axum::serve(api_listener, api::router(Arc::clone(&ctx), api_keys))
        .with_graceful_shutdown(wait(stop_rx));
    let run = async move {
        let _lock = lock;
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let serving = async { tokio::join!(api, gw) };
        tokio::pin!(serving);
        let mut controller = controller;
        let (a, g) = tokio::select! {
            done = &mut serving => done,
            // The controller never returns; when it panics (a bug, already
            // reported by the panic hook) the control plane stops with it
            // rather than serve with nothing keeping replicas as recorded.
            ended = &mut controller => match ended {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                _ => anyhow::bail!("the controller stopped"),
            },
        };
        controller.abort();
        sampler.abort();
        a.context("the API server failed")?;
        g.context("the gateway failed")?;
        Ok(())
    };
    Ok((bound, run))
}

/// Takes the data directory for this process (an exclusive lock on its
/// `lock` file, which the kernel releases when the process ends, however
/// it ends): two control planes driving one store would undo each other.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another control plane runs on the data directory {}\nhint: stop it, or give this one its own --data-dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(anyhow::Error::new(e).context(format!("cannot lock {}", path.display())))
        }
    }
}

/// Stops replica processes this data directory's store has no record of
/// (the store was restored from an older copy, or lost; a replica's record
/// is written before its process starts).
async fn reap(ctx: &Ctx) -> anyhow::Result<()> {
    let known: HashSet<String> = ctx.store.replicas()?.into_iter().map(|r| r.id).collect();
    for id in ctx.targets.local().reap(&known).await {
        let deployment = id.rsplitn(3, '-').nth(2).unwrap_or(&id).to_owned();
        ctx.event(
            &deployment,
            format!("stopped replica {id}: it belonged to no recorded deployment"),
        );
    }
    Ok(())
}

/// Most times one spec's run is tried when control planes keep stopping
/// during it (a run that kills its control plane must not loop forever).
const MAX_ATTEMPTS: u32 = 3;

/// Records why `run` ended with the control plane that ran it and, when
/// its spec is known and attempts are left, tries it again as a new run.
fn retry(ctx: &Arc<Ctx>, mut run: modelship_types::Run) {
    let why = run.error.clone().unwrap_or_default();
    // A run that reached its rollout stage recorded a revision the
    // controller carries on (or already judged): it is not run again.
    let reached_rollout = run.stages.iter().any(|s| s.name == "rollout");
    let again = match &run.spec {
        Some(spec) if run.attempt < MAX_ATTEMPTS && !reached_rollout => {
            pipeline::start(ctx, spec.clone(), Some(&run)).ok()
        }
        _ => None,
    };
    let message = match again {
        Some(next) => {
            run.retried_as = Some(next);
            run.error = Some(format!("{why}; retried as run {next}"));
            if let Err(e) = ctx.store.put_run(&run) {
                tracing::error!("cannot record run {}: {e:#}", run.id);
            }
            format!("run {}: {why}; retried as run {next}", run.id)
        }
        None => format!("run {}: {why}", run.id),
    };
    ctx.event(&run.deployment, message);
}

/// Keeps etcd's entries equal to the latest routes, and its lease alive.
async fn publish_to_etcd(
    etcd: modelship_gateway::etcd::Etcd,
    mut routes: tokio::sync::watch::Receiver<Routable>,
) {
    let mut publisher = modelship_gateway::etcd::Publisher::new(etcd);
    // Not before the controller's first routes: publishing the empty start
    // would take down, for a tick, what an earlier control plane published.
    if routes.changed().await.is_err() {
        return;
    }
    loop {
        let latest = routes.borrow_and_update().clone();
        if let Err(e) = publisher.publish(&latest.0, &latest.1).await {
            tracing::warn!("discovery: {e:#}");
        }
        tokio::select! {
            changed = routes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}
