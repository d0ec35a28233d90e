//! The commands that talk to a running control plane: `deploy`, `get`,
//! `status`, `history`, `rollback`, `scale`, `delete`, `logs`. Each is a
//! request to the API and a table (or `-o json`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use modelship_control::DeploymentSummary;
use modelship_types::{ModelDeployment, Replica, Revision, Run, RunStatus};
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
    api: String,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    output: Output,
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
    #[command(flatten)]
    api: Api,
}

#[derive(clap::Args)]
pub struct GetArgs {
    /// deployments | revisions | replicas | runs
    kind: Kind,
    /// One run's id (with `runs`), or a deployment's name (others).
    name: Option<String>,
    #[command(flatten)]
    api: Api,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    Deployments,
    Revisions,
    Replicas,
    Runs,
}

#[derive(clap::Args)]
pub struct NameArgs {
    name: String,
    #[command(flatten)]
    api: Api,
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

/// A request to the API; API errors come back as their message, a bad
/// request as a configuration failure (exit 64).
async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> Result<Value, Failure> {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| {
        Failure::User(anyhow::Error::new(e).context(format!(
            "cannot reach the control plane at {url}\nhint: start it with `modelship up`, or point --api / MODELSHIP_API at it"
        )))
    })?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .context("the control plane's answer broke off")?;
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
        let mut shown = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let run: Run = serde_json::from_value(
                call(reqwest::Method::GET, &format!("{api}/v1/runs/{id}"), None).await?,
            )
            .context("the control plane sent a run this CLI does not understand")?;
            if args.api.output == Output::Table {
                for s in run
                    .stages
                    .iter()
                    .skip(shown)
                    .filter(|s| s.status != RunStatus::Running)
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
            match run.status {
                RunStatus::Running => continue,
                RunStatus::Succeeded => {
                    return print(args.api.output, &run, |r| {
                        format!(
                            "run {} succeeded: {} revision {}\n",
                            r.id,
                            r.deployment,
                            r.revision.map_or("unchanged".into(), |n| n.to_string())
                        )
                    });
                }
                RunStatus::Failed => {
                    if args.api.output == Output::Json {
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
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

fn print<T: serde::Serialize>(
    output: Output,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> Result<(), Failure> {
    crate::print_output(output == Output::Json, value, text);
    Ok(())
}

fn get_json(api: &Api, path: &str) -> Result<Value, Failure> {
    let url = format!("{}{path}", api.api);
    runtime()?.block_on(call(reqwest::Method::GET, &url, None))
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v)
        .context("the control plane sent something this CLI does not understand")
        .map_err(Failure::User)
}

pub fn get(args: GetArgs) -> Result<(), Failure> {
    let filter = args
        .name
        .as_deref()
        .map(|n| format!("?deployment={n}"))
        .unwrap_or_default();
    let out = args.api.output;
    match args.kind {
        Kind::Deployments => {
            let list: Vec<DeploymentSummary> = parse(get_json(&args.api, "/v1/deployments")?)?;
            let list: Vec<_> = list
                .into_iter()
                .filter(|d| args.name.as_ref().is_none_or(|n| &d.name == n))
                .collect();
            print(out, &list, |l| {
                table(
                    &["NAME", "REVISION", "READY", "OLD", "MODEL"],
                    l.iter().map(|d| {
                        vec![
                            d.name.clone(),
                            d.revision.to_string(),
                            format!("{}/{}", d.ready, d.replicas),
                            d.old.to_string(),
                            d.model.clone(),
                        ]
                    }),
                )
            })
        }
        Kind::Revisions => {
            let list: Vec<Revision> =
                parse(get_json(&args.api, &format!("/v1/revisions{filter}"))?)?;
            print(out, &list, |l| {
                table(
                    &["DEPLOYMENT", "REVISION", "CAUSE", "MODEL"],
                    l.iter().map(|r| {
                        vec![
                            r.deployment.clone(),
                            r.number.to_string(),
                            r.cause.clone(),
                            r.artifact.display().to_string(),
                        ]
                    }),
                )
            })
        }
        Kind::Replicas => {
            let list: Vec<Replica> = parse(get_json(&args.api, &format!("/v1/replicas{filter}"))?)?;
            print(out, &list, |l| {
                table(
                    &[
                        "REPLICA",
                        "DEPLOYMENT",
                        "REVISION",
                        "STATE",
                        "ENDPOINT",
                        "PID",
                        "RESTARTS",
                    ],
                    l.iter().map(|r| {
                        vec![
                            r.id.clone(),
                            r.deployment.clone(),
                            r.revision.to_string(),
                            r.state.as_str().to_owned(),
                            r.endpoint.clone(),
                            r.pid.map_or("-".into(), |p| p.to_string()),
                            r.restarts.to_string(),
                        ]
                    }),
                )
            })
        }
        Kind::Runs => match args.name {
            Some(id) => {
                let id: u64 = id
                    .parse()
                    .map_err(|_| Failure::Config(anyhow::anyhow!("`{id}` is not a run id")))?;
                let run: Run = parse(get_json(&args.api, &format!("/v1/runs/{id}"))?)?;
                print(out, &run, |r| {
                    let mut s = format!(
                        "run {} of {}: {:?}{}\n",
                        r.id,
                        r.deployment,
                        r.status,
                        r.error
                            .as_ref()
                            .map_or(String::new(), |e| format!(" — {e}"))
                    );
                    for st in &r.stages {
                        s += &format!(
                            "  {:<9} {:?} {:>8} ms  in {}  out {}\n",
                            st.name,
                            st.status,
                            st.duration_ms.unwrap_or(0),
                            short(&st.inputs_digest),
                            st.outputs_digest.as_deref().map_or("-", short)
                        );
                        for line in st.detail.lines() {
                            s += &format!("      {line}\n");
                        }
                    }
                    s
                })
            }
            None => {
                let list: Vec<Run> = parse(get_json(&args.api, "/v1/runs")?)?;
                print(out, &list, |l| {
                    table(
                        &["RUN", "DEPLOYMENT", "STATUS", "REVISION", "ERROR"],
                        l.iter().map(|r| {
                            vec![
                                r.id.to_string(),
                                r.deployment.clone(),
                                format!("{:?}", r.status).to_lowercase(),
                                r.revision.map_or("-".into(), |n| n.to_string()),
                                r.error.as_deref().map_or("", first_line).to_owned(),
                            ]
                        }),
                    )
                })
            }
        },
    }
}

/// Columns as wide as their widest cell, two spaces apart.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| h.to_string()).collect())
        .chain(rows)
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

pub fn status(args: NameArgs) -> Result<(), Failure> {
    let v = get_json(&args.api, &format!("/v1/deployments/{}", args.name))?;
    let cp = get_json(&args.api, "/v1/status")?;
    print(args.api.output, &v, |v| {
        let d = &v["deployment"];
        let mut s = format!(
            "{}: revision {}, {}/{} ready, {} old\nmodel: {}\nresource limits: {}\n\nreplicas\n",
            d["name"].as_str().unwrap_or_default(),
            d["revision"],
            d["ready"],
            d["replicas"],
            d["old"],
            d["model"].as_str().unwrap_or_default(),
            cp["resource_limits"].as_str().unwrap_or_default()
        );
        for r in v["replicas"].as_array().into_iter().flatten() {
            s += &format!(
                "  {:<28} rev {:<3} {:<12} {}\n",
                r["id"].as_str().unwrap_or_default(),
                r["revision"].as_u64().unwrap_or_default(),
                r["state"].as_str().unwrap_or_default(),
                r["endpoint"].as_str().unwrap_or_default()
            );
        }
        s += "\nrecent events\n";
        for e in v["events"].as_array().into_iter().flatten() {
            s += &format!("  {}\n", e["message"].as_str().unwrap_or_default());
        }
        s
    })
}

pub fn history(args: NameArgs) -> Result<(), Failure> {
    let v = get_json(&args.api, &format!("/v1/deployments/{}/history", args.name))?;
    print(args.api.output, &v, |v| {
        let mut s = format!("{:>8}  {:<30} {}\n", "REVISION", "CAUSE", "MODEL");
        for r in v["revisions"].as_array().into_iter().flatten() {
            let mark = if r["serving"].as_bool() == Some(true) {
                " (serving)"
            } else {
                ""
            };
            s += &format!(
                "{:>8}  {:<30} {}{mark}\n",
                r["revision"].as_u64().unwrap_or_default(),
                r["cause"].as_str().unwrap_or_default(),
                r["artifact"].as_str().unwrap_or_default()
            );
        }
        s
    })
}

fn post(api: &Api, path: &str, body: Value) -> Result<Value, Failure> {
    let url = format!("{}{path}", api.api);
    runtime()?.block_on(call(reqwest::Method::POST, &url, Some(body)))
}

pub fn rollback(args: RollbackArgs) -> Result<(), Failure> {
    let v = post(
        &args.api,
        &format!("/v1/deployments/{}/rollback", args.name),
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
        &format!("/v1/deployments/{}/scale", args.name),
        json!({"replicas": args.replicas}),
    )?;
    print(args.api.output, &v, |_| {
        format!("{} scaled to {} replicas\n", args.name, args.replicas)
    })
}

pub fn delete(args: NameArgs) -> Result<(), Failure> {
    let url = format!("{}/v1/deployments/{}", args.api.api, args.name);
    let v = runtime()?.block_on(call(reqwest::Method::DELETE, &url, None))?;
    print(args.api.output, &v, |_| {
        format!("{} deleted; its replicas are stopping\n", args.name)
    })
}

pub fn logs(args: LogsArgs) -> Result<(), Failure> {
    let v = get_json(
        &args.api,
        &format!("/v1/deployments/{}/logs?tail={}", args.name, args.tail),
    )?;
    print(args.api.output, &v, |v| {
        v.as_str().unwrap_or_default().to_owned()
    })
}

#[derive(clap::Subcommand)]
pub enum RenderCommand {
    /// An HAProxy configuration in front of a deployment's ready replicas.
    Haproxy(RenderArgs),
    /// An nginx configuration in front of a deployment's ready replicas.
    Nginx(RenderArgs),
}

#[derive(clap::Args)]
pub struct RenderArgs {
    name: String,
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:8081")]
    bind: String,
    #[command(flatten)]
    api: Api,
}

pub fn render(command: RenderCommand) -> Result<(), Failure> {
    let (args, haproxy) = match command {
        RenderCommand::Haproxy(a) => (a, true),
        RenderCommand::Nginx(a) => (a, false),
    };
    let v = get_json(&args.api, &format!("/v1/deployments/{}", args.name))?;
    let d: DeploymentSummary = parse(v["deployment"].clone())?;
    let replicas: Vec<Replica> = parse(v["replicas"].clone())?;
    let ready: Vec<(String, String, u32)> = replicas
        .iter()
        .filter(|r| r.state == modelship_types::ReplicaState::Ready)
        .map(|r| (r.id.clone(), r.endpoint.clone(), r.revision))
        .collect();
    if ready.is_empty() {
        return Err(Failure::User(anyhow::anyhow!(
            "`{}` has no ready replica to render",
            args.name
        )));
    }
    // The gateway's split: the rollout's percentages while a stable revision
    // runs beside the new one, else equal per ready replica.
    let count = |rev: u32| ready.iter().filter(|r| r.2 == rev).count() as u32;
    let percent_of = |rev: u32| match (d.stable, d.traffic) {
        (Some(_), Some(t)) if rev == d.revision => t.min(100),
        (Some(_), Some(t)) => 100 - t.min(100),
        _ => count(rev),
    };
    let upstreams = modelship_control::render::weights(&ready, percent_of);
    let text = if haproxy {
        modelship_control::render::haproxy(&args.name, &args.bind, &upstreams)
    } else {
        modelship_control::render::nginx(&args.name, &args.bind, &upstreams)
    };
    print!("{text}");
    Ok(())
}
