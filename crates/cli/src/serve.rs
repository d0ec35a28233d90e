//! `modelship serve MODEL`: load, bind, serve until SIGTERM/SIGINT, drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use modelship_engine_candle::{LoadOptions, load, parse_device};
use modelship_server::ServeOptions;
use modelship_types::ServingLimits;

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// An HF directory (BERT embeddings; llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3 checkpoints) or a GGUF file (BERT embeddings; the same decoders).
    model: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "MODELSHIP_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "MODELSHIP_PORT", default_value_t = 8000)]
    port: u16,
    /// Compute threads (default: all cores).
    #[arg(long, env = "MODELSHIP_THREADS")]
    threads: Option<usize>,
    /// Name clients use in `model` fields (default: the file or directory name).
    #[arg(long)]
    name: Option<String>,
    /// `cpu`, or `cuda[:N]` in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Tokens per sequence: embedding input, or prompt plus completion.
    #[arg(long, default_value_t = ServingLimits::default().max_context)]
    max_context: usize,
    /// Sequences generated at once.
    #[arg(long, default_value_t = ServingLimits::default().max_concurrent)]
    max_concurrent: usize,
    /// Tokens in one forward pass: padded embedding inputs, or the new prompts of one generation step together.
    #[arg(long, default_value_t = ServingLimits::default().max_batch_tokens)]
    max_batch_tokens: usize,
    /// Requests waiting beyond those being served; more get 429.
    #[arg(long, default_value_t = ServingLimits::default().max_queue)]
    max_queue: usize,
    /// Largest `max_tokens` a completion may ask for.
    #[arg(long, default_value_t = ServingLimits::default().max_tokens)]
    max_tokens: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = ServingLimits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Texts in one embedding request.
    #[arg(long, default_value_t = ServingLimits::default().max_inputs)]
    max_inputs: usize,
    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
    /// Seconds a client may take to send a request's head; a kept-alive
    /// connection idle this long is closed too.
    #[arg(long, default_value_t = modelship_server::HEADER_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Seconds a request's body may take to arrive (408 after).
    #[arg(long, default_value_t = modelship_server::BODY_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout: u64,
    /// Require `Authorization: Bearer KEY` on the API routes (health and
    /// metrics stay open).
    #[arg(long, env = "MODELSHIP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Accept every key of this file too, one a line (as `up --api-keys`):
    /// how Kubernetes pods get theirs, from a mounted Secret.
    #[arg(long, env = "MODELSHIP_API_KEYS_FILE")]
    api_keys: Option<PathBuf>,
}

impl Args {
    fn limits(&self) -> ServingLimits {
        ServingLimits {
            max_context: self.max_context,
            max_concurrent: self.max_concurrent,
            max_batch_tokens: self.max_batch_tokens,
            max_queue: self.max_queue,
            max_tokens: self.max_tokens,
            max_body_bytes: self.max_body_bytes,
            max_inputs: self.max_inputs,
        }
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    let started = Instant::now();
    let limits = args.limits();
    limits
        .validate()
        .map_err(|e| Failure::Config(anyhow::Error::new(e).context("invalid serving limits")))?;
    let mut api_keys: Vec<String> = args
        .api_key
        .as_deref()
        .map(modelship_types::auth::parse_key)
        .transpose()
        .map_err(|e| Failure::Config(anyhow::anyhow!("--api-key (or MODELSHIP_API_KEY): {e}")))?
        .into_iter()
        .collect();
    if let Some(path) = &args.api_keys {
        api_keys.extend(crate::up::read_api_keys(path)?);
    }
    let threads = crate::compute::init_threads(args.threads)?;
    let device = parse_device(&args.device).map_err(|e| Failure::Config(e.into()))?;
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .map_err(|e| {
            Failure::Config(
                anyhow::Error::new(e).context(format!("invalid --host `{}`", args.host)),
            )
        })?;

    let opts = LoadOptions {
        name: args.name.clone(),
        device,
        limits,
    };
    let engine = load(&args.model, &opts)
        .with_context(|| format!("cannot serve {}", args.model.display()))?;
    let card = engine.card().clone();
    tracing::info!(
        model = %card.name, task = %card.task, max_context = card.max_context, threads,
        load_ms = started.elapsed().as_millis() as u64, "model loaded"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr().context("no local address")?;
        // Scripts wait for this line; keep its shape.
        eprintln!(
            "modelship: serving `{}` ({}) on http://{local}",
            card.name, card.task
        );
        let options = ServeOptions {
            header_timeout: Duration::from_secs(args.header_timeout),
            body_timeout: Duration::from_secs(args.body_timeout),
            ..ServeOptions::new(Duration::from_secs(args.shutdown_timeout), api_keys)
        };
        modelship_server::serve(listener, Arc::new(engine), shutdown_signal(), options)
            .await
            .context("server failed")?;
        tracing::info!("stopped");
        Ok::<(), anyhow::Error>(())
    });
    // Dropping a runtime waits for its blocking tasks, however long they
    // run (a tokenizer on a huge prompt): the drain already had its time.
    runtime.shutdown_timeout(Duration::from_secs(1));
    served?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
