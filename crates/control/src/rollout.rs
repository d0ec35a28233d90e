//! The rollout stage: record the new revision, then move traffic to it by
//! the spec's strategy — rolling (the controller replaces replicas within
//! the surge budget), canary (weighted steps, each judged against the stable
//! revision), blue-green (switch when the new revision is ready in full) —
//! and roll back, with the reason recorded, when it fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use modelship_gateway::StatsSnapshot;
use modelship_orchestrator::now_ms;
use modelship_planner::{Verdict, Window, judge_canary};
use modelship_types::{Deployment, ModelDeployment, ReplicaState, Revision, Strategy, Target};

use crate::Ctx;

/// Restarts of one new replica that count as a crash loop.
const CRASH_LOOP_RESTARTS: u32 = 3;
/// Longest the new revision may take to get ready.
const READY_TIMEOUT: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(200);

/// Records `new` (its number and cause are set here) and rolls it out.
/// Returns the revision created (none when spec and model are unchanged)
/// and a line for the record.
pub(crate) async fn rollout(
    ctx: &Arc<Ctx>,
    run_id: u64,
    new: Revision,
    replicas: u32,
) -> anyhow::Result<(Option<u32>, String)> {
    let store = &ctx.store;
    let spec = &new.spec;
    let name = &spec.metadata.name;
    let now = now_ms();
    let current = store.deployment(name)?;
    let serving = match &current {
        Some(d) => store.revision(name, d.revision)?,
        None => None,
    };
    let unchanged = serving
        .as_ref()
        .is_some_and(|r| r.spec == *spec && r.artifact_digest == new.artifact_digest);
    let previous = current.as_ref().map(|d| d.revision);
    let started = Instant::now();
    let base = Deployment {
        name: name.clone(),
        revision: previous.unwrap_or(1),
        replicas,
        stable: None,
        traffic: None,
        new_replicas: None,
        created_at: current.as_ref().map_or(now, |d| d.created_at),
        updated_at: now,
    };
    if unchanged {
        store.put_deployment(&base)?;
        ctx.wake.notify_one();
        let n = base.revision;
        wait_serving(ctx, spec, name, n)
            .await
            .map_err(Failed::into_error)?;
        return Ok((
            None,
            format!("unchanged: revision {n} serves with {replicas} ready replica(s)"),
        ));
    }
    let number = store.last_revision_number(name)? + 1;
    let revision = Revision {
        number,
        cause: format!("deploy (run {run_id})"),
        created_at: now,
        ..new.clone()
    };
    let strategy = match previous {
        // The cluster's Deployment rolls; the split a canary needs is the
        // gateway's, which a cluster's traffic does not pass through.
        _ if spec.spec.target == Target::Kubernetes => Strategy::Rolling,
        Some(_) => spec.spec.rollout.strategy,
        None => Strategy::Rolling, // nothing to compare with or switch from
    };
    let first = match (strategy, previous) {
        (Strategy::Canary, Some(p)) => {
            canary_state(&base, number, p, spec.spec.rollout.canary.steps[0])
        }
        (Strategy::BlueGreen, Some(p)) => Deployment {
            revision: number,
            stable: Some(p),
            traffic: Some(0),
            new_replicas: Some(replicas),
            ..base.clone()
        },
        _ => Deployment {
            revision: number,
            ..base.clone()
        },
    };
    store.put_revision(&first, &revision)?;
    ctx.event(
        name,
        format!("revision {number} created by run {run_id}; {strategy:?} rollout"),
    );
    ctx.wake.notify_one();

    let attempt = match (strategy, previous) {
        (Strategy::Canary, Some(p)) => canary(ctx, spec, &base, number, p).await,
        (Strategy::BlueGreen, Some(p)) => blue_green(ctx, spec, &base, number, p).await,
        _ => wait_serving(ctx, spec, name, number)
            .await
            .map(|()| String::new()),
    };
    match attempt {
        Ok(steps) => Ok((
            Some(number),
            format!(
                "revision {number} serves with {replicas} ready replica(s) after {:.1} s{steps}",
                started.elapsed().as_secs_f64()
            ),
        )),
        Err(Failed::Superseded(why)) => anyhow::bail!("revision {number}: {why}"),
        Err(Failed::Revision(why)) => {
            let back = roll_back(ctx, &base, number, previous)?;
            anyhow::bail!("revision {number}: {why}; {back}")
        }
        Err(Failed::Other(e)) => Err(e),
    }
}

/// Why a rollout stopped.
enum Failed {
    /// The new revision is at fault: roll back.
    Revision(String),
    /// Someone else changed the deployment meanwhile: leave it.
    Superseded(String),
    Other(anyhow::Error),
}

impl Failed {
    fn into_error(self) -> anyhow::Error {
        match self {
            Failed::Revision(why) | Failed::Superseded(why) => anyhow::anyhow!(why),
            Failed::Other(e) => e,
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failed {
    fn from(e: E) -> Self {
        Failed::Other(e.into())
    }
}

fn canary_state(base: &Deployment, number: u32, stable: u32, percent: u32) -> Deployment {
    Deployment {
        revision: number,
        stable: Some(stable),
        traffic: Some(percent),
        // The canary's share of replicas, at least one; the gateway splits
        // traffic by weight whatever the counts.
        new_replicas: Some(((base.replicas * percent).div_ceil(100)).max(1)),
        updated_at: now_ms(),
        ..base.clone()
    }
}

async fn canary(
    ctx: &Arc<Ctx>,
    spec: &ModelDeployment,
    base: &Deployment,
    number: u32,
    stable: u32,
) -> Result<String, Failed> {
    let name = &base.name;
    let c = &spec.spec.rollout.canary;
    let mut record = String::new();
    for (i, &percent) in c.steps.iter().enumerate() {
        let state = canary_state(base, number, stable, percent);
        if i > 0 {
            put(ctx, &state, number)?;
        }
        wait_ready(ctx, name, number, state.new_replicas.unwrap_or(1)).await?;
        let before = ctx.gateway.stats();
        tokio::time::sleep(c.interval.0).await;
        still_current(ctx, name, number)?;
        let after = ctx.gateway.stats();
        let (cw, sw) = (
            window(&after, &before, name, number),
            window(&after, &before, name, stable),
        );
        match judge_canary(&cw, &sw, c) {
            Verdict::Promote(why) => {
                ctx.event(name, format!("canary step {percent}% passed: {why}"));
                record.push_str(&format!("\n  {percent}%: {why}"));
            }
            Verdict::RollBack(why) => {
                return Err(Failed::Revision(format!("canary step {percent}%: {why}")));
            }
        }
    }
    // Promoted: the stable revision's replicas are replaced by rolling.
    retire_stable(ctx, base, number).await?;
    Ok(record)
}

async fn blue_green(
    ctx: &Arc<Ctx>,
    spec: &ModelDeployment,
    base: &Deployment,
    number: u32,
    old: u32,
) -> Result<String, Failed> {
    let name = &base.name;
    wait_ready(ctx, name, number, base.replicas).await?;
    let switched = Deployment {
        revision: number,
        stable: Some(old),
        traffic: Some(100),
        new_replicas: Some(base.replicas),
        updated_at: now_ms(),
        ..base.clone()
    };
    put(ctx, &switched, number)?;
    let delay = spec.spec.rollout.scale_down_delay;
    ctx.event(name,
        format!(
            "switched all traffic to revision {number}; revision {old} stays {delay} for an instant rollback"
        ),
    );
    tokio::time::sleep(delay.0).await;
    still_current(ctx, name, number)?;
    retire_stable(ctx, base, number).await?;
    Ok(format!(
        "; switched when {} replica(s) were ready, revision {old} kept {delay}",
        base.replicas
    ))
}

/// Ends a canary or blue-green rollout: `number` alone serves, the stable
/// revision's replicas go (by rolling), and this waits until they have.
async fn retire_stable(ctx: &Ctx, base: &Deployment, number: u32) -> Result<(), Failed> {
    let alone = Deployment {
        revision: number,
        updated_at: now_ms(),
        ..base.clone()
    };
    put(ctx, &alone, number)?;
    wait_converged(ctx, &base.name, number).await
}

/// Writes the deployment's new state unless someone changed it meanwhile.
/// The check and the write are one step: a rollback or delete in between
/// wins, and this rollout stops.
fn put(ctx: &Ctx, state: &Deployment, number: u32) -> Result<(), Failed> {
    let stored = ctx.store.update_deployment(&state.name, |d| {
        let current = d.revision == number;
        if current {
            *d = state.clone();
        }
        current
    })?;
    match stored {
        None => Err(Failed::Superseded(format!(
            "{} was deleted during its rollout",
            state.name
        ))),
        Some(d) if d.revision != number => Err(Failed::Superseded(format!(
            "revision {} replaced it during its rollout",
            d.revision
        ))),
        Some(_) => {
            ctx.wake.notify_one();
            Ok(())
        }
    }
}

fn still_current(ctx: &Ctx, name: &str, number: u32) -> Result<(), Failed> {
    match ctx.store.deployment(name)? {
        None => Err(Failed::Superseded(format!(
            "{name} was deleted during its rollout"
        ))),
        Some(d) if d.revision != number => Err(Failed::Superseded(format!(
            "revision {} replaced it during its rollout",
            d.revision
        ))),
        Some(_) => Ok(()),
    }
}

/// What a revision answered between two snapshots.
fn window(after: &StatsSnapshot, before: &StatsSnapshot, name: &str, revision: u32) -> Window {
    let Some(now) = after.get(name, revision) else {
        return Window::default();
    };
    let d = now.since(before.get(name, revision));
    Window {
        requests: d.requests,
        errors: d.errors,
        p99_ms: d.p99_ms(),
    }
}

/// Waits until `count` replicas of `number` are ready; fails on a crash
/// loop or a timeout.
async fn wait_ready(ctx: &Ctx, name: &str, number: u32, count: u32) -> Result<(), Failed> {
    let started = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        still_current(ctx, name, number)?;
        let mine: Vec<_> = ctx
            .store
            .replicas()?
            .into_iter()
            .filter(|r| r.deployment == name && r.revision == number)
            .collect();
        if mine
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
            .count()
            >= count as usize
        {
            return Ok(());
        }
        if let Some(r) = mine.iter().find(|r| r.restarts >= CRASH_LOOP_RESTARTS) {
            return Err(Failed::Revision(format!(
                "replica {} exited {} times",
                r.id,
                r.restarts + 1
            )));
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(Failed::Revision(format!(
                "not ready after {} s",
                READY_TIMEOUT.as_secs()
            )));
        }
    }
}

/// Waits until the deployment runs only `number`, all of it ready.
async fn wait_converged(ctx: &Ctx, name: &str, number: u32) -> Result<(), Failed> {
    let started = Instant::now();
    loop {
        let Some(d) = ctx.store.deployment(name)? else {
            return Err(Failed::Superseded(format!(
                "{name} was deleted during its rollout"
            )));
        };
        wait_ready(ctx, name, number, d.replicas).await?;
        let others = ctx
            .store
            .replicas()?
            .iter()
            .filter(|r| r.deployment == name && r.revision != number)
            .count();
        if others == 0 {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(Failed::Revision(format!(
                "old replicas still running after {} s",
                READY_TIMEOUT.as_secs()
            )));
        }
    }
}

/// Waits until `number` alone serves: its replicas ready and no others, or,
/// on Kubernetes, its Deployment rolled out.
async fn wait_serving(
    ctx: &Ctx,
    spec: &ModelDeployment,
    name: &str,
    number: u32,
) -> Result<(), Failed> {
    if spec.spec.target == Target::Kubernetes {
        return crate::cluster::wait(ctx, name, number, READY_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(Failed::Revision);
    }
    wait_converged(ctx, name, number).await
}

/// Puts the previous revision back (or removes a deployment that never
/// served); returns what it did, for the record.
fn roll_back(
    ctx: &Ctx,
    base: &Deployment,
    failed: u32,
    previous: Option<u32>,
) -> anyhow::Result<String> {
    let store = &ctx.store;
    let name = &base.name;
    let message = match previous {
        Some(prev) if prev != failed => {
            // Only if nothing else (a rollback, a newer deploy) moved it.
            let back = Deployment {
                revision: prev,
                updated_at: now_ms(),
                ..base.clone()
            };
            let stored = store.update_deployment(name, |d| {
                let still = d.revision == failed;
                if still {
                    *d = back;
                }
                still
            })?;
            match stored {
                Some(d) if d.revision == prev => format!("rolled back to revision {prev}"),
                _ => "something else replaced it meanwhile: left as it is".to_owned(),
            }
        }
        _ => {
            store.delete_deployment(name)?;
            "nothing served before it: the deployment was removed".to_owned()
        }
    };
    ctx.event(
        name,
        format!("rollout of revision {failed} failed: {message}"),
    );
    ctx.wake.notify_one();
    Ok(message)
}
