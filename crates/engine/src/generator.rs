//! The generation actor: one thread owns the backend and runs up to
//! `max_concurrent` sequences, each with its own KV cache, batched
//! continuously: every step is one forward pass over the new prompts and the
//! last token of every running sequence. The prompts that join one pass
//! hold at most `max_batch_tokens` tokens together (a single prompt always
//! fits: the limits check `max_batch_tokens ≥ max_context`), so a burst of
//! long prompts runs in several bounded passes rather than one that holds
//! activations for all of them. More requests wait in a bounded
//! queue. Text leaves as soon as it forms whole characters, minus anything
//! that may still turn into a stop sequence.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use modelship_model::{Detokenizer, TextTokenizer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::constraint::Constraint;
use crate::logits::{self, History, Penalties, TokenLogprob};
use crate::sampler::{Sampler, SamplingParams};
use crate::stop::StopMatcher;
use crate::thread::ComputeThread;
use crate::{EngineError, GenerateBackend};

/// What to generate, after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub penalties: Penalties,
    /// Added to the logits of these token ids before sampling.
    pub logit_bias: Vec<(u32, f32)>,
    /// Report each generated token's log-probability and this many of the
    /// most likely tokens at its place.
    pub logprobs: Option<usize>,
    /// The same for the prompt's tokens (completions' `echo`).
    pub prompt_logprobs: Option<usize>,
    /// With `prompt_logprobs`: ids whose log-probabilities are reported
    /// beside the most likely ones, per prompt position (a teacher-forced
    /// comparison asks for another model's most likely tokens).
    pub prompt_also: Arc<[Vec<u32>]>,
    /// Independent samples that share one prefill.
    pub n: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence token, a stop sequence, or a grammar completed.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// One event of a generation, in order: the prompt's log-probabilities when
/// asked, text pieces, then `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum GenerationEvent {
    /// Every prompt token, the first with no log-probability (shared by
    /// the samples of one prompt).
    Prompt(Arc<[TokenLogprob]>),
    /// Generated text and, when asked, the tokens that made it. A token's
    /// text may be held back (a character spanning tokens, a possible stop
    /// sequence): it comes with the piece its text ends in.
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        reason: FinishReason,
        usage: Usage,
    },
    Failed(EngineError),
}

/// The events of one generation. Dropping it cancels the generation.
pub type GenerationStream = mpsc::UnboundedReceiver<GenerationEvent>;

type Events = mpsc::UnboundedSender<GenerationEvent>;

/// What the samples of one request share.
struct Request {
    prompt: Vec<u32>,
    params: GenerateParams,
    enqueued: Instant,
    _permit: OwnedSemaphorePermit,
}

pub(crate) struct Job {
    request: Arc<Request>,
    /// One per sample, in order.
    events: Vec<Events>,
    constraint: Option<Constraint>,
}

#[derive(Clone)]
pub(crate) struct Generator {
    thread: ComputeThread<Job>,
    admission: Arc<Semaphore>,
    capacity: usize,
}

impl Generator {
    pub(crate) fn start<B: GenerateBackend>(
        backend: B,
        tokenizer: Arc<TextTokenizer>,
        max_concurrent: usize,
        max_batch_tokens: usize,
        max_queue: usize,
    ) -> Self {
        let thread = ComputeThread::start("modelship-generate", move |rx| {
            Worker::new(backend, &tokenizer, max_concurrent, max_batch_tokens).run(rx)
        });
        let capacity = max_concurrent + max_queue;
        Self {
            thread,
            admission: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Starts `params.n` samples of `prompt` (`n ≤ max_concurrent`, which
    /// the engine checks); one stream each.
    pub(crate) fn generate(
        &self,
        prompt: Vec<u32>,
        params: GenerateParams,
        constraint: Option<Constraint>,
    ) -> Result<Vec<GenerationStream>, EngineError> {
        // Each sample takes a place: a request of `n` counts as `n`.
        let permit = self
            .admission
            .clone()
            .try_acquire_many_owned(params.n.max(1) as u32)
            .map_err(|_| EngineError::Overloaded {
                queued: self.capacity,
            })?;
        let (events, streams) = (0..params.n.max(1))
            .map(|_| mpsc::unbounded_channel())
            .unzip();
        self.thread.send(Job {
            request: Arc::new(Request {
                prompt,
                params,
                enqueued: Instant::now(),
                _permit: permit,
            }),
            events,
            constraint,
        })?;
        Ok(streams)
    }

    pub(crate) fn thread(&self) -> &ComputeThread<Job> {
        &self.thread
    }
}

/// One sample being generated.
struct Active<'t, S> {
    request: Arc<Request>,
    events: Events,
    /// The request's other samples, started from this one's cache once its
    /// prompt has run: (sample number, events, grammar state).
    forks: Vec<(u64, Events, Option<Constraint>)>,
    seq: S,
    sampler: Sampler,
    detok: Detokenizer<'t>,
    stop: StopMatcher,
    history: History,
    constraint: Option<Constraint>,
    /// The prompt has run (the cache holds it).
    prefilled: bool,
    /// Sampled, not yet emitted nor fed back, with its log-probability when
    /// asked.
    next: Option<(u32, Option<TokenLogprob>)>,
    /// Log-probabilities of tokens whose text is still held back.
    held: Vec<TokenLogprob>,
    generated: usize,
}

/// A sequence's forks started after its prompt, and whether it could go on.
type Started<'t, S> = (Vec<Active<'t, S>>, Result<(), EngineError>);

enum Step {
    /// Not started: run the prompt.
    Prefill,
    /// Feed this token back to get the next one.
    Feed(u32),
    Finished(FinishReason),
}

struct Worker<'t, B: GenerateBackend> {
    backend: B,
    tokenizer: &'t TextTokenizer,
    max_concurrent: usize,
    /// Prompt tokens one pass may hold.
    max_batch_tokens: usize,
    waiting: VecDeque<Job>,
    running: Vec<Active<'t, B::Sequence>>,
}

/// Prompt tokens scored per pass when their log-probabilities are asked.
const SCORED_CHUNK: usize = 32;

/// Whether a prompt of `len` tokens joins a pass already holding `pending`
/// prompt tokens: the first always does, the rest while the pass stays
/// within `budget`.
fn joins_pass(pending: usize, len: usize, budget: usize) -> bool {
    pending == 0 || pending + len <= budget
}

/// Sample `k`'s seed: the request's for the first, distinct and still
/// reproducible for the others.
fn fork_seed(seed: Option<u64>, k: u64) -> Option<u64> {
    seed.map(|s| s ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl<'t, B: GenerateBackend> Worker<'t, B> {
    fn new(
        backend: B,
        tokenizer: &'t TextTokenizer,
        max_concurrent: usize,
        max_batch_tokens: usize,
    ) -> Self {
        Self {
            backend,
            tokenizer,
            max_concurrent,
            max_batch_tokens,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    fn run(mut self, rx: &mut mpsc::UnboundedReceiver<Job>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.blocking_recv() {
                    Some(job) => self.waiting.push_back(job),
                    None => return,
                }
            }
            while let Ok(job) = rx.try_recv() {
                self.waiting.push_back(job);
            }
            self.admit();
            metrics::gauge!("modelship_queue_depth", "task" => "generate")
                .set(self.waiting.len() as f64);
            metrics::gauge!("modelship_running_sequences").set(self.running.len() as f64);
            if !self.running.is_empty() {
                metrics::histogram!("modelship_batch_size", "task" => "generate")
                    .record(self.running.len() as f64);
            }
            self.step_all();
        }
    }

    /// Moves waiting jobs into the running set while there is room for all
    /// their samples and their prompts fit this step's pass; their prompts
    /// run with the next step.
    fn admit(&mut self) {
        let mut prompt_tokens = 0;
        loop {
            let Some(next) = self.waiting.front() else {
                return;
            };
            // Samples still to be forked from a prompt take their slots now.
            let samples: usize = self.running.iter().map(|a| 1 + a.forks.len()).sum();
            let room = samples == 0 || samples + next.events.len() <= self.max_concurrent;
            if !room
                || !joins_pass(
                    prompt_tokens,
                    next.request.prompt.len(),
                    self.max_batch_tokens,
                )
            {
                return;
            }
            let job = self.waiting.pop_front().expect("front exists");
            if job.events.iter().all(|e| e.is_closed()) {
                continue;
            }
            prompt_tokens += job.request.prompt.len();
            let mut events = job.events.into_iter();
            let first = events.next().expect("at least one sample");
            let forks = events
                .enumerate()
                .map(|(k, e)| {
                    (
                        k as u64 + 1,
                        e,
                        job.constraint.as_ref().map(Constraint::fork),
                    )
                })
                .collect();
            let active = sample(
                self.tokenizer,
                job.request,
                first,
                0,
                job.constraint,
                self.backend.new_sequence(),
            );
            self.running.push(Active { forks, ..active });
        }
    }
}

/// A sample of `request` over `seq` (fresh, or a fork of a prefilled one).
fn sample<'t, S>(
    tokenizer: &'t TextTokenizer,
    request: Arc<Request>,
    events: Events,
    k: u64,
    constraint: Option<Constraint>,
    seq: S,
) -> Active<'t, S> {
    let p = &request.params;
    let sampling = SamplingParams {
        seed: fork_seed(p.sampling.seed, k),
        ..p.sampling
    };
    Active {
        sampler: Sampler::new(sampling),
        stop: StopMatcher::new(p.stop.clone()),
        history: History::new(&request.prompt),
        detok: tokenizer.stream(),
        forks: Vec::new(),
        prefilled: false,
        next: None,
        held: Vec::new(),
        generated: 0,
        seq,
        events,
        constraint,
        request,
    }
}

impl<'t, B: GenerateBackend> Worker<'t, B> {
    /// One step for every running sequence: emit each one's pending token,
    /// then one forward pass over all that go on (new prompts and single
    /// decode tokens packed together), then sample each one's next token.
    /// A prompt whose own log-probabilities are asked for runs alone, with
    /// the logits after every position.
    fn step_all(&mut self) {
        // Aligned with `running` once the loop ends; `None`: not in the pass.
        let mut feeds: Vec<Option<Vec<u32>>> = Vec::with_capacity(self.running.len());
        let mut born = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            let step = self.emit(i);
            let scored = self.running[i].request.params.prompt_logprobs.is_some();
            match step {
                Ok(Step::Prefill) if scored => {
                    let (forks, outcome) = self.prefill_scored(i);
                    born.extend(forks);
                    match outcome {
                        Ok(()) => {
                            feeds.push(None);
                            i += 1;
                        }
                        Err(e) => self.finish(i, Err(e)),
                    }
                }
                Ok(Step::Prefill) => {
                    feeds.push(Some(self.running[i].request.prompt.clone()));
                    i += 1;
                }
                Ok(Step::Feed(token)) => {
                    feeds.push(Some(vec![token]));
                    i += 1;
                }
                Ok(Step::Finished(reason)) => self.finish(i, Ok(reason)),
                Err(e) => self.finish(i, Err(e)),
            }
        }
        let in_pass: Vec<usize> = (0..feeds.len()).filter(|&i| feeds[i].is_some()).collect();
        if !in_pass.is_empty() {
            let mut batch: Vec<(&mut B::Sequence, &[u32])> = self
                .running
                .iter_mut()
                .zip(&feeds)
                .filter_map(|(a, f)| Some((&mut a.seq, f.as_deref()?)))
                .collect();
            match self.backend.forward_batch(&mut batch) {
                Ok(all) => {
                    // Backwards: `finish` moves the last sequence into the gap.
                    for (i, logits) in in_pass.into_iter().zip(all).rev() {
                        let (forks, outcome) = self.after_forward(i, logits);
                        born.extend(forks);
                        if let Err(e) = outcome {
                            self.finish(i, Err(e));
                        }
                    }
                }
                Err(e) => {
                    while !self.running.is_empty() {
                        self.finish(0, Err(EngineError::Backend(e.clone())));
                    }
                }
            }
        }
        self.running.extend(born);
    }

    /// Runs sequence `i`'s prompt alone, keeping the logits after every
    /// position: reports each prompt token's log-probability, then samples
    /// as [`Self::after_forward`] does. The prompt runs in chunks of
    /// [`SCORED_CHUNK`] tokens: the logits of a whole long prompt at once
    /// would take gigabytes (positions × vocabulary × 4 bytes).
    fn prefill_scored(&mut self, i: usize) -> Started<'t, B::Sequence> {
        let a = &mut self.running[i];
        let top = a.request.params.prompt_logprobs.unwrap_or(0);
        let prompt = a.request.prompt.clone();
        let mut scored = Vec::with_capacity(prompt.len());
        scored.push(TokenLogprob {
            token: prompt[0],
            logprob: None,
            top: Vec::new(),
        });
        let mut last = None;
        for (c, chunk) in prompt.chunks(SCORED_CHUNK).enumerate() {
            let rows = match self.backend.forward_all(&mut a.seq, chunk) {
                Ok(rows) => rows,
                Err(e) => return (Vec::new(), Err(EngineError::Backend(e))),
            };
            // Row k predicts the token after chunk position k.
            let next = prompt[c * SCORED_CHUNK + 1..].iter();
            for (k, (row, &token)) in rows.iter().zip(next).enumerate() {
                let at = c * SCORED_CHUNK + k + 1;
                let also = a.request.params.prompt_also.get(at).map_or(&[][..], |v| v);
                scored.push(logits::logprob_of(row, token, top, also));
            }
            last = rows.into_iter().last();
        }
        let Some(last) = last else {
            let e = crate::BackendError("no logits for the prompt".into());
            return (Vec::new(), Err(EngineError::Backend(e)));
        };
        let (forks, outcome) = self.after_forward(i, last);
        let event = GenerationEvent::Prompt(scored.into());
        let leader = outcome.is_ok().then(|| &self.running[i].events);
        for e in leader.into_iter().chain(forks.iter().map(|f| &f.events)) {
            let _ = e.send(event.clone());
        }
        (forks, outcome)
    }

    /// Sequence `i`'s forward pass gave `logits`: after a prompt, start its
    /// forks from its cache; then sample its next token (each fork its own).
    /// The forks go on whether or not sequence `i` could sample.
    fn after_forward(&mut self, i: usize, logits: Vec<f32>) -> Started<'t, B::Sequence> {
        let mut born = Vec::new();
        let a = &mut self.running[i];
        if !a.prefilled {
            a.prefilled = true;
            metrics::histogram!("modelship_time_to_first_token_seconds")
                .record(a.request.enqueued.elapsed().as_secs_f64());
            metrics::counter!("modelship_prompt_tokens_total")
                .increment(a.request.prompt.len() as u64);
            // A fork that cannot start fails alone, and says so.
            for (k, events, constraint) in std::mem::take(&mut a.forks) {
                let seq = match self.backend.fork(&a.seq) {
                    Ok(seq) => seq,
                    Err(e) => {
                        let _ = events.send(GenerationEvent::Failed(EngineError::Backend(e)));
                        continue;
                    }
                };
                let mut fork = sample(
                    self.tokenizer,
                    a.request.clone(),
                    events,
                    k,
                    constraint,
                    seq,
                );
                fork.prefilled = true;
                match choose(&mut fork, logits.clone()) {
                    Ok(()) => born.push(fork),
                    Err(e) => {
                        let _ = fork.events.send(GenerationEvent::Failed(e));
                    }
                }
            }
        }
        let outcome = choose(&mut self.running[i], logits);
        (born, outcome)
    }

    /// Ends sequence `i`: flushes text held back for a possible stop
    /// sequence that never came, then reports; samples still waiting to be
    /// forked from it end the same way.
    fn finish(&mut self, i: usize, outcome: Result<FinishReason, EngineError>) {
        let mut a = self.running.swap_remove(i);
        for (_, events, _) in a.forks.drain(..) {
            let _ = events.send(match &outcome {
                Ok(reason) => GenerationEvent::Done {
                    reason: *reason,
                    usage: Usage {
                        prompt_tokens: a.request.prompt.len(),
                        completion_tokens: 0,
                    },
                },
                Err(e) => GenerationEvent::Failed(e.clone()),
            });
        }
        match outcome {
            Ok(reason) => {
                let rest = a.stop.flush();
                if !rest.is_empty() || !a.held.is_empty() {
                    let _ = a.events.send(GenerationEvent::Text {
                        text: rest,
                        logprobs: std::mem::take(&mut a.held),
                    });
                }
                let usage = Usage {
                    prompt_tokens: a.request.prompt.len(),
                    completion_tokens: a.generated,
                };
                let _ = a.events.send(GenerationEvent::Done { reason, usage });
            }
            Err(e) => {
                let _ = a.events.send(GenerationEvent::Failed(e));
            }
        }
    }

    /// Emits sequence `i`'s pending token; says whether it goes on.
    fn emit(&mut self, i: usize) -> Result<Step, EngineError> {
        let a = &mut self.running[i];
        if a.events.is_closed() && a.forks.iter().all(|f| f.1.is_closed()) {
            // The client went away: free the slot now.
            return Ok(Step::Finished(FinishReason::Stop));
        }
        if !a.prefilled {
            return Ok(Step::Prefill);
        }
        if a.request.params.max_tokens == 0 {
            // Only the prompt was to be scored.
            return Ok(Step::Finished(FinishReason::Length));
        }
        let Some((token, logprob)) = a.next.take() else {
            return Err(EngineError::Backend(crate::BackendError(
                "a sequence ran without a sampled token".into(),
            )));
        };
        if self.tokenizer.eos().contains(&token) {
            return Ok(Step::Finished(FinishReason::Stop));
        }
        a.generated += 1;
        a.held.extend(logprob);
        metrics::counter!("modelship_generated_tokens_total").increment(1);
        let piece = a
            .detok
            .push(token)
            .map_err(|e| EngineError::Backend(crate::BackendError(e)))?;
        if let Some(piece) = piece {
            let s = a.stop.push(&piece);
            if !s.emit.is_empty() {
                let _ = a.events.send(GenerationEvent::Text {
                    text: s.emit,
                    logprobs: std::mem::take(&mut a.held),
                });
            }
            if s.stopped {
                // The tokens that spelt the stop sequence are not output.
                a.held.clear();
                return Ok(Step::Finished(FinishReason::Stop));
            }
        }
        if a.constraint.as_ref().is_some_and(Constraint::is_finished) {
            return Ok(Step::Finished(FinishReason::Stop));
        }
        if a.generated >= a.request.params.max_tokens {
            return Ok(Step::Finished(FinishReason::Length));
        }
        Ok(Step::Feed(token))
    }
}

/// Picks a sample's next token from its logits: reads the log-probabilities
/// first (the model's distribution), then applies biases, penalties and the
/// grammar, then samples.
fn choose<S>(a: &mut Active<'_, S>, mut logits: Vec<f32>) -> Result<(), EngineError> {
    let p = &a.request.params;
    let raw = p.logprobs.map(|_| logits.clone());
    if !p.logit_bias.is_empty() || !p.penalties.is_none() {
        logits::adjust(&mut logits, &p.logit_bias, &p.penalties, &a.history);
    }
    let grammar_error =
        |e: String| EngineError::Backend(crate::BackendError(format!("the output grammar: {e}")));
    if let Some(c) = &mut a.constraint {
        c.mask(&mut logits).map_err(grammar_error)?;
    }
    let token = a.sampler.sample(&logits);
    if let Some(c) = &mut a.constraint {
        c.accept(token).map_err(grammar_error)?;
    }
    a.history.push(token);
    let logprob = raw.map(|raw| logits::logprob_of(&raw, token, p.logprobs.unwrap_or(0), &[]));
    a.next = Some((token, logprob));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::joins_pass;

    #[test]
    fn prompts_join_a_pass_within_the_token_budget() {
        // The first prompt runs even alone over the budget (the limits keep
        // it within max_context ≤ max_batch_tokens anyway).
        assert!(joins_pass(0, 5000, 4096));
        assert!(joins_pass(2048, 2048, 4096));
        assert!(!joins_pass(2048, 2049, 4096));
        // Four 2048-token prompts under 4096: two passes of two.
        let (mut passes, mut pending) = (vec![], 0);
        for _ in 0..4 {
            if !joins_pass(pending, 2048, 4096) {
                passes.push(pending);
                pending = 0;
            }
            pending += 2048;
        }
        passes.push(pending);
        assert_eq!(passes, [4096, 4096]);
    }
}
