//! The commands that talk to a running control plane — `deploy`,
//! `rollback`, `scale`, `promote`, `abort`, `delete`, `logs` — and the client they share with
//! the listings (`listing.rs`) and `render`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use modelship_types::{ModelDeployment, Run, RunStatus};
use serde_json::{Value, json};

use crate::Failure;

#[derive(clap::Args)]
pub struct Api {
    /// The control plane's API.
    #[arg(
        long,
        env = "MODELSHIP_API",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub(crate) api: String,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub(crate) output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
pub struct DeployArgs {
    #[arg(short = 'f', long = "file")]
    spec: PathBuf,
    /// Wait for the run to finish; exit 1 when it fails.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this long (500ms, 30s, 10m, 1h), exit 1
    /// naming the stage the run is in. The run itself goes on.
    #[arg(long, default_value = "30m", value_parser = parse_span)]
    timeout: modelship_types::Span,
    #[command(flatten)]
    api: Api,
}

#[derive(clap::Args)]
pub struct NameArgs {
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) api: Api,
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    name: String,
    /// The revision to serve again (default: the one before).
    #[arg(long)]
    to: Option<u32>,
    #[command(flatten)]
    api: Api,
}

#[derive(clap::Args)]
pub struct ScaleArgs {
    name: String,
    replicas: u32,
    #[command(flatten)]
    api: Api,
}

#[derive(clap::Args)]
pub struct PromoteArgs {
    name: String,
    /// Past every remaining step: replace the stable revision at once.
    #[arg(long)]
    full: bool,
    #[command(flatten)]
    api: Api,
}

#[derive(clap::Args)]
pub struct LogsArgs {
    name: String,
    /// Lines per replica.
    #[arg(long, default_value_t = 50)]
    tail: usize,
    #[command(flatten)]
    api: Api,
}

/// Reads a spec and makes its paths absolute, for a control plane that may
/// run elsewhere in the file system.
pub fn resolved_spec(path: &Path) -> Result<ModelDeployment, Failure> {
    let mut spec = crate::spec::read_spec(path)?;
    let source = &spec.spec.model.source;
    spec.spec.model.source = std::fs::canonicalize(source)
        .with_context(|| {
            format!(
                "invalid `spec.model.source`: cannot find {}",
                source.display()
            )
        })
        .map_err(Failure::Config)?;
    if let Some(eval) = &spec.spec.optimize.eval {
        spec.spec.optimize.eval = Some(
            std::fs::canonicalize(eval)
                .with_context(|| {
                    format!(
                        "invalid `spec.optimize.eval`: cannot find {}",
                        eval.display()
                    )
                })
                .map_err(Failure::Config)?,
        );
    }
    Ok(spec)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(Failure::User)
}

/// `name` as one URL path segment: every byte but RFC 3986's unreserved
/// ones percent-encoded, so a name cannot reach another route (`a/b`,
/// `..`, `?`).
pub fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The key sent to the control API: `up` sets one of its own keys for the
/// specs it deploys; every other command reads `MODELSHIP_API_KEY`.
static API_KEY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Sends `key` to the control API from now on (before any call).
pub fn use_api_key(key: String) {
    let _ = API_KEY.set(Some(key));
}

fn parse_span(s: &str) -> Result<modelship_types::Span, String> {
    modelship_types::Span::parse(s)
}

/// Sends a request to the API, with the key.
async fn send(
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<reqwest::Response, reqwest::Error> {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url);
    let key = API_KEY.get_or_init(|| std::env::var("MODELSHIP_API_KEY").ok());
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await
}

fn unreachable(e: reqwest::Error, url: &str) -> Failure {
    Failure::User(anyhow::Error::new(e).context(format!(
        "cannot reach the control plane at {url}\nhint: start it with `modelship up`, or point --api / MODELSHIP_API at it"
    )))
}

/// A request to the API; API errors come back as their message, a bad
/// request as a configuration failure (exit 64).
async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> Result<Value, Failure> {
    let resp = send(method, url, body)
        .await
        .map_err(|e| unreachable(e, url))?;
    answer(resp).await
}

async fn answer(resp: reqwest::Response) -> Result<Value, Failure> {
    let status = resp.status();
    let text = resp
        .text()
        .await
        .context("the control plane's answer broke off")?;
    answered(status, text)
}

/// The API's answer as a value, or its error as a failure.
fn answered(status: reqwest::StatusCode, text: String) -> Result<Value, Failure> {
    if status.is_success() {
        return Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)));
    }
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or(text);
    let e = anyhow::anyhow!("{message}");
    Err(if status == reqwest::StatusCode::BAD_REQUEST {
        Failure::Config(e)
    } else {
        Failure::User(e)
    })
}

/// Submits a spec; returns the run id.
pub async fn submit(api: &str, spec: &ModelDeployment) -> Result<u64, Failure> {
    let spec = serde_json::to_value(spec).context("the spec does not serialize")?;
    let v = call(
        reqwest::Method::POST,
        &format!("{api}/v1/deployments"),
        Some(json!({"spec": spec})),
    )
    .await?;
    v["run"]
        .as_u64()
        .context("the control plane did not say which run")
        .map_err(Failure::User)
}

pub fn deploy(args: DeployArgs) -> Result<(), Failure> {
    let spec = resolved_spec(&args.spec)?;
    let api = args.api.api.clone();
    runtime()?.block_on(async move {
        let id = submit(&api, &spec).await?;
        if !args.wait {
            return print(args.api.output, &json!({"run": id}), |_| {
                format!(
                    "run {id} started for {}: `modelship get runs {id}` follows it\n",
                    spec.metadata.name
                )
            });
        }
        follow(&api, id, args.timeout, args.api.output).await
    })
}

/// Follows run `id` (and the runs that retry it) until it ends, printing
/// each stage as it closes; a control plane that restarts meanwhile is
/// waited for. Gives up after `timeout`, naming the stage it stalled in.
async fn follow(
    api: &str,
    mut id: u64,
    timeout: modelship_types::Span,
    output: Output,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + timeout.0;
    let mut shown = 0;
    let mut last: Option<Run> = None;
    let mut waiting_said = false;
    loop {
        if tokio::time::Instant::now() >= deadline {
            let at = match &last {
                Some(run) => format!("in its {} stage", run.current_stage().unwrap_or("first")),
                None => "before the control plane answered".to_owned(),
            };
            return Err(Failure::User(anyhow::anyhow!(
                "run {id} did not finish within {timeout}: still {at}\nhint: `modelship get runs {id}` follows it; it goes on without this command"
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let url = format!("{api}/v1/runs/{id}");
        // A control plane that hangs does not hold this past its timeout.
        let asked = async {
            let resp = send(reqwest::Method::GET, &url, None).await?;
            let status = resp.status();
            Ok::<_, reqwest::Error>((status, resp.text().await?))
        };
        let (status, text) = match tokio::time::timeout_at(deadline, asked).await {
            Ok(Ok(answer)) => answer,
            // Unreachable, or gone mid-answer (restarting): the run goes on
            // from the store, and this waits for the control plane.
            Ok(Err(e)) => {
                if !waiting_said && output == Output::Table {
                    eprintln!("the control plane at {api} does not answer ({e}); waiting for it");
                }
                waiting_said = true;
                continue;
            }
            Err(_) => continue,
        };
        waiting_said = false;
        let run: Run = serde_json::from_value(answered(status, text)?)
            .context("the control plane sent a run this CLI does not understand")?;
        if output == Output::Table {
            for s in run
                .stages
                .iter()
                .skip(shown)
                .take_while(|s| s.status != RunStatus::Running)
            {
                eprintln!(
                    "{:<9} {:>8} ms  {:?}  {}",
                    s.name,
                    s.duration_ms.unwrap_or(0),
                    s.status,
                    first_line(&s.detail)
                );
                shown += 1;
            }
        }
        last = Some(run.clone());
        match run.status {
            RunStatus::Running => continue,
            RunStatus::Failed if run.retried_as.is_some() => {
                let next = run.retried_as.unwrap_or(id);
                if output == Output::Table {
                    eprintln!("run {id} was interrupted; following run {next}, which retries it");
                }
                (id, shown) = (next, 0);
            }
            RunStatus::Succeeded => {
                return print(output, &run, |r| {
                    format!(
                        "run {} succeeded: {} revision {}\n",
                        r.id,
                        r.deployment,
                        r.revision.map_or("unchanged".into(), |n| n.to_string())
                    )
                });
            }
            RunStatus::Failed => {
                if output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&run).unwrap_or_default());
                }
                // The failed stage's detail, when it says more than the
                // error (the optimize table).
                let error = run.error.unwrap_or_default();
                let detail = run
                    .stages
                    .last()
                    .map(|s| s.detail.clone())
                    .unwrap_or_default();
                let more = if error.contains(detail.trim()) {
                    String::new()
                } else {
                    format!("\n{detail}")
                };
                return Err(Failure::User(anyhow::anyhow!(
                    "run {id} failed: {error}{more}"
                )));
            }
        }
    }
}

pub(crate) fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

pub(crate) fn print<T: serde::Serialize>(
    output: Output,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<(), Failure> {
    crate::print_output(output == Output::Json, value, text);
    Ok(())
}

pub(crate) fn get_json(api: &Api, path: &str) -> Result<Value, Failure> {
    let url = format!("{}{path}", api.api);
    runtime()?.block_on(call(reqwest::Method::GET, &url, None))
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v)
        .context("the control plane sent something this CLI does not understand")
        .map_err(Failure::User)
}

fn post(api: &Api, path: &str, body: Value) -> Result<Value, Failure> {
    let url = format!("{}{path}", api.api);
    runtime()?.block_on(call(reqwest::Method::POST, &url, Some(body)))
}

pub fn rollback(args: RollbackArgs) -> Result<(), Failure> {
    let v = post(
        &args.api,
        &format!("/v1/deployments/{}/rollback", segment(&args.name)),
        json!({"to": args.to}),
    )?;
    print(args.api.output, &v, |v| {
        format!(
            "{}: revision {} serves revision {}'s model and spec\n",
            args.name, v["revision"], v["from"]
        )
    })
}

pub fn scale(args: ScaleArgs) -> Result<(), Failure> {
    let v = post(
        &args.api,
        &format!("/v1/deployments/{}/scale", segment(&args.name)),
        json!({"replicas": args.replicas}),
    )?;
    print(args.api.output, &v, |_| {
        format!("{} scaled to {} replicas\n", args.name, args.replicas)
    })
}

pub fn promote(args: PromoteArgs) -> Result<(), Failure> {
    let v = post(
        &args.api,
        &format!("/v1/deployments/{}/promote", segment(&args.name)),
        json!({"full": args.full}),
    )?;
    print(args.api.output, &v, intervened)
}

pub fn abort(args: NameArgs) -> Result<(), Failure> {
    let v = post(
        &args.api,
        &format!("/v1/deployments/{}/abort", segment(&args.name)),
        json!({}),
    )?;
    print(args.api.output, &v, intervened)
}

/// What a promote or abort did: its events.
fn intervened(v: &Value) -> String {
    let mut out = String::new();
    for line in v["events"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{}: {}\n",
            v["deployment"].as_str().unwrap_or(""),
            line.as_str().unwrap_or("")
        ));
    }
    out
}

pub fn delete(args: NameArgs) -> Result<(), Failure> {
    let url = format!("{}/v1/deployments/{}", args.api.api, segment(&args.name));
    let v = runtime()?.block_on(call(reqwest::Method::DELETE, &url, None))?;
    print(args.api.output, &v, |_| {
        format!("{} deleted; its replicas are stopping\n", args.name)
    })
}

pub fn logs(args: LogsArgs) -> Result<(), Failure> {
    let v = get_json(
        &args.api,
        &format!(
            "/v1/deployments/{}/logs?tail={}",
            segment(&args.name),
            args.tail
        ),
    )?;
    print(args.api.output, &v, |v| {
        v.as_str().unwrap_or_default().to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_one_path_segment() {
        assert_eq!(segment("minilm-2"), "minilm-2");
        assert_eq!(segment("a/b"), "a%2Fb");
        assert_eq!(segment("x?y=1#z"), "x%3Fy%3D1%23z");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
