//! The control plane: the API the CLI talks to, the controller loop that
//! keeps replicas as the store says, the deploy pipeline, and the gateway in
//! front of the replicas, in one process ([`up`]). Composes the store,
//! planner, orchestrator and gateway; the only crate that knows them all.

mod api;
mod controller;
pub mod digest;
mod pipeline;
pub mod plan;
pub mod render;
mod rollout;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use modelship_gateway::Gateway;
use modelship_orchestrator::Orchestrator;
use modelship_store::Store;
use tokio::sync::Notify;

pub use api::{ApiError, DeployRequest, DeploymentSummary};

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

/// State shared by the API, the controller and pipeline runs.
pub(crate) struct Ctx {
    pub store: Store,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub gateway: Gateway,
    pub data_dir: PathBuf,
    /// Wakes the controller after a change.
    pub wake: Notify,
    /// Deployments with a pipeline run in progress.
    pub running: Mutex<HashSet<String>>,
    pub gateway_addr: SocketAddr,
    /// The latest routes for the etcd publisher, when discovery is on.
    pub published: Option<tokio::sync::watch::Sender<Routable>>,
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
    let store = Store::open(&config.data_dir.join("state.db"))?;
    let api_listener = tokio::net::TcpListener::bind(config.api)
        .await
        .with_context(|| format!("cannot listen on {} (--api-port)", config.api))?;
    let gateway = Gateway::new(config.gateway_config, config.metrics);
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
    let published = config.discovery.map(|etcd| {
        let (tx, rx) = tokio::sync::watch::channel(Routable::default());
        tokio::spawn(publish_to_etcd(etcd, rx));
        tx
    });
    let ctx = Arc::new(Ctx {
        store,
        orchestrator: config.orchestrator,
        gateway: gateway.clone(),
        data_dir: config.data_dir,
        wake: Notify::new(),
        running: Mutex::new(HashSet::new()),
        gateway_addr: bound.gateway,
        published,
    });
    let controller = tokio::spawn(controller::Controller::new(Arc::clone(&ctx)).run());
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api = axum::serve(api_listener, api::router(Arc::clone(&ctx)))
        .with_graceful_shutdown(wait(stop_rx));
    let run = async move {
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let (a, g) = tokio::join!(api, gw);
        controller.abort();
        a.context("the API server failed")?;
        g.context("the gateway failed")?;
        Ok(())
    };
    Ok((bound, run))
}

/// Keeps etcd's entries equal to the latest routes, and its lease alive.
async fn publish_to_etcd(
    etcd: modelship_gateway::etcd::Etcd,
    mut routes: tokio::sync::watch::Receiver<Routable>,
) {
    let mut publisher = modelship_gateway::etcd::Publisher::new(etcd);
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
