//! `modelship bench MODEL`: one replica's capacity profile — throughput and
//! p50/p99 latency at increasing concurrency, in process (no HTTP) — stored
//! for `plan` to size replicas against a spec's `slo`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use modelship_engine::{
    EncodeInput, EncodeOptions, Engine, GenerateRequest, GenerationEvent, Prompt,
};
use modelship_engine_candle::{LoadOptions, load, parse_device};
use modelship_planner::{CapacityPoint, CapacityProfile};
use modelship_types::{ServingLimits, Task};

use crate::Failure;
use crate::compute::init_threads;

#[derive(clap::Args)]
pub struct Args {
    model: PathBuf,
    /// Concurrency levels to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    levels: Vec<u32>,
    /// Seconds per level.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Tokens each generation request produces.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Where to store the profile (default: the modelship cache, by model name).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, env = "MODELSHIP_THREADS")]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

/// Where `bench` stores, and `plan` looks for, a model's profile.
pub fn run(args: Args) -> Result<(), Failure> {
    if args.levels.is_empty()
        || args.levels.contains(&0)
        || args.seconds.is_nan()
        || args.seconds <= 0.0
    {
        return Err(Failure::Config(anyhow::anyhow!(
            "invalid `--levels`/`--seconds`: levels must be at least 1 and seconds positive"
        )));
    }
    let threads = init_threads(args.threads)?;
    let max_concurrent = *args.levels.iter().max().expect("not empty") as usize;
    let opts = LoadOptions {
        name: None,
        device: parse_device("cpu").map_err(|e| Failure::Config(e.into()))?,
        limits: ServingLimits {
            max_concurrent,
            max_queue: max_concurrent.max(256),
            ..ServingLimits::default()
        },
    };
    let engine = Arc::new(
        load(&args.model, &opts)
            .with_context(|| format!("cannot load {}", args.model.display()))?,
    );
    let request = match engine.card().task {
        Task::Embeddings => "1 text of ~12 tokens".to_owned(),
        Task::Rerank | Task::Classify => "1 pair of ~12-token texts".to_owned(),
        Task::Generate => format!("a ~10-token prompt, {} generated tokens", args.max_tokens),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut points = Vec::new();
    for &level in &args.levels {
        let point = runtime.block_on(measure(
            engine.clone(),
            level,
            Duration::from_secs_f64(args.seconds),
            args.max_tokens,
        ))?;
        eprintln!(
            "concurrency {:>3}: {:>8.1} req/s  p50 {:>7.1} ms  p99 {:>7.1} ms",
            point.concurrency, point.rps, point.p50_ms, point.p99_ms
        );
        points.push(point);
    }
    let profile = CapacityProfile {
        model: args.model.display().to_string(),
        request,
        threads: threads as u32,
        points,
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| modelship_control::plan::profile_path(&args.model));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&profile).expect("plain data serializes"),
    )
    .with_context(|| format!("cannot write {}", out.display()))?;
    crate::print_output(args.json, &profile, |p| {
        format!(
            "profile of {} ({}) written to {}\n",
            p.model,
            p.request,
            out.display()
        )
    });
    Ok(())
}

/// `level` clients, each sending its next request when the last completes.
async fn measure(
    engine: Arc<Engine>,
    level: u32,
    window: Duration,
    max_tokens: usize,
) -> anyhow::Result<CapacityPoint> {
    let start = Instant::now();
    let clients: Vec<_> = (0..level)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while start.elapsed() < window {
                    let t = Instant::now();
                    one_request(&engine, i, max_tokens).await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.context("a bench client failed")??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        all.get(((all.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(CapacityPoint {
        concurrency: level,
        rps: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    })
}

async fn one_request(engine: &Engine, client: u32, max_tokens: usize) -> anyhow::Result<()> {
    match engine.card().task {
        Task::Embeddings => {
            let text =
                format!("Client {client} asks how far a replica of this model can be pushed.");
            engine.embed(&[text], false).await?;
        }
        Task::Rerank | Task::Classify => {
            let pair = EncodeInput::Pair(
                format!("Client {client} asks how far a replica can be pushed."),
                "A replica of this model scores pairs of texts.".to_owned(),
            );
            let inputs = engine.tokenize_inputs("inputs", &[pair], &EncodeOptions::default())?;
            engine.score_tokens(inputs).await?;
        }
        Task::Generate => {
            let prompt = Prompt::Text(format!("Client {client}: the capital of France is"));
            let request = GenerateRequest {
                max_tokens: Some(max_tokens),
                temperature: Some(0.0),
                ..GenerateRequest::default()
            };
            let (mut samples, _) = engine.generate(&prompt, &request)?;
            let mut events = samples.pop().expect("one sample");
            while let Some(event) = events.recv().await {
                match event {
                    GenerationEvent::Prompt(_) | GenerationEvent::Text { .. } => {}
                    GenerationEvent::Done { .. } => break,
                    GenerationEvent::Failed(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(())
}
