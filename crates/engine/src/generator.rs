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

pub(crate) struct Job {
    prompt: Vec<u32>,
    params: GenerateParams,
    events: mpsc::UnboundedSender<GenerationEvent>,
    enqueued: Instant,
    _permit: OwnedSemaphorePermit,
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
        self.thread.send(Job {
            prompt,
            params,
            events,
            enqueued: Instant::now(),
            _permit: permit,
        })?;
        Ok(rx)
    }

    pub(crate) fn thread(&self) -> &ComputeThread<Job> {
        &self.thread
    }
}

/// A sequence being generated.
struct Active<'t, S> {
    job: Job,
    seq: S,
    sampler: Sampler,
    detok: Detokenizer<'t>,
    stop: StopMatcher,
    /// Sampled, not yet emitted nor fed back; `None` before the prompt ran.
    next: Option<u32>,
    generated: usize,
}

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

/// Whether a prompt of `len` tokens joins a pass already holding `pending`
/// prompt tokens: the first always does, the rest while the pass stays
/// within `budget`.
fn joins_pass(pending: usize, len: usize, budget: usize) -> bool {
    pending == 0 || pending + len <= budget
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

    /// Moves waiting jobs into the running set while there is room and
    /// their prompts fit this step's pass; their prompts run with the next
    /// step.
    fn admit(&mut self) {
        let mut prompt_tokens = 0;
        while self.running.len() < self.max_concurrent {
            let Some(next) = self.waiting.front() else {
                return;
            };
            if !joins_pass(prompt_tokens, next.prompt.len(), self.max_batch_tokens) {
                return;
            }
            let job = self.waiting.pop_front().expect("front exists");
            if job.events.is_closed() {
                continue;
            }
            prompt_tokens += job.prompt.len();
            self.running.push(Active {
                seq: self.backend.new_sequence(),
                sampler: Sampler::new(job.params.sampling),
                detok: self.tokenizer.stream(),
                stop: StopMatcher::new(job.params.stop.clone()),
                next: None,
                generated: 0,
                job,
            });
        }
    }

    /// One step for every running sequence: emit each one's pending token,
    /// then one forward pass over all that go on (new prompts and single
    /// decode tokens packed together), then sample each one's next token.
    fn step_all(&mut self) {
        let mut feeds: Vec<Vec<u32>> = Vec::with_capacity(self.running.len());
        let mut i = 0;
        while i < self.running.len() {
            match self.emit(i) {
                Ok(Step::Prefill) => {
                    feeds.push(self.running[i].job.prompt.clone());
                    i += 1;
                }
                Ok(Step::Feed(token)) => {
                    feeds.push(vec![token]);
                    i += 1;
                }
                Ok(Step::Finished(reason)) => self.finish(i, Ok(reason)),
                Err(e) => self.finish(i, Err(e)),
            }
        }
        if self.running.is_empty() {
            return;
        }
        let mut batch: Vec<(&mut B::Sequence, &[u32])> = self
            .running
            .iter_mut()
            .zip(&feeds)
            .map(|(a, f)| (&mut a.seq, f.as_slice()))
            .collect();
        match self.backend.forward_batch(&mut batch) {
            Ok(logits) => {
                for (a, logits) in self.running.iter_mut().zip(logits) {
                    if a.next.is_none() {
                        metrics::histogram!("modelship_time_to_first_token_seconds")
                            .record(a.job.enqueued.elapsed().as_secs_f64());
                        metrics::counter!("modelship_prompt_tokens_total")
                            .increment(a.job.prompt.len() as u64);
                    }
                    a.next = Some(a.sampler.sample(&logits));
                }
            }
            Err(e) => {
                while !self.running.is_empty() {
                    self.finish(0, Err(EngineError::Backend(e.clone())));
                }
            }
        }
    }

    /// Ends sequence `i`: flushes held text on a length stop, then reports.
    fn finish(&mut self, i: usize, outcome: Result<FinishReason, EngineError>) {
        let mut a = self.running.swap_remove(i);
        match outcome {
            Ok(reason) => {
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
                let _ = a.job.events.send(GenerationEvent::Failed(e));
            }
        }
    }

    /// Emits sequence `i`'s pending token; says whether it goes on.
    fn emit(&mut self, i: usize) -> Result<Step, EngineError> {
        let a = &mut self.running[i];
        if a.job.events.is_closed() {
            // The client went away: free the slot now.
            return Ok(Step::Finished(FinishReason::Stop));
        }
        let Some(token) = a.next else {
            return Ok(Step::Prefill);
        };
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
        Ok(Step::Feed(token))
    }
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
