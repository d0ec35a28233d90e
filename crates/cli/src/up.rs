//! `modelship up`: the control plane in the foreground — API, controller,
//! gateway and state store. Replicas outlive it: stopping `up` leaves them
//! serving, and the next `up` on the same data directory adopts them.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use modelship_control::{Config, up};
use modelship_orchestrator::{Cgroups, Local};

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// Where state (state.db), replica logs and optimized models live.
    #[arg(long, env = "MODELSHIP_DATA_DIR", default_value = ".modelship")]
    data_dir: PathBuf,
    /// Address the control API listens on: keep it private (loopback) when
    /// the gateway is exposed.
    #[arg(long, default_value = "127.0.0.1")]
    api_host: IpAddr,
    /// Address the gateway listens on.
    #[arg(long, default_value = "127.0.0.1")]
    gateway_host: IpAddr,
    /// 0 picks a free port (the banner on stderr says which).
    #[arg(long, default_value_t = 7070)]
    api_port: u16,
    #[arg(long, default_value_t = 8080)]
    gateway_port: u16,
    /// Gateway threads (default: one per core).
    #[arg(long)]
    gateway_threads: Option<usize>,
    /// A file of API keys, one per line: the gateway and the control API
    /// answer 401 without one (the CLI sends MODELSHIP_API_KEY), and
    /// replicas get a key of their own (DATA_DIR/replica.key) that only the
    /// gateway sends.
    #[arg(long)]
    api_keys: Option<PathBuf>,
    /// Serve the gateway's /metrics without a key.
    #[arg(long)]
    public_metrics: bool,
    #[command(flatten)]
    tls: TlsArgs,
    /// Also publish routes in etcd (`etcd://HOST:PORT`) for other gateways
    /// (`modelship gateway --discovery …`).
    #[arg(long)]
    discovery: Option<String>,
    /// Specs to deploy once the control plane is up.
    specs: Vec<PathBuf>,
}

pub fn run(mut args: Args) -> Result<(), Failure> {
    let specs = args
        .specs
        .iter()
        .map(|p| crate::ops::resolved_spec(p))
        .collect::<Result<Vec<_>, _>>()?;
    let gateway_config = gateway_config(args.api_keys.as_deref(), args.public_metrics)?;
    if let Some(key) = gateway_config.api_keys.first() {
        crate::ops::use_api_key(key.clone());
    }
    // Absolute: revisions record artifact paths under it, and replicas may
    // be started from another working directory.
    std::fs::create_dir_all(&args.data_dir)
        .and_then(|()| std::fs::canonicalize(&args.data_dir))
        .map(|dir| args.data_dir = dir)
        .with_context(|| format!("cannot create --data-dir {}", args.data_dir.display()))
        .map_err(Failure::Config)?;
    let discovery = args
        .discovery
        .as_deref()
        .map(modelship_gateway::etcd::Etcd::parse)
        .transpose()
        .map_err(|e| Failure::Config(e.into()))?;
    let exe = std::env::current_exe().context("cannot find the modelship binary")?;
    let cgroups = Cgroups::detect();
    let orchestrator = Local::new(exe, args.data_dir.join("logs"), cgroups.clone())
        .context("cannot create the replica log directory")?;
    let metrics = modelship_server::recorder();
    let config = Config {
        data_dir: args.data_dir.clone(),
        api: SocketAddr::new(args.api_host, args.api_port),
        gateway: SocketAddr::new(args.gateway_host, args.gateway_port),
        orchestrator: Arc::new(orchestrator),
        gateway_config,
        gateway_threads: args
            .gateway_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        metrics: Some(Arc::new(move || metrics.render())),
        discovery,
        tls: args.tls.load()?,
    };
    let tls = config.tls.is_some();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = stopped();
        let (bound, serving) = up(config, shutdown).await.map_err(Failure::Config)?;
        let scheme = if tls { "https" } else { "http" };
        eprintln!(
            "modelship control plane: API http://{}, gateway {scheme}://{}, data {}, resource limits: {}",
            bound.api,
            bound.gateway,
            args.data_dir.display(),
            cgroups.note()
        );
        eprintln!("modelship dashboard: http://{}/", bound.api);
        if !specs.is_empty() {
            let api = format!("http://{}", bound.api);
            tokio::spawn(async move {
                for spec in specs {
                    if let Err(e) = crate::ops::submit(&api, &spec).await {
                        tracing::error!("deploying {}: {:#}", spec.metadata.name, e.error());
                    }
                }
            });
        }
        serving.await.map_err(Failure::User)
    })
}

/// API keys from a file, one a line (`#` starts a comment); a file without
/// one is a configuration error, since it would guard nothing.
pub fn read_api_keys(path: &std::path::Path) -> Result<BTreeSet<String>, Failure> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --api-keys {}", path.display()))
        .map_err(Failure::Config)?;
    let keys = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            modelship_types::auth::parse_key(l)
                .map_err(|e| Failure::Config(anyhow::anyhow!("--api-keys {}: {e}", path.display())))
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    if keys.is_empty() {
        return Err(Failure::Config(anyhow::anyhow!(
            "--api-keys {} holds no key",
            path.display()
        )));
    }
    Ok(keys)
}

/// The gateway's settings from the command line (keys: [`read_api_keys`]).
pub fn gateway_config(
    api_keys: Option<&std::path::Path>,
    public_metrics: bool,
) -> Result<modelship_gateway::Config, Failure> {
    let mut config = modelship_gateway::Config {
        public_metrics,
        ..modelship_gateway::Config::default()
    };
    if let Some(path) = api_keys {
        config.api_keys = read_api_keys(path)?;
    }
    Ok(config)
}

#[derive(clap::Args)]
pub struct GatewayArgs {
    /// Where routes come from: `etcd://HOST:PORT`, as published by
    /// `modelship up --discovery`.
    #[arg(long)]
    discovery: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// 0 picks a free port (the banner on stderr says which).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    api_keys: Option<PathBuf>,
    /// The replicas' key (a control plane's DATA_DIR/replica.key, written
    /// when it has --api-keys): sent to them in place of the client's.
    #[arg(long)]
    replica_key_file: Option<PathBuf>,
    /// Serve /metrics without a key.
    #[arg(long)]
    public_metrics: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

/// The gateway's TLS certificate and key.
#[derive(clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain: the gateway serves HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn load(&self) -> Result<Option<modelship_gateway::Tls>, Failure> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => modelship_gateway::Tls::from_pem(cert, key)
                .map(Some)
                .map_err(|e| Failure::Config(anyhow::anyhow!(e))),
            _ => Ok(None),
        }
    }
}

/// `modelship gateway`: one more gateway, following the routes a control
/// plane publishes in etcd.
pub fn gateway(args: GatewayArgs) -> Result<(), Failure> {
    let etcd = modelship_gateway::etcd::Etcd::parse(&args.discovery)
        .map_err(|e| Failure::Config(e.into()))?;
    let metrics = modelship_server::recorder();
    let mut config = gateway_config(args.api_keys.as_deref(), args.public_metrics)?;
    if let Some(path) = &args.replica_key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --replica-key-file {}", path.display()))
            .map_err(Failure::Config)?;
        config.upstream_key = Some(modelship_types::auth::parse_key(&text).map_err(|e| {
            Failure::Config(anyhow::anyhow!(
                "--replica-key-file {}: {e}",
                path.display()
            ))
        })?);
    }
    let gateway = modelship_gateway::Gateway::new(config, Some(Arc::new(move || metrics.render())));
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (addr, serving) = modelship_gateway::serve(
            gateway.clone(),
            SocketAddr::new(args.host, args.port),
            threads,
            args.tls.load()?,
            stop_rx.clone(),
        )
        .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))
        .map_err(Failure::Config)?;
        eprintln!(
            "modelship gateway: http://{addr}, routes from {}",
            args.discovery
        );
        tokio::spawn(modelship_gateway::etcd::follow(etcd, gateway, stop_rx));
        tokio::spawn(async move {
            stopped().await;
            let _ = stop_tx.send(true);
        });
        serving
            .await
            .context("the gateway failed")
            .map_err(Failure::User)
    })
}

/// Resolves on Ctrl-C or SIGTERM. Replicas keep running: the next `up`
/// adopts them.
async fn stopped() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
