//! The generation actor: one thread owns the backend and interleaves decode
//! steps of up to `max_concurrent` sequences, each with its own KV cache;
//! more requests wait in a bounded queue. Text leaves as soon as it forms whole
//! characters, minus anything that may still turn into a stop sequence.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use modelship_model::{Detokenizer, TextTokenizer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::sampler::{Sampler, SamplingParams};
use crate::stop::StopMatcher;
use crate::{EngineError, GenerateBackend};

/// What to generate, after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence token or a stop sequence.
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

/// One event of a generation, in order: text pieces, then `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum GenerationEvent {
    Text(String),
    Done { reason: FinishReason, usage: Usage },
    Failed(EngineError),
}

/// The events of one generation. Dropping it cancels the generation.
pub type GenerationStream = mpsc::UnboundedReceiver<GenerationEvent>;

struct Job {
    prompt: Vec<u32>,
    params: GenerateParams,
    events: mpsc::UnboundedSender<GenerationEvent>,
    enqueued: Instant,
    _permit: OwnedSemaphorePermit,
}

#[derive(Clone)]
pub(crate) struct Generator {
    tx: mpsc::UnboundedSender<Job>,
    admission: Arc<Semaphore>,
    capacity: usize,
}

impl Generator {
    pub(crate) fn start<B: GenerateBackend>(
        backend: B,
        tokenizer: Arc<TextTokenizer>,
        max_concurrent: usize,
        max_queue: usize,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("modelship-generate".into())
            .spawn(move || Worker::new(backend, &tokenizer, max_concurrent).run(rx))
            .expect("spawning a thread");
        let capacity = max_concurrent + max_queue;
        Self {
            tx,
            admission: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    pub(crate) fn generate(
        &self,
        prompt: Vec<u32>,
        params: GenerateParams,
    ) -> Result<GenerationStream, EngineError> {
        let permit =
            self.admission
                .clone()
                .try_acquire_owned()
                .map_err(|_| EngineError::Overloaded {
                    queued: self.capacity,
                })?;
        let (events, rx) = mpsc::unbounded_channel();
        self.tx
            .send(Job {
                prompt,
                params,
                events,
                enqueued: Instant::now(),
                _permit: permit,
            })
            .map_err(|_| EngineError::Unavailable)?;
        Ok(rx)
    }
}

/// A sequence being generated.
struct Active<'t, S> {
    job: Job,
    seq: S,
    sampler: Sampler,
    detok: Detokenizer<'t>,
    stop: StopMatcher,
    /// Sampled, not yet emitted nor fed back.
    next: u32,
    generated: usize,
}

enum Step {
    Continue,
    Finished(FinishReason),
}

struct Worker<'t, B: GenerateBackend> {
    backend: B,
    tokenizer: &'t TextTokenizer,
    max_concurrent: usize,
    waiting: VecDeque<Job>,
    running: Vec<Active<'t, B::Sequence>>,
}

impl<'t, B: GenerateBackend> Worker<'t, B> {
    fn new(backend: B, tokenizer: &'t TextTokenizer, max_concurrent: usize) -> Self {
        Self {
            backend,
            tokenizer,
            max_concurrent,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
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

    /// Starts waiting jobs while there is room: prefill, then the first token.
    fn admit(&mut self) {
        while self.running.len() < self.max_concurrent {
            let Some(job) = self.waiting.pop_front() else {
                return;
            };
            if job.events.is_closed() {
                continue;
            }
            let mut seq = self.backend.new_sequence();
            match self.backend.forward(&mut seq, &job.prompt) {
                Ok(logits) => {
                    let mut sampler = Sampler::new(job.params.sampling);
                    let next = sampler.sample(&logits);
                    metrics::histogram!("modelship_time_to_first_token_seconds")
                        .record(job.enqueued.elapsed().as_secs_f64());
                    metrics::counter!("modelship_prompt_tokens_total")
                        .increment(job.prompt.len() as u64);
                    let stop = StopMatcher::new(job.params.stop.clone());
                    self.running.push(Active {
                        job,
                        seq,
                        sampler,
                        detok: self.tokenizer.stream(),
                        stop,
                        next,
                        generated: 0,
                    });
                }
                Err(e) => {
                    let _ = job
                        .events
                        .send(GenerationEvent::Failed(EngineError::Backend(e)));
                }
            }
        }
    }

    /// One token for every running sequence.
    fn step_all(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let outcome = self.step(i);
            match outcome {
                Ok(Step::Continue) => i += 1,
                Ok(Step::Finished(reason)) => {
                    let mut a = self.running.swap_remove(i);
                    let rest = a.stop.flush();
                    if !rest.is_empty() && reason == FinishReason::Length {
                        let _ = a.job.events.send(GenerationEvent::Text(rest));
                    }
                    let usage = Usage {
                        prompt_tokens: a.job.prompt.len(),
                        completion_tokens: a.generated,
                    };
                    let _ = a.job.events.send(GenerationEvent::Done { reason, usage });
                }
                Err(e) => {
                    let a = self.running.swap_remove(i);
                    let _ = a.job.events.send(GenerationEvent::Failed(e));
                }
            }
        }
    }

    fn step(&mut self, i: usize) -> Result<Step, EngineError> {
        let a = &mut self.running[i];
        if a.job.events.is_closed() {
            // The client went away: free the slot now.
            return Ok(Step::Finished(FinishReason::Stop));
        }
        let token = a.next;
        if self.tokenizer.eos().contains(&token) {
            return Ok(Step::Finished(FinishReason::Stop));
        }
        a.generated += 1;
        metrics::counter!("modelship_generated_tokens_total").increment(1);
        let piece = a
            .detok
            .push(token)
            .map_err(|e| EngineError::Backend(crate::BackendError(e)))?;
        if let Some(piece) = piece {
            let s = a.stop.push(&piece);
            if !s.emit.is_empty() {
                let _ = a.job.events.send(GenerationEvent::Text(s.emit));
            }
            if s.stopped {
                return Ok(Step::Finished(FinishReason::Stop));
            }
        }
        if a.generated >= a.job.params.max_tokens {
            return Ok(Step::Finished(FinishReason::Length));
        }
        let logits = self
            .backend
            .forward(&mut a.seq, &[token])
            .map_err(EngineError::Backend)?;
        a.next = a.sampler.sample(&logits);
        Ok(Step::Continue)
    }
}
