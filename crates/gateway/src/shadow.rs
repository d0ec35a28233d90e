//! Shadow traffic and the live comparison of two revisions' answers. While
//! a rollout compares a deployment's revisions ([`Mirror`]), a share of the
//! requests either one answers is also sent to the other, after the
//! client's answer and off the client's path: the proxy only copies the
//! request (and the answer's bytes as they pass) into a bounded queue, and
//! a sample that finds the queue full is dropped and counted. One worker
//! thread sends the copies, compares the answers (`compare.rs`) and records
//! a [`LiveSample`] per request, which the controller reads as the
//! difference of two counts, as it reads the gateway's statistics.
//!
//! The candidate's answers never reach a client. A generation is compared
//! on the stable revision's answer: both revisions score its tokens
//! teacher-forced (`POST /logprobs` on the replica).

mod compare;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use modelship_types::{LiveQuality, LiveSample, Mirror};
use tokio::sync::{Semaphore, mpsc};

use crate::balance::Endpoint;
use crate::{Gateway, Inner};

pub(crate) use compare::Kind;

/// Samples waiting for the worker; more are dropped.
const QUEUE: usize = 64;
/// Comparisons in flight at once.
const COMPARING: usize = 8;
/// Largest answer kept as it passes to the client; a larger (or streamed)
/// one is fetched again for the comparison.
pub(crate) const MAX_CAPTURE: u64 = 4 << 20;
/// Samples kept per revision pair (a rollout reads those of its step).
const KEPT: usize = 200_000;
/// Longest a comparison's call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// One request to compare, taken as it was proxied.
pub(crate) struct Sample {
    pub(crate) deployment: String,
    pub(crate) mirror: Mirror,
    pub(crate) kind: Kind,
    /// The revision that answered the client.
    pub(crate) served: u32,
    pub(crate) path: String,
    pub(crate) body: Vec<u8>,
    /// The served revision's whole answer, when it was kept as it passed.
    pub(crate) answer: Option<Vec<u8>>,
}

/// The shadow's state in the gateway.
pub(crate) struct Shadow {
    mirrors: RwLock<Arc<HashMap<String, Mirror>>>,
    queue: mpsc::Sender<Sample>,
    /// Taken by the worker when the gateway first serves.
    receiver: Mutex<Option<mpsc::Receiver<Sample>>>,
    log: Mutex<HashMap<(String, u32, u32), Log>>,
    /// Samples dropped because the queue was full, in all.
    dropped: std::sync::atomic::AtomicU64,
}

/// One revision pair's samples, oldest first.
#[derive(Default)]
struct Log {
    /// Samples dropped from the front to keep [`KEPT`].
    forgotten: u64,
    samples: VecDeque<LiveSample>,
}

impl Default for Shadow {
    fn default() -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        Shadow {
            mirrors: RwLock::default(),
            queue,
            receiver: Mutex::new(Some(receiver)),
            log: Mutex::default(),
            dropped: Default::default(),
        }
    }
}

impl Gateway {
    /// The deployments whose revisions are compared now, by name.
    pub fn set_mirrors(&self, mirrors: HashMap<String, Mirror>) {
        // Pairs no longer compared are forgotten.
        self.log().retain(|(d, stable, candidate), _| {
            mirrors
                .get(d)
                .is_some_and(|m| (m.stable, m.candidate) == (*stable, *candidate))
        });
        *self
            .inner
            .shadow
            .mirrors
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(mirrors);
    }

    /// How many requests have been compared (or failed) for this pair so
    /// far: a step's analysis reads what came after.
    pub fn live_count(&self, deployment: &str, mirror: &Mirror) -> u64 {
        let log = self.log();
        log.get(&key(deployment, mirror))
            .map_or(0, |l| l.forgotten + l.samples.len() as u64)
    }

    /// The figures of the pair's samples after the first `from`.
    pub fn live_since(&self, deployment: &str, mirror: &Mirror, from: u64) -> LiveQuality {
        let mut log = self.log();
        let Some(l) = log.get_mut(&key(deployment, mirror)) else {
            return LiveQuality::default();
        };
        let samples = l.samples.make_contiguous();
        let skip = (from.saturating_sub(l.forgotten) as usize).min(samples.len());
        LiveQuality::of(&samples[skip..])
    }

    /// Samples dropped under load since the gateway started.
    pub fn shadow_dropped(&self) -> u64 {
        self.inner.shadow.dropped.load(Ordering::Relaxed)
    }

    /// Whether to compare this request, answered 200 by `served`: a sample
    /// to fill in as the answer passes, or `None`.
    pub(crate) fn sample(
        &self,
        deployment: &str,
        served: u32,
        path: &str,
        body: &[u8],
        random: u64,
    ) -> Option<Sample> {
        let mirrors = self
            .inner
            .shadow
            .mirrors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mirror = *mirrors.get(deployment)?;
        if served != mirror.stable && served != mirror.candidate {
            return None;
        }
        let kind = Kind::of(path)?;
        if (random % 10_000) as f64 >= mirror.percent * 100.0 {
            return None;
        }
        Some(Sample {
            deployment: deployment.to_owned(),
            mirror,
            kind,
            served,
            path: path.to_owned(),
            body: body.to_vec(),
            answer: None,
        })
    }

    /// Queues a sample for the worker; under load it is dropped, counted.
    pub(crate) fn offer(&self, sample: Sample) {
        if let Err(mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s)) =
            self.inner.shadow.queue.try_send(sample)
        {
            self.inner.shadow.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("modelship_shadow_dropped_total",
                "deployment" => s.deployment, "revision" => s.mirror.candidate.to_string())
            .increment(1);
        }
    }

    /// Starts the worker thread that compares samples, once per gateway. It
    /// ends when the gateway is dropped.
    pub(crate) fn start_shadow(&self) -> std::io::Result<()> {
        let Some(receiver) = self
            .inner
            .shadow
            .receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Ok(());
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let inner = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("gateway-shadow".into())
            .spawn(move || rt.block_on(work(inner, receiver)))?;
        Ok(())
    }

    fn record(&self, sample: &Sample, live: LiveSample) {
        let (deployment, m) = (&sample.deployment, &sample.mirror);
        let labels = || {
            [
                ("deployment", deployment.clone()),
                ("stable", m.stable.to_string()),
                ("candidate", m.candidate.to_string()),
            ]
        };
        let outcome = if live == LiveSample::Failed {
            "failed"
        } else {
            "compared"
        };
        metrics::counter!("modelship_shadow_requests_total",
            "deployment" => deployment.clone(), "revision" => m.candidate.to_string(), "outcome" => outcome)
        .increment(1);
        let mut log = self.log();
        let l = log.entry(key(deployment, m)).or_default();
        l.samples.push_back(live);
        if l.samples.len() > KEPT {
            l.samples.pop_front();
            l.forgotten += 1;
        }
        // The pair's figures over all it compared, as gauges (a step's own
        // figures are in its rollout record).
        let samples = l.samples.make_contiguous();
        let q = LiveQuality::of(&samples[samples.len().saturating_sub(1000)..]);
        drop(log);
        for (name, value) in [
            ("modelship_live_quality_cosine", q.cosine.map(|c| c.mean)),
            ("modelship_live_quality_cosine_min", q.cosine.map(|c| c.min)),
            ("modelship_live_quality_top1", q.top1),
            ("modelship_live_quality_kld", q.kld),
            ("modelship_live_quality_logprob_diff", q.logprob_diff),
            (
                "modelship_live_quality_exact_match",
                q.exact_match.map(|e| e.0),
            ),
            ("modelship_live_quality_spearman", q.spearman),
            ("modelship_live_quality_label_agreement", q.label_agreement),
        ] {
            if let Some(v) = value {
                metrics::gauge!(name, &labels()).set(v);
            }
        }
        metrics::counter!("modelship_live_quality_samples_total", &labels()).increment(1);
    }

    fn skipped(&self, sample: &Sample, why: &str) {
        tracing::debug!(deployment = %sample.deployment, "shadow sample skipped: {why}");
        metrics::counter!("modelship_shadow_requests_total",
            "deployment" => sample.deployment.clone(),
            "revision" => sample.mirror.candidate.to_string(), "outcome" => "skipped")
        .increment(1);
    }
}

impl Gateway {
    /// The revision pairs' samples, locked.
    fn log(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32, u32), Log>> {
        self.inner
            .shadow
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

fn key(deployment: &str, m: &Mirror) -> (String, u32, u32) {
    (deployment.to_owned(), m.stable, m.candidate)
}

/// The worker: takes samples as they come and compares up to
/// [`COMPARING`] at once.
async fn work(inner: Weak<Inner>, mut samples: mpsc::Receiver<Sample>) {
    let client = match reqwest::Client::builder()
        .timeout(CALL_TIMEOUT)
        .pool_max_idle_per_host(COMPARING)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("shadow comparisons are off: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(COMPARING));
    while let Some(sample) = samples.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let (gateway, client) = (Gateway { inner }, client.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let calls = Calls {
                gateway: &gateway,
                client: &client,
                sample: &sample,
            };
            match calls.compare().await {
                Ok(live) => gateway.record(&sample, live),
                Err(why) => gateway.skipped(&sample, &why),
            }
        });
    }
}

/// The calls one comparison makes.
struct Calls<'a> {
    gateway: &'a Gateway,
    client: &'a reqwest::Client,
    sample: &'a Sample,
}

/// How a call to a revision went.
enum Called {
    Answered(Vec<u8>),
    /// A 5xx status, or no answer: the revision failed this request.
    Failed(String),
    /// A 4xx status: the revision refused the request.
    Refused(String),
    /// No ready replica of the revision to ask.
    NoReplica,
}

impl Calls<'_> {
    /// The sample compared: `Ok` with what it showed (`Failed` when the
    /// candidate failed), `Err` when it cannot be compared (the stable
    /// revision failed, a revision has no replica, nothing to score).
    async fn compare(&self) -> Result<LiveSample, String> {
        let s = self.sample;
        let m = s.mirror;
        if s.kind.generates() {
            return self.generation().await;
        }
        let answer_of = |revision: u32| async move {
            match (&s.answer, revision == s.served) {
                (Some(kept), true) => Called::Answered(kept.clone()),
                _ => self.call(revision, &s.path, s.body.clone()).await,
            }
        };
        let stable = match answer_of(m.stable).await {
            Called::Answered(b) => b,
            Called::Failed(why) | Called::Refused(why) => {
                return Err(format!("the stable revision failed: {why}"));
            }
            Called::NoReplica => return Err(format!("revision {} has no ready replica", m.stable)),
        };
        let candidate = match answer_of(m.candidate).await {
            Called::Answered(b) => b,
            // Refusing what the stable revision answered is failing it.
            Called::Failed(_) | Called::Refused(_) => return Ok(LiveSample::Failed),
            Called::NoReplica => {
                return Err(format!("revision {} has no ready replica", m.candidate));
            }
        };
        match compare::answers(s.kind, &stable, &candidate) {
            Ok(live) => Ok(live),
            Err(compare::Mismatch::Candidate(_)) => Ok(LiveSample::Failed),
            Err(compare::Mismatch::Reference(why)) => Err(why),
        }
    }

    /// A generation: the stable revision's answer (kept as it passed, or
    /// asked for whole), scored by both revisions.
    async fn generation(&self) -> Result<LiveSample, String> {
        let s = self.sample;
        let m = s.mirror;
        let request: serde_json::Value =
            serde_json::from_slice(&s.body).map_err(|e| format!("the request is not JSON: {e}"))?;
        // An echoed answer starts with the prompt: asked for again, without.
        let echoed = request["echo"].as_bool() == Some(true);
        let answer = match (&s.answer, s.served == m.stable && !echoed) {
            (Some(kept), true) => kept.clone(),
            _ => {
                let body = serde_json::to_vec(&compare::whole_answer_request(&request))
                    .map_err(|e| e.to_string())?;
                match self.call(m.stable, &s.path, body).await {
                    Called::Answered(b) => b,
                    Called::Failed(why) | Called::Refused(why) => {
                        return Err(format!("the stable revision failed: {why}"));
                    }
                    Called::NoReplica => {
                        return Err("the stable revision has no ready replica".into());
                    }
                }
            }
        };
        let Some(text) = compare::answer_text(&answer, s.kind)? else {
            return Err("the answer has no text to score".into());
        };
        let scoring = |also: &[Vec<u32>]| {
            compare::scoring_request(&request, s.kind, &text, also)
                .ok_or("the prompt cannot be scored (token ids or several prompts)")
                .and_then(|b| serde_json::to_vec(&b).map_err(|_| "unwritable"))
        };
        let stable = match self.call(m.stable, "/logprobs", scoring(&[])?).await {
            Called::Answered(b) => compare::scored(&b)?,
            Called::Failed(why) | Called::Refused(why) => {
                return Err(format!("the stable revision cannot score: {why}"));
            }
            Called::NoReplica => return Err("the stable revision has no ready replica".into()),
        };
        let also = compare::top_ids(&stable);
        let candidate = match self.call(m.candidate, "/logprobs", scoring(&also)?).await {
            Called::Answered(b) => match compare::scored(&b) {
                Ok(c) => c,
                Err(_) => return Ok(LiveSample::Failed),
            },
            // Refused (another tokenizer, another vocabulary): the answers
            // cannot be compared token by token, which is not a failure.
            Called::Refused(why) => {
                return Err(format!(
                    "the candidate cannot score the stable revision's tokens: {why}"
                ));
            }
            Called::Failed(_) => return Ok(LiveSample::Failed),
            Called::NoReplica => return Err("the candidate has no ready replica".into()),
        };
        compare::generation(&stable, &candidate, compare::greedy(&request))
    }

    /// POSTs `body` to `path` on a ready replica of `revision`: the least
    /// loaded one not ejected.
    async fn call(&self, revision: u32, path: &str, body: Vec<u8>) -> Called {
        let Some(endpoint) = replica(self.gateway, &self.sample.deployment, revision) else {
            return Called::NoReplica;
        };
        // Counted as the replica's load while it runs, as proxied requests are.
        endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
        let mut request = self
            .client
            .post(format!("http://{}{path}", endpoint.addr))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = &self.gateway.inner.config.upstream_key {
            request = request.bearer_auth(key);
        }
        let answered = async {
            let response = request
                .send()
                .await
                .map_err(|e| Called::Failed(e.to_string()))?;
            let status = response.status();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| Called::Failed(e.to_string()))?;
            let why = || {
                format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                )
            };
            match status {
                s if s.is_success() => Ok(bytes.to_vec()),
                s if s.is_client_error() => Err(Called::Refused(why())),
                _ => Err(Called::Failed(why())),
            }
        }
        .await;
        endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
        match answered {
            Ok(b) => Called::Answered(b),
            Err(called) => called,
        }
    }
}

/// The least loaded ready replica of `revision`, ejected ones last.
fn replica(gateway: &Gateway, deployment: &str, revision: u32) -> Option<Arc<Endpoint>> {
    let table = gateway.table();
    let route = table
        .deployments
        .get(deployment)?
        .iter()
        .find(|r| r.revision == revision)?;
    let now = crate::proxy::now_ms();
    route
        .endpoints
        .iter()
        .min_by_key(|e| (e.ejected(now), e.outstanding.load(Ordering::Relaxed)))
        .cloned()
}
