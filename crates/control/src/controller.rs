//! The controller loop: observe every replica once, record what changed,
//! move each rollout on from its recorded phase (the planner's `step`), ask
//! the planner what to start and stop, admit what fits, do it, and tell the
//! gateway what is ready. Runs every half second, and at once when the API
//! changes something. Every decision is a planner function of what this
//! tick observed; nothing here waits for a state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use modelship_gateway::{Abort, Route, Share, StatsSnapshot};
use modelship_orchestrator::{Liveness, ReplicaSpec, now_ms};
use modelship_planner::{
    Action, Analysis, ClusterRollout, Desired, Idle, ReplicaRequest, RolloutObserved, Sample,
    ScalerState, Window, admit, autoscale, desired, make_room, mirror, reconcile,
};
use modelship_types::{Deployment, Node, Phase, Replica, ReplicaState, Revision, Target};

use crate::{Ctx, rollout};

/// How often the loop runs when nothing wakes it.
const PERIOD: Duration = Duration::from_millis(500);
/// How often while requests wait for a deployment to wake: its replica's
/// readiness is seen, and the requests go, this much sooner.
const WAKING_PERIOD: Duration = Duration::from_millis(50);
/// A pending replica's reason before admission has looked at it.
const AWAITING_ADMISSION: &str = "waiting for admission";
/// With discovery on: how long a replica taken out of the routes keeps
/// serving, for gateways fed by etcd to drop it first (Kubernetes' preStop
/// sleep does the same for endpoints).
const DISCOVERY_GRACE: Duration = Duration::from_secs(2);
/// How long a stopping replica may drain before it is killed.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// A deployment with the revision that serves it.
type Serving = (Deployment, Revision);

/// What the gateway had counted when a step's analysis began: the step is
/// judged on what came after.
struct Baseline {
    /// The revision and the step analysed ([`SHADOW`] for the shadow phase).
    revision: u32,
    step: u32,
    stats: StatsSnapshot,
    /// Requests compared so far for the revision pair.
    compared: u64,
}

/// The shadow phase's place among a rollout's steps in a [`Baseline`].
const SHADOW: u32 = u32::MAX;

/// The step `phase` is analysing, and the stable revision it is compared
/// with; `None` while nothing is analysed.
fn analysed(phase: &Phase) -> Option<(u32, u32)> {
    match phase {
        Phase::Shadow {
            stable,
            analysis_from: Some(_),
            ..
        } => Some((SHADOW, *stable)),
        Phase::Canary {
            stable,
            step,
            analysis_from: Some(_),
            ..
        } => Some((*step, *stable)),
        _ => None,
    }
}

pub(crate) struct Controller {
    ctx: Arc<Ctx>,
    /// Replicas with a stop in flight, so a tick does not stop them twice.
    stopping: Arc<Mutex<HashSet<String>>>,
    /// Each autoscaled deployment's samples and panic state.
    scalers: Mutex<HashMap<String, ScalerState>>,
    /// Swarm tasks as last observed, published beside the other replicas.
    swarm_seen: Mutex<Vec<Replica>>,
    /// Each rollout's gateway figures when its step's analysis began.
    baselines: Mutex<HashMap<String, Baseline>>,
    /// Each deployment's traffic split while a stable revision runs beside
    /// the new one: (revision, stable, percent to revision).
    splits: Mutex<HashMap<String, (u32, u32, u32)>>,
    /// This machine, where local and Docker replicas are admitted; none
    /// when it cannot be read (then every replica starts).
    node: Option<Node>,
    /// Deployments that scale from zero (`autoscale.min: 0`).
    waking: Mutex<HashSet<String>>,
    /// Requests wait while a replica starts: tick fast, so they go as soon
    /// as it is ready (not while nothing is on its way).
    waking_fast: std::sync::atomic::AtomicBool,
}

impl Controller {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Controller {
        let node = crate::plan::this_machine()
            .inspect_err(|e| tracing::warn!("admission is off: {e:#}"))
            .ok();
        Controller {
            ctx,
            stopping: Arc::default(),
            scalers: Mutex::default(),
            swarm_seen: Mutex::default(),
            baselines: Mutex::default(),
            splits: Mutex::default(),
            node,
            waking: Mutex::default(),
            waking_fast: Default::default(),
        }
    }

    pub(crate) async fn run(self) {
        let holding = self.ctx.gateway.holding();
        loop {
            if let Err(e) = self.tick().await {
                tracing::error!("controller: {e:#}");
            }
            let period = match self.waking_fast.load(std::sync::atomic::Ordering::Relaxed) {
                true => WAKING_PERIOD,
                false => PERIOD,
            };
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.ctx.wake.notified() => {}
                _ = holding.notified() => {}
            }
        }
    }

    async fn tick(&self) -> anyhow::Result<()> {
        let store = &self.ctx.store;
        let (swarm_stored, replicas): (Vec<Replica>, Vec<Replica>) = store
            .replicas()?
            .into_iter()
            .partition(|r| r.target == Target::Swarm);
        // Pending replicas have no process to observe yet.
        let (pending, replicas): (Vec<Replica>, Vec<Replica>) = replicas
            .into_iter()
            .partition(|r| r.state == ReplicaState::Pending);
        let seen = join_all(replicas.iter().map(|r| self.observe(r))).await;
        let now = now_ms();
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        let mut current = Vec::with_capacity(replicas.len() + pending.len());
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
        current.extend(pending);
        store.update_replicas(&changed, &removed)?;

        // Terminating replicas without a stop in flight (the control plane
        // restarted mid-stop): stop them again.
        for r in current
            .iter()
            .filter(|r| r.state == ReplicaState::Terminating)
        {
            self.stop(r.clone());
        }

        // The gateway's counters, read once: the canary windows and the
        // autoscaler's activity both come from this snapshot.
        let stats = self.ctx.gateway.stats();
        let deployments = self.rollouts(&current, &swarm_stored, &stats, now).await?;
        let (deployments, from_zero) = self.autoscale(deployments, &stats, now)?;
        let mut waking = from_zero.clone();
        // Revisions whose replicas admission could not place yet.
        let blocked: HashSet<(&str, u32)> = current
            .iter()
            .filter(|r| {
                r.state == ReplicaState::Pending
                    && r.reason.as_deref().is_some_and(|w| w != AWAITING_ADMISSION)
            })
            .map(|r| (r.deployment.as_str(), r.revision))
            .collect();
        let mut by_target: HashMap<Target, Vec<Desired>> = HashMap::new();
        let mut splits = HashMap::new();
        let mut mirrors = HashMap::new();
        for (d, rev) in &deployments {
            if let Some(m) = mirror(d, &rev.spec.spec.rollout) {
                mirrors.insert(d.name.clone(), m);
            }
            let mut want = desired(d, &rev.spec.spec.rollout);
            want.blocked = blocked.contains(&(d.name.as_str(), d.revision));
            if want.blocked {
                // Replaced one at a time, it may have no ready replica for a
                // moment: its requests wait for one rather than fail.
                waking.insert(d.name.clone());
            }
            if let (Some((stable, _)), Some(percent)) = (want.stable, want.traffic) {
                splits.insert(d.name.clone(), (d.revision, stable, percent));
            }
            by_target
                .entry(rev.spec.spec.target)
                .or_default()
                .push(want);
        }
        *self.splits.lock().unwrap_or_else(|p| p.into_inner()) = splits;
        self.ctx.gateway.set_mirrors(mirrors);
        self.ctx.gateway.set_waking(waking);
        *self.waking.lock().unwrap_or_else(|p| p.into_inner()) = from_zero;
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
        self.admit(&mut current).await?;
        self.publish(&current);
        let starting = current
            .iter()
            .any(|r| matches!(r.state, ReplicaState::Starting | ReplicaState::Pending));
        self.waking_fast.store(
            starting && self.ctx.gateway.any_held(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }

    /// Every deployment with its serving revision, each rollout moved on by
    /// one step from what this tick observed.
    async fn rollouts(
        &self,
        current: &[Replica],
        swarm: &[Replica],
        stats: &StatsSnapshot,
        now: u64,
    ) -> anyhow::Result<Vec<Serving>> {
        let store = &self.ctx.store;
        let mut out = Vec::new();
        for d in store.deployments()? {
            let Some(rev) = store.revision(&d.name, d.revision)? else {
                continue;
            };
            if d.phase == Phase::Steady {
                out.push((d, rev));
                continue;
            }
            let seen = self.rollout_observed(&d, &rev, current, swarm, stats).await;
            let Some(next) = rollout::advance(&self.ctx, &d, &rev, &seen, now)? else {
                continue; // removed
            };
            let rev = match next.revision == rev.number {
                true => rev,
                false => match store.revision(&next.name, next.revision)? {
                    Some(r) => r,
                    None => continue,
                },
            };
            self.begin_analysis(&next, &rev, stats);
            out.push((next, rev));
        }
        let names: HashSet<&str> = out.iter().map(|(d, _)| d.name.as_str()).collect();
        self.baselines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| names.contains(name.as_str()));
        // The analyses shown by `status`: those still under way.
        let analysing: HashSet<&str> = out
            .iter()
            .filter(|(d, _)| analysed(&d.phase).is_some())
            .map(|(d, _)| d.name.as_str())
            .collect();
        self.ctx
            .analyses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| analysing.contains(name.as_str()));
        Ok(out)
    }

    /// What one tick saw of `d`'s rollout.
    async fn rollout_observed(
        &self,
        d: &Deployment,
        rev: &Revision,
        current: &[Replica],
        swarm: &[Replica],
        stats: &StatsSnapshot,
    ) -> RolloutObserved {
        let mut seen = RolloutObserved::default();
        let began = d.phase.progress().map_or(0, |p| p.started_at);
        for r in current
            .iter()
            .chain(swarm)
            .filter(|r| r.deployment == d.name && r.state != ReplicaState::Terminating)
        {
            *seen.live.entry(r.revision).or_default() += 1;
            if r.state == ReplicaState::Ready {
                *seen.ready.entry(r.revision).or_default() += 1;
            }
            if r.revision != d.revision {
                continue;
            }
            // Restarts count from this rollout on: a replica that restarted
            // long before (an unchanged deploy keeps it) is not a crash loop.
            if r.started_at >= began && seen.restarts.as_ref().is_none_or(|(_, n)| r.restarts > *n)
            {
                seen.restarts = Some((r.id.clone(), r.restarts));
            }
            if r.state == ReplicaState::Pending
                && let Some(why) = r.reason.as_deref().filter(|w| *w != AWAITING_ADMISSION)
            {
                seen.pending = Some((r.id.clone(), why.to_owned()));
            }
        }
        if let Some((step, stable)) = analysed(&d.phase) {
            // Measured from the step's baseline; none (the step's analysis
            // began before this control plane started): not measured.
            let baselines = self.baselines.lock().unwrap_or_else(|p| p.into_inner());
            seen.analysis = baselines
                .get(&d.name)
                .filter(|b| (b.revision, b.step) == (d.revision, step))
                .map(|b| Analysis {
                    canary: window(stats, &b.stats, &d.name, d.revision),
                    stable: window(stats, &b.stats, &d.name, stable),
                    live: mirror(d, &rev.spec.spec.rollout)
                        .map(|m| self.ctx.gateway.live_since(&d.name, &m, b.compared))
                        .unwrap_or_default(),
                });
            if let Some(a) = &seen.analysis {
                self.ctx
                    .analyses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(d.name.clone(), a.clone());
            }
        }
        if rev.spec.spec.target == Target::Kubernetes {
            seen.cluster = Some(
                match crate::cluster::rollout(&self.ctx, &d.name, d.revision).await {
                    Ok(status) => status,
                    // Unseen counts as still progressing: its timeout runs.
                    Err(e) => {
                        tracing::warn!(deployment = %d.name, "kubernetes: {e:#}");
                        ClusterRollout::Progressing
                    }
                },
            );
        }
        seen
    }

    /// Keeps the gateway's counters at the moment a step's analysis began,
    /// to judge the step on what came after.
    fn begin_analysis(&self, d: &Deployment, rev: &Revision, stats: &StatsSnapshot) {
        let mut baselines = self.baselines.lock().unwrap_or_else(|p| p.into_inner());
        let Some((step, _)) = analysed(&d.phase) else {
            baselines.remove(&d.name);
            return;
        };
        let fresh = baselines
            .get(&d.name)
            .is_none_or(|b| (b.revision, b.step) != (d.revision, step));
        if fresh {
            let compared = mirror(d, &rev.spec.spec.rollout)
                .map_or(0, |m| self.ctx.gateway.live_count(&d.name, &m));
            baselines.insert(
                d.name.clone(),
                Baseline {
                    revision: d.revision,
                    step,
                    stats: stats.clone(),
                    compared,
                },
            );
        }
    }

    /// Samples each autoscaled deployment's in-flight requests and sets its
    /// replica count from the decision. Not during a canary or blue-green
    /// rollout, whose replica counts the rollout owns, and not on
    /// Kubernetes, where the HorizontalPodAutoscaler rendered with the
    /// Deployment scales it.
    /// Returns the deployments, and the names of those that scale from zero.
    fn autoscale(
        &self,
        deployments: Vec<Serving>,
        stats: &StatsSnapshot,
        now: u64,
    ) -> anyhow::Result<(Vec<Serving>, HashSet<String>)> {
        let store = &self.ctx.store;
        let mut scalers = self.scalers.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = HashSet::new();
        let mut waking = HashSet::new();
        let mut out = Vec::with_capacity(deployments.len());
        for (mut d, rev) in deployments {
            let spec = match &rev.spec.spec.autoscale {
                Some(a) if rev.spec.spec.target != Target::Kubernetes => a.clone(),
                _ => {
                    out.push((d, rev));
                    continue;
                }
            };
            seen.insert(d.name.clone());
            if spec.min == 0 {
                waking.insert(d.name.clone());
            }
            if d.phase.stable().is_some() {
                out.push((d, rev));
                continue;
            }
            let state = scalers.entry(d.name.clone()).or_default();
            let gateway = &self.ctx.gateway;
            // Requests waiting for a replica to wake are load too.
            let concurrency = (gateway.in_flight(&d.name) + gateway.held(&d.name)) as f64;
            let requests = stats
                .revisions
                .iter()
                .filter(|r| r.deployment == d.name)
                .map(|r| r.requests)
                .sum();
            state.observe(
                &spec,
                Sample {
                    at_ms: now,
                    concurrency,
                    requests,
                },
            );
            let decision = autoscale(&spec, state, now, d.replicas);
            if decision.replicas != d.replicas {
                // Only the count changes, and only if the revision is still
                // the one decided for (a rollout may have moved meanwhile).
                let from = d.replicas;
                let updated = store.update_deployment(&d.name, |now_d| {
                    let same = now_d.revision == d.revision && now_d.phase.stable().is_none();
                    if same {
                        now_d.replicas = decision.replicas;
                        now_d.updated_at = now;
                    }
                    same
                })?;
                if let Some(u) = updated.filter(|u| u.replicas == decision.replicas) {
                    self.ctx.event(
                        &d.name,
                        format!(
                            "autoscaled from {from} to {} replicas: {}",
                            decision.replicas, decision.reason
                        ),
                    );
                    d = u;
                }
            }
            out.push((d, rev));
        }
        scalers.retain(|name, _| seen.contains(name));
        Ok((out, waking))
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

    async fn apply(&self, action: Action, current: &mut Vec<Replica>) -> anyhow::Result<()> {
        let store = &self.ctx.store;
        match action {
            Action::Start {
                deployment,
                revision,
            } => {
                // Wanted now; started once admitted ([`Controller::admit`]).
                let rev = store.revision(&deployment, revision)?;
                let target = rev.as_ref().map(|r| r.spec.spec.target).unwrap_or_default();
                let reserved = rev
                    .as_ref()
                    .map(crate::plan::recorded)
                    .map(|p| (p.cpu_request, p.memory_request));
                let replica = Replica {
                    id: format!("{deployment}-{revision}-{}", suffix()),
                    deployment,
                    revision,
                    endpoint: String::new(),
                    pid: None,
                    state: ReplicaState::Pending,
                    restarts: 0,
                    exited_at: None,
                    started_at: now_ms(),
                    target,
                    reason: Some(AWAITING_ADMISSION.into()),
                    reserved,
                };
                store.update_replicas(std::slice::from_ref(&replica), &[])?;
                current.push(replica);
            }
            Action::Restart { replica } => {
                let Some(old) = current.iter_mut().find(|r| r.id == replica) else {
                    return Ok(());
                };
                let restarts = old.restarts + 1;
                let mut fresh = self
                    .start(&old.deployment, old.revision, &old.id, restarts)
                    .await?;
                fresh.reserved = old.reserved;
                self.ctx.event(
                    &old.deployment,
                    format!("restarted replica {replica} (restart {restarts})"),
                );
                store.update_replicas(std::slice::from_ref(&fresh), &[])?;
                *old = fresh;
            }
            Action::Stop { replica } => {
                let Some(i) = current.iter().position(|r| r.id == replica) else {
                    return Ok(());
                };
                if current[i].state == ReplicaState::Pending {
                    // Never started: nothing to stop.
                    store.update_replicas(&[], std::slice::from_ref(&replica))?;
                    current.remove(i);
                    return Ok(());
                }
                let r = &mut current[i];
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
        let (threads, cpu, memory) = resources(&rev);
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
            threads,
            cpu,
            memory,
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

    /// Starts the pending replicas that fit on this machine beside what runs
    /// there, in the order they became pending (`planner::admit`: none
    /// overtakes an earlier one); the others keep waiting, their reason
    /// recorded. Memory is a hard budget; CPU only what specs reserve.
    async fn admit(&self, current: &mut [Replica]) -> anyhow::Result<()> {
        let on_machine = |r: &Replica| matches!(r.target, Target::Local | Target::Docker);
        let mut pending: Vec<usize> = (0..current.len())
            .filter(|&i| current[i].state == ReplicaState::Pending && on_machine(&current[i]))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        pending.sort_by(|&a, &b| {
            (current[a].started_at, &current[a].id).cmp(&(current[b].started_at, &current[b].id))
        });
        let store = &self.ctx.store;
        let mut revisions: HashMap<(String, u32), Option<Revision>> = HashMap::new();
        let mut rev_of = |r: &Replica| -> anyhow::Result<Option<Revision>> {
            let key = (r.deployment.clone(), r.revision);
            if !revisions.contains_key(&key) {
                revisions.insert(key.clone(), store.revision(&r.deployment, r.revision)?);
            }
            Ok(revisions[&key].clone())
        };
        let admitted: Vec<String> = match &self.node {
            None => pending.iter().map(|&i| current[i].id.clone()).collect(),
            Some(node) => {
                let mut running = Vec::new();
                for r in current
                    .iter()
                    .filter(|r| r.state != ReplicaState::Pending && on_machine(r))
                {
                    let req = request(r, rev_of(r)?.as_ref());
                    running.push((req, node.name.clone()));
                }
                let mut queue = Vec::new();
                for &i in &pending {
                    let r = &current[i];
                    let req = request(r, rev_of(r)?.as_ref());
                    queue.push((r.id.clone(), vec![req]));
                }
                let decision = admit(std::slice::from_ref(node), &running, &queue);
                if let Some(head) = decision.waiting.first()
                    && let Some((_, reqs)) = queue.iter().find(|(id, _)| *id == head.replica)
                {
                    let used: u64 = running.iter().map(|(r, _)| r.memory).sum();
                    let free = node.memory.0.saturating_sub(used);
                    self.make_room(&reqs[0], reqs[0].memory.saturating_sub(free), &running)?;
                }
                let mut waiting = Vec::new();
                for p in decision.waiting {
                    let Some(r) = current.iter_mut().find(|r| r.id == p.replica) else {
                        continue;
                    };
                    if r.reason.as_deref() != Some(p.reason.as_str()) {
                        self.ctx.event(
                            &r.deployment,
                            format!("replica {} pending: {}", r.id, p.reason),
                        );
                        r.reason = Some(p.reason);
                        waiting.push(r.clone());
                    }
                }
                store.update_replicas(&waiting, &[])?;
                decision.admitted.into_iter().map(|(id, _)| id).collect()
            }
        };
        for id in admitted {
            let Some(r) = current.iter_mut().find(|r| r.id == id) else {
                continue;
            };
            match self.start(&r.deployment, r.revision, &r.id, 0).await {
                Ok(mut started) => {
                    started.reserved = r.reserved;
                    self.ctx.event(
                        &r.deployment,
                        format!("started replica {id} (revision {})", r.revision),
                    );
                    store.update_replicas(std::slice::from_ref(&started), &[])?;
                    *r = started;
                }
                // Stays pending; the next tick tries again.
                Err(e) => tracing::error!("controller: cannot start {id}: {e:#}"),
            }
        }
        Ok(())
    }

    /// When a pending replica lacks `needed` bytes: the idle deployments
    /// that scale from zero (no request in flight or waiting), least
    /// recently used first, go to zero replicas, recorded, if together they
    /// free enough (Ollama's keep-alive, by this controller's own rules).
    fn make_room(
        &self,
        waiting: &ReplicaRequest,
        needed: u64,
        running: &[(ReplicaRequest, String)],
    ) -> anyhow::Result<()> {
        if needed == 0 {
            return Ok(());
        }
        let gateway = &self.ctx.gateway;
        let idle: Vec<Idle> = {
            let waking = self.waking.lock().unwrap_or_else(|p| p.into_inner());
            let scalers = self.scalers.lock().unwrap_or_else(|p| p.into_inner());
            waking
                .iter()
                .filter(|name| **name != waiting.deployment)
                .filter(|name| gateway.in_flight(name) == 0 && gateway.held(name) == 0)
                .filter_map(|name| {
                    let memory: u64 = running
                        .iter()
                        .filter(|(r, _)| r.deployment == **name)
                        .map(|(r, _)| r.memory)
                        .sum();
                    let last_active = scalers.get(name.as_str())?.last_active.unwrap_or(0);
                    (memory > 0).then(|| Idle {
                        deployment: name.clone(),
                        last_active,
                        memory,
                    })
                })
                .collect()
        };
        for name in make_room(needed, &idle) {
            let now = now_ms();
            let updated = self.ctx.store.update_deployment(&name, |d| {
                let scale = d.replicas > 0 && d.phase.stable().is_none();
                if scale {
                    d.replicas = 0;
                    d.updated_at = now;
                }
                scale
            })?;
            if updated.is_some_and(|d| d.replicas == 0) {
                self.ctx.event(
                    &name,
                    format!(
                        "scaled to zero to make room for {} ({} short); it wakes on its next request",
                        waiting.deployment,
                        modelship_types::Bytes(needed)
                    ),
                );
            }
        }
        Ok(())
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
            // Out of this gateway already; gateways fed by etcd learn it a
            // moment later, and must before the replica stops listening.
            if ctx.published.is_some() {
                tokio::time::sleep(DISCOVERY_GRACE).await;
            }
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
        let splits = self
            .splits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for d in &deployments {
            weights.entry((d.name.clone(), d.revision)).or_insert(0);
            if let Some(&(revision, stable, percent)) = splits.get(&d.name)
                && revision == d.revision
            {
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

/// A revision's replicas' threads, CPU quota and memory limit, as its plan
/// recorded them (a limit of 0, from a revision recorded before plans with
/// no estimate, is none).
pub(crate) fn resources(rev: &Revision) -> (u32, Option<f64>, Option<u64>) {
    let p = crate::plan::recorded(rev);
    (
        p.threads,
        p.cpu_limit,
        Some(p.memory_limit).filter(|&m| m > 0),
    )
}

/// What a replica reserves on its node: its own record of it, else its
/// revision's plan.
fn request(r: &Replica, rev: Option<&Revision>) -> ReplicaRequest {
    let (cpu, memory) = r.reserved.unwrap_or_else(|| {
        rev.map(crate::plan::recorded)
            .map_or((0.0, 0), |p| (p.cpu_request, p.memory_request))
    });
    ReplicaRequest {
        id: r.id.clone(),
        deployment: r.deployment.clone(),
        cpu,
        memory,
        gpus: 0,
        gpu_memory: 0,
        selector: BTreeMap::new(),
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

/// A replica's next state from what was observed; `None`: it is gone for
/// good (it was stopping and has exited).
fn next_state(r: &Replica, live: Liveness) -> Option<ReplicaState> {
    use ReplicaState::*;
    Some(match (r.state, live) {
        (Pending, _) => Pending,
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
