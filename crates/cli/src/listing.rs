//! The listing commands: `get`, `status`, `history`, as tables or
//! `-o json`.

use modelship_control::DeploymentSummary;
use modelship_types::{Phase, Replica, Revision, Run};

use crate::Failure;
use crate::ops::{Api, NameArgs, first_line, get_json, parse, print};

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
                    &[
                        "NAME", "REVISION", "PHASE", "READY", "PENDING", "OLD", "MODEL",
                    ],
                    l.iter().map(|d| {
                        vec![
                            d.name.clone(),
                            d.revision.to_string(),
                            phase(d),
                            format!("{}/{}", d.ready, d.replicas),
                            d.pending.to_string(),
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
                        "REASON",
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
                            r.reason.clone().unwrap_or_default(),
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

/// Where a deployment's rollout stands, in a few words.
fn phase(d: &DeploymentSummary) -> String {
    let run = d
        .phase
        .run()
        .map_or(String::new(), |r| format!(" (run {r})"));
    match (&d.phase, d.stable, d.traffic) {
        (Phase::Canary { .. }, Some(stable), Some(t)) => {
            format!("canary {t}% (stable {stable}){run}")
        }
        (Phase::Shadow { .. }, Some(stable), _) => format!("shadowing {stable}{run}"),
        (Phase::BlueGreen { switched_at, .. }, Some(stable), _) => match switched_at {
            Some(_) => format!("blue-green switched (old {stable} kept){run}"),
            None => format!("blue-green starting (serving {stable}){run}"),
        },
        (p, _, _) => format!("{}{run}", p.name()),
    }
}

/// The rollout step under analysis: each revision's client traffic and the
/// live comparison so far.
fn analysis(a: &serde_json::Value) -> String {
    let traffic = |w: &serde_json::Value| {
        format!(
            "{} requests, {} errors",
            w["requests"].as_u64().unwrap_or(0),
            w["errors"].as_u64().unwrap_or(0)
        )
    };
    let live = serde_json::from_value::<modelship_types::LiveQuality>(a["live"].clone())
        .map(|q| q.summary())
        .unwrap_or_default();
    format!(
        "analysis: new revision {}; stable {}\nlive: {live}\n",
        traffic(&a["canary"]),
        traffic(&a["stable"]),
    )
}

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    &hex[..hex.len().min(12)]
}

pub fn status(args: NameArgs) -> Result<(), Failure> {
    let v = get_json(
        &args.api,
        &format!("/v1/deployments/{}", crate::ops::segment(&args.name)),
    )?;
    let cp = get_json(&args.api, "/v1/status")?;
    print(args.api.output, &v, |v| {
        let d = &v["deployment"];
        let target = d["target"].as_str().unwrap_or("local");
        // How limits are enforced is known for local replicas; the engines
        // enforce their own.
        let runs_on = match d["image"].as_str() {
            Some(image) => format!("target: {target}, image {image}"),
            None => format!(
                "target: {target}\nresource limits: {}",
                cp["resource_limits"].as_str().unwrap_or_default()
            ),
        };
        let rollout = serde_json::from_value::<DeploymentSummary>(d.clone())
            .map(|d| phase(&d))
            .unwrap_or_default();
        let mut s = format!(
            "{}: revision {}, {rollout}, {}/{} ready, {} pending, {} old\nmodel: {}\n{runs_on}\n\n",
            d["name"].as_str().unwrap_or_default(),
            d["revision"],
            d["ready"],
            d["replicas"],
            d["pending"],
            d["old"],
            d["model"].as_str().unwrap_or_default(),
        );
        if let Some(a) = v.get("analysis").filter(|a| !a.is_null()) {
            s += &analysis(a);
            s += "\n";
        }
        s += "replicas\n";
        for r in v["replicas"].as_array().into_iter().flatten() {
            let state = r["state"].as_str().unwrap_or_default();
            let at = match r["reason"].as_str() {
                Some(why) => why,
                None => r["endpoint"].as_str().unwrap_or_default(),
            };
            s += &format!(
                "  {:<28} rev {:<3} {state:<12} {at}\n",
                r["id"].as_str().unwrap_or_default(),
                r["revision"].as_u64().unwrap_or_default(),
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
    let v = get_json(
        &args.api,
        &format!(
            "/v1/deployments/{}/history",
            crate::ops::segment(&args.name)
        ),
    )?;
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
