//! The controller loop: observe every replica, record what changed, ask the
//! planner what to do, do it, and tell the gateway what is ready. Runs every
//! half second, and at once when the API changes something.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use modelship_gateway::{Abort, Route, Share};
use modelship_orchestrator::{Liveness, ReplicaSpec, now_ms};
use modelship_planner::{Action, Desired, Sample, ScalerState, autoscale, reconcile};
use modelship_types::{Replica, ReplicaState, Target};

use crate::Ctx;

/// How often the loop runs when nothing wakes it.
const PERIOD: Duration = Duration::from_millis(500);
/// How long a stopping replica may drain before it is killed.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

pub(crate) struct Controller {
    ctx: Arc<Ctx>,
    /// Replicas with a stop in flight, so a tick does not stop them twice.
    stopping: Arc<Mutex<HashSet<String>>>,
    /// Each autoscaled deployment's samples and panic state.
    scalers: Mutex<HashMap<String, ScalerState>>,
    /// Swarm tasks as last observed, published beside the other replicas.
    swarm_seen: Mutex<Vec<Replica>>,
}

impl Controller {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Controller {
        Controller {
            ctx,
            stopping: Arc::default(),
            scalers: Mutex::default(),
            swarm_seen: Mutex::default(),
        }
    }

    pub(crate) async fn run(self) {
        loop {
            if let Err(e) = self.tick().await {
                tracing::error!("controller: {e:#}");
            }
            tokio::select! {
                _ = tokio::time::sleep(PERIOD) => {}
                _ = self.ctx.wake.notified() => {}
            }
        }
    }

    async fn tick(&self) -> anyhow::Result<()> {
        let store = &self.ctx.store;
        let (swarm_stored, replicas): (Vec<Replica>, Vec<Replica>) = store
            .replicas()?
            .into_iter()
            .partition(|r| r.target == Target::Swarm);
        let seen = join_all(replicas.iter().map(|r| self.observe(r))).await;
        let now = now_ms();
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        let mut current = Vec::with_capacity(replicas.len());
        for (r, live) in replicas.into_iter().zip(seen) {
            match next_state(&r, live) {
                None => {
                    removed.push(r.id.clone());
                    continue;
                }
                Some(state) if state != r.state => {
                    let mut r2 = r.clone();
                    r2.state = state;
                    match state {
                        ReplicaState::Exited => {
                            r2.exited_at = Some(now);
                            self.ctx
                                .event(&r.deployment, format!("replica {} exited", r.id));
                        }
                        ReplicaState::Ready => self.ctx.event(
                            &r.deployment,
                            format!("replica {} ready on {}", r.id, r.endpoint),
                        ),
                        _ => {}
                    }
                    changed.push(r2.clone());
                    current.push(r2);
                }
                Some(_) => current.push(r),
            }
        }
        store.update_replicas(&changed, &removed)?;

        // Terminating replicas without a stop in flight (the control plane
        // restarted mid-stop): stop them again.
        for r in current
            .iter()
            .filter(|r| r.state == ReplicaState::Terminating)
        {
            self.stop(r.clone());
        }

        self.autoscale(now)?;
        let mut by_target: HashMap<Target, Vec<Desired>> = HashMap::new();
        for (d, target) in self.desired()? {
            by_target.entry(target).or_default().push(d);
        }
        let mut take = |t| by_target.remove(&t).unwrap_or_default();
        let (swarm, kubernetes) = (take(Target::Swarm), take(Target::Kubernetes));
        self.engine_passes(&swarm, &kubernetes, swarm_stored).await;
        // Local processes and Docker containers, one replica at a time.
        let mut desired = take(Target::Local);
        desired.extend(take(Target::Docker));
        let actions = reconcile(&desired, &current, now);
        for action in actions {
            // One action failing (a replica that cannot be spawned) must not
            // keep the others from happening; the next tick tries again.
            let what = format!("{action:?}");
            if let Err(e) = self.apply(action, &mut current).await {
                tracing::error!("controller: {what}: {e:#}");
            }
        }
        self.publish(&current);
        Ok(())
    }

    /// Samples each autoscaled deployment's in-flight requests and sets its
    /// replica count from the decision. Not during a canary or blue-green
    /// rollout, whose replica counts the rollout owns.
    fn autoscale(&self, now: u64) -> anyhow::Result<()> {
        let store = &self.ctx.store;
        let mut scalers = self.scalers.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = HashSet::new();
        for d in store.deployments()? {
            let Some(spec) = store
                .revision(&d.name, d.revision)?
                .and_then(|r| r.spec.spec.autoscale)
            else {
                continue;
            };
            seen.insert(d.name.clone());
            if d.stable.is_some() {
                continue;
            }
            let state = scalers.entry(d.name.clone()).or_default();
            let concurrency = self.ctx.gateway.in_flight(&d.name) as f64;
            state.observe(
                &spec,
                Sample {
                    at_ms: now,
                    concurrency,
                },
            );
            let decision = autoscale(&spec, state, now, d.replicas);
            if decision.replicas != d.replicas {
                // Only the count changes, and only if the revision is still
                // the one decided for (a rollout may have moved meanwhile).
                let from = d.replicas;
                let updated = store.update_deployment(&d.name, |now_d| {
                    let same = now_d.revision == d.revision && now_d.stable.is_none();
                    if same {
                        now_d.replicas = decision.replicas;
                        now_d.updated_at = now;
                    }
                    same
                })?;
                if updated.is_some_and(|u| u.replicas == decision.replicas) {
                    self.ctx.event(
                        &d.name,
                        format!(
                            "autoscaled from {from} to {} replicas: {}",
                            decision.replicas, decision.reason
                        ),
                    );
                }
            }
        }
        scalers.retain(|name, _| seen.contains(name));
        Ok(())
    }

    /// The passes over engines that run replicas themselves: Kubernetes
    /// (apply what changed, delete what is gone) and Swarm (scale services,
    /// read tasks back). Each runs while it has something to do.
    async fn engine_passes(
        &self,
        swarm: &[Desired],
        kubernetes: &[Desired],
        swarm_stored: Vec<Replica>,
    ) {
        let applied = !self
            .ctx
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        if (!kubernetes.is_empty() || applied)
            && let Err(e) = crate::cluster::pass(&self.ctx, kubernetes).await
        {
            tracing::error!("kubernetes: {e:#}");
        }
        if !swarm.is_empty() || !swarm_stored.is_empty() || self.ctx.targets.swarm_in_use() {
            self.swarm(swarm, swarm_stored).await;
        }
    }

    /// Runs the Swarm pass and records its tasks; when Swarm cannot be
    /// reached, the last observation stands.
    async fn swarm(&self, desired: &[Desired], stored: Vec<Replica>) {
        let fresh = match crate::swarm::pass(&self.ctx, desired, &stored).await {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!("swarm: {e:#}");
                return;
            }
        };
        for r in &fresh {
            let before = stored.iter().find(|s| s.id == r.id);
            if r.state == ReplicaState::Ready
                && before.is_none_or(|b| b.state != ReplicaState::Ready)
            {
                self.ctx.event(
                    &r.deployment,
                    format!("replica {} ready on {}", r.id, r.endpoint),
                );
            }
        }
        let changed: Vec<Replica> = fresh
            .iter()
            .filter(|r| !stored.contains(r))
            .cloned()
            .collect();
        let removed: Vec<String> = stored
            .iter()
            .filter(|s| !fresh.iter().any(|r| r.id == s.id))
            .map(|s| s.id.clone())
            .collect();
        if let Err(e) = self.ctx.store.update_replicas(&changed, &removed) {
            tracing::error!("swarm: cannot record tasks: {e:#}");
        }
        *self.swarm_seen.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    /// Each deployment's desired state and the target its serving revision runs on.
    fn desired(&self) -> anyhow::Result<Vec<(Desired, Target)>> {
        let store = &self.ctx.store;
        let mut out = Vec::new();
        for d in store.deployments()? {
            let Some(rev) = store.revision(&d.name, d.revision)? else {
                continue;
            };
            // During a canary or blue-green rollout the stable revision
            // keeps the deployment's count; the new one runs its share.
            let (replicas, stable) = match d.stable {
                Some(s) => (d.new_replicas.unwrap_or(d.replicas), Some((s, d.replicas))),
                None => (d.replicas, None),
            };
            out.push((
                Desired {
                    deployment: d.name,
                    revision: d.revision,
                    replicas,
                    rollout: rev.spec.spec.rollout,
                    stable,
                },
                rev.spec.spec.target,
            ));
        }
        Ok(out)
    }

    async fn apply(&self, action: Action, current: &mut Vec<Replica>) -> anyhow::Result<()> {
        let store = &self.ctx.store;
        match action {
            Action::Start {
                deployment,
                revision,
            } => {
                let id = format!("{deployment}-{revision}-{}", suffix());
                let replica = self.start(&deployment, revision, &id, 0).await?;
                self.ctx.event(
                    &deployment,
                    format!("started replica {id} (revision {revision})"),
                );
                store.update_replicas(std::slice::from_ref(&replica), &[])?;
                current.push(replica);
            }
            Action::Restart { replica } => {
                let Some(old) = current.iter_mut().find(|r| r.id == replica) else {
                    return Ok(());
                };
                let restarts = old.restarts + 1;
                let fresh = self
                    .start(&old.deployment, old.revision, &old.id, restarts)
                    .await?;
                self.ctx.event(
                    &old.deployment,
                    format!("restarted replica {replica} (restart {restarts})"),
                );
                store.update_replicas(std::slice::from_ref(&fresh), &[])?;
                *old = fresh;
            }
            Action::Stop { replica } => {
                let Some(r) = current.iter_mut().find(|r| r.id == replica) else {
                    return Ok(());
                };
                r.state = ReplicaState::Terminating;
                store.update_replicas(std::slice::from_ref(r), &[])?;
                self.ctx
                    .event(&r.deployment.clone(), format!("stopping replica {replica}"));
                let r = r.clone();
                // Out of the gateway before it is asked to exit.
                self.publish(current);
                self.stop(r);
            }
        }
        Ok(())
    }

    async fn start(
        &self,
        deployment: &str,
        revision: u32,
        id: &str,
        restarts: u32,
    ) -> anyhow::Result<Replica> {
        let rev = self
            .ctx
            .store
            .revision(deployment, revision)?
            .ok_or_else(|| anyhow::anyhow!("{deployment} has no revision {revision}"))?;
        let spec = ReplicaSpec {
            id: id.to_owned(),
            deployment: deployment.to_owned(),
            revision,
            // Containers find the model where the image put it.
            artifact: match &rev.image {
                Some(_) => modelship_package::ImageSpec::model_in_image(&rev.artifact).into(),
                None => rev.artifact.clone(),
            },
            image: rev.image.clone(),
            limits: rev.spec.spec.serving,
            cpu: rev.spec.spec.resources.cpu,
            memory: memory_limit(&rev),
            api_key: self.ctx.replica_key.clone(),
        };
        let target = rev.spec.spec.target;
        let orchestrator = self.ctx.targets.get(target).await?;
        let mut replica = orchestrator.start(&spec, restarts).await?;
        replica.target = target;
        Ok(replica)
    }

    /// What the replica's orchestrator sees; an orchestrator that cannot be
    /// reached (the Docker engine is down) reports no change rather than
    /// every replica gone.
    async fn observe(&self, r: &Replica) -> Liveness {
        match self.ctx.targets.get(r.target).await {
            Ok(o) => o.observe(r).await,
            Err(e) => {
                tracing::warn!(replica = %r.id, "{e:#}");
                match r.state {
                    ReplicaState::Ready => Liveness::Ready,
                    _ => Liveness::Running,
                }
            }
        }
    }

    /// Drains and removes a replica in the background.
    fn stop(&self, r: Replica) {
        if !self
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(r.id.clone())
        {
            return;
        }
        let ctx = Arc::clone(&self.ctx);
        let stopping = Arc::clone(&self.stopping);
        tokio::spawn(async move {
            let stopped = match ctx.targets.get(r.target).await {
                Ok(o) => o.stop(&r, DRAIN_GRACE).await.map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            if let Err(e) = stopped {
                // Kept in the store (Terminating) so the next tick tries again.
                tracing::warn!("{e:#}");
                stopping
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&r.id);
                return;
            }
            if let Err(e) = ctx.store.update_replicas(&[], std::slice::from_ref(&r.id)) {
                tracing::error!("cannot remove replica {}: {e:#}", r.id);
            }
            stopping
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&r.id);
            ctx.wake.notify_one();
        });
    }

    /// Tells the gateway which replicas are ready and how traffic splits:
    /// by the rollout's percentages while a stable revision runs beside the
    /// new one, else by each revision's count of ready replicas (so every
    /// ready replica gets an equal share during a rolling update).
    fn publish(&self, replicas: &[Replica]) {
        let swarm = self
            .swarm_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let ready: Vec<&Replica> = replicas
            .iter()
            .chain(&swarm)
            .filter(|r| r.state == ReplicaState::Ready)
            .collect();
        let routes: Vec<Route> = ready
            .iter()
            .map(|r| Route {
                deployment: r.deployment.clone(),
                revision: r.revision,
                replica: r.id.clone(),
                endpoint: r.endpoint.clone(),
            })
            .collect();
        let mut weights: HashMap<(String, u32), u32> = HashMap::new();
        for r in &ready {
            *weights
                .entry((r.deployment.clone(), r.revision))
                .or_default() += 1;
        }
        let deployments = self.ctx.store.deployments().unwrap_or_default();
        for d in &deployments {
            weights.entry((d.name.clone(), d.revision)).or_insert(0);
            if let (Some(stable), Some(percent)) = (d.stable, d.traffic) {
                weights.insert((d.name.clone(), d.revision), percent);
                weights.insert((d.name.clone(), stable), 100 - percent.min(100));
            }
        }
        let shares: HashMap<(String, u32), Share> = weights
            .into_iter()
            .map(|((name, revision), weight)| {
                let abort = self
                    .ctx
                    .store
                    .revision(&name, revision)
                    .ok()
                    .flatten()
                    .and_then(|r| r.spec.spec.fault)
                    .map(|f| Abort {
                        percent: f.abort_percent,
                        status: f.status,
                    });
                ((name, revision), Share { weight, abort })
            })
            .collect();
        self.ctx.gateway.set_routes(&routes, &shares);
        if let Some(published) = &self.ctx.published {
            published.send_replace((routes, shares));
        }
    }
}

/// A revision's replica memory limit ([`crate::plan::memory_limit`]); none
/// when the spec sets none and no estimate was recorded.
pub(crate) fn memory_limit(rev: &modelship_types::Revision) -> Option<u64> {
    let spec = rev.spec.spec.resources.memory;
    match rev.memory_estimate {
        Some(estimate) => Some(crate::plan::memory_limit(spec, estimate)),
        None => spec.map(|m| m.0),
    }
}

/// A replica's next state from what was observed; `None`: it is gone for
/// good (it was stopping and has exited).
fn next_state(r: &Replica, live: Liveness) -> Option<ReplicaState> {
    use ReplicaState::*;
    Some(match (r.state, live) {
        (Terminating, Liveness::Gone) => return None,
        (Terminating, _) => Terminating,
        (_, Liveness::Gone) => Exited,
        (_, Liveness::Ready) => Ready,
        (Ready | Unready, Liveness::Running) => Unready,
        (Starting | Exited, Liveness::Running) => Starting,
    })
}

/// Five lowercase hex digits, different for each replica started.
fn suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mixed =
        (now_ms() ^ (n << 40) ^ u64::from(std::process::id())).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{:05x}", (mixed >> 40) & 0xF_FFFF)
}
