//! Rollouts as recorded state. The pipeline's rollout stage records the new
//! revision with the phase its rollout starts in ([`begin`]) and ends; from
//! then on the controller moves the phase on each tick ([`advance`]: the
//! planner's `step` on what it observed), and closes the run's rollout
//! stage when the rollout ends. Nothing waits in a task, so a control plane
//! killed mid-rollout goes on from the store when it starts again.

use modelship_orchestrator::now_ms;
use modelship_planner::{RolloutObserved, Step, first_phase, step};
use modelship_types::{Deployment, Phase, Progress, Revision, Run, RunStatus};

use crate::Ctx;

/// Records `new` (its number and cause are set here) as the revision `run`
/// rolls out with `replicas`, in the phase its strategy starts in; when
/// spec and model are unchanged, only the count changes and the phase
/// watches it converge. The run's rollout stage stays open: the controller
/// closes it. `run` is saved here, before the phase that names it, and must
/// not be saved by the caller afterwards.
pub(crate) fn begin(ctx: &Ctx, run: &mut Run, new: Revision, replicas: u32) -> anyhow::Result<()> {
    let store = &ctx.store;
    let name = new.spec.metadata.name.clone();
    let now = now_ms();
    let current = store.deployment(&name)?;
    let serving = match &current {
        Some(d) => store.revision(&name, d.revision)?,
        None => None,
    };
    let unchanged = serving
        .as_ref()
        .is_some_and(|r| r.spec == new.spec && r.artifact_digest == new.artifact_digest);
    let previous = current.as_ref().map(|d| d.revision);
    let created_at = current.as_ref().map_or(now, |d| d.created_at);
    let watch = |phase| Deployment {
        name: name.clone(),
        revision: previous.unwrap_or(1),
        replicas,
        phase,
        created_at,
        updated_at: now,
    };
    if unchanged {
        store.put_run(run)?;
        let progress = Progress {
            run: Some(run.id),
            previous,
            started_at: now,
            since: now,
            record: Vec::new(),
            ready: 0,
        };
        store.put_deployment(&watch(Phase::Rolling { progress }))?;
        ctx.wake.notify_one();
        return Ok(());
    }
    let number = store.last_revision_number(&name)? + 1;
    let revision = Revision {
        number,
        cause: format!("deploy (run {})", run.id),
        created_at: now,
        ..new
    };
    let phase = first_phase(
        &revision.spec.spec.rollout,
        revision.spec.spec.target,
        previous,
        Some(run.id),
        now,
    );
    let what = phase.name();
    run.revision = Some(number);
    store.put_run(run)?;
    store.put_revision(
        &Deployment {
            revision: number,
            ..watch(phase)
        },
        &revision,
    )?;
    ctx.event(
        &name,
        format!(
            "revision {number} created by run {}; {what} rollout",
            run.id
        ),
    );
    ctx.wake.notify_one();
    Ok(())
}

/// One tick of `d`'s rollout: the planner's next phase from what was
/// `seen`, [`record`]ed. Returns the deployment as it now stands.
pub(crate) fn advance(
    ctx: &Ctx,
    d: &Deployment,
    rev: &Revision,
    seen: &RolloutObserved,
    now: u64,
) -> anyhow::Result<Option<Deployment>> {
    match step(d, &rev.spec.spec.rollout, seen, now) {
        Some(s) => Ok(record(ctx, d, s, now)?.stored),
        None => Ok(Some(d.clone())),
    }
}

/// What became of a recorded step.
pub(crate) struct Recorded {
    /// The deployment as it now stands (`None`: removed).
    pub stored: Option<Deployment>,
    /// False when someone changed the deployment after `d` was read (a
    /// rollback, a delete, a scale won): the step was dropped.
    pub applied: bool,
}

/// Records step `s` decided from `d` (a controller tick's or an operator's):
/// only if nobody changed the deployment meanwhile, with its events and,
/// when the rollout ended, its run closed.
pub(crate) fn record(ctx: &Ctx, d: &Deployment, s: Step, now: u64) -> anyhow::Result<Recorded> {
    let name = &d.name;
    let stored = match &s.next {
        Some((revision, phase)) => {
            let mut applied = false;
            let stored = ctx.store.update_deployment(name, |cur| {
                applied = cur.revision == d.revision && cur.phase == d.phase;
                if applied {
                    cur.revision = *revision;
                    cur.phase = phase.clone();
                    cur.updated_at = now;
                }
                applied
            })?;
            if !applied {
                return Ok(Recorded {
                    stored,
                    applied: false,
                });
            }
            stored
        }
        None => {
            let deleted = ctx.store.delete_deployment_if(name, |cur| {
                cur.revision == d.revision && cur.phase == d.phase
            })?;
            if !deleted {
                return Ok(Recorded {
                    stored: ctx.store.deployment(name)?,
                    applied: false,
                });
            }
            None
        }
    };
    for line in s.events {
        ctx.event(name, line);
    }
    if let (Some(ended), Some(run)) = (s.ended, d.phase.run()) {
        end_run(ctx, name, run, ended);
    }
    ctx.wake.notify_one();
    Ok(Recorded {
        stored,
        applied: true,
    })
}

/// Closes run `id`'s open rollout stage: succeeded with the line, or failed
/// with why; records the outcome as an event. A run already closed is left.
pub(crate) fn end_run(ctx: &Ctx, deployment: &str, id: u64, outcome: Result<String, String>) {
    let closed = ctx.store.run(id).and_then(|run| {
        let Some(mut run) = run.filter(|r| r.status == RunStatus::Running) else {
            return Ok(None);
        };
        let now = now_ms();
        match &outcome {
            Ok(line) => {
                run.stage_succeeded(now, None, line.clone());
                run.succeed(now);
            }
            Err(why) => run.fail(now, why),
        }
        ctx.store.put_run(&run)?;
        Ok(Some(run))
    });
    match closed {
        Ok(Some(run)) => ctx.event(
            deployment,
            match &run.error {
                None => format!("run {id} succeeded"),
                Some(e) => format!("run {id} failed: {e}"),
            },
        ),
        Ok(None) => {}
        Err(e) => tracing::error!("cannot close run {id}: {e:#}"),
    }
}

/// Ends the rollout `d`'s phase carries because someone replaced it (a
/// rollback, a delete): its run fails, saying so.
pub(crate) fn supersede(ctx: &Ctx, d: &Deployment, why: &str) {
    if let Some(run) = d.phase.run() {
        end_run(
            ctx,
            &d.name,
            run,
            Err(format!("revision {}: {why}", d.revision)),
        );
    }
}
