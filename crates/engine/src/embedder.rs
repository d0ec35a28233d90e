//! The encoder actor: one thread owns the backend and runs [`BatchQueue`]
//! batches (embeddings, or a classifier's logits); callers hold an
//! [`Embedder`] handle.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::batcher::BatchQueue;
use crate::thread::ComputeThread;
use crate::{BackendError, EncodeBackend, EngineError, Sequence};

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, BackendError>>;

pub(crate) struct Job {
    inputs: Vec<Sequence>,
    reply: Reply,
}

/// Handle to the embedding thread. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Embedder {
    thread: ComputeThread<Job>,
    /// One permit per request in the engine: bounds the queue.
    admission: Arc<Semaphore>,
    max_queue: usize,
}

impl Embedder {
    /// Starts the thread. `max_queue` bounds requests inside the engine
    /// (queued or computing); `max_batch_tokens` bounds one forward pass.
    pub(crate) fn start<B: EncodeBackend>(
        backend: B,
        task: &'static str,
        max_batch_tokens: usize,
        max_queue: usize,
    ) -> Self {
        let thread = ComputeThread::start("modelship-embed", move |rx| {
            run(backend, rx, task, max_batch_tokens)
        });
        Self {
            thread,
            admission: Arc::new(Semaphore::new(max_queue)),
            max_queue,
        }
    }

    pub(crate) async fn encode(&self, inputs: Vec<Sequence>) -> Result<Vec<Vec<f32>>, EngineError> {
        let _permit =
            self.admission
                .clone()
                .try_acquire_owned()
                .map_err(|_| EngineError::Overloaded {
                    queued: self.max_queue,
                })?;
        let (reply, rx) = oneshot::channel();
        self.thread.send(Job { inputs, reply })?;
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(EngineError::Backend(e)),
            Err(_) => Err(EngineError::Unavailable),
        }
    }

    pub(crate) fn thread(&self) -> &ComputeThread<Job> {
        &self.thread
    }
}

fn run<B: EncodeBackend>(
    mut backend: B,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    task: &'static str,
    budget: usize,
) {
    let mut queue: BatchQueue<Reply> = BatchQueue::default();
    loop {
        // Block only when there is nothing to do; then take everything that
        // arrived meanwhile, so batches grow with load.
        if queue.is_empty() {
            match rx.blocking_recv() {
                Some(job) => queue.append(job.inputs, job.reply),
                None => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            queue.append(job.inputs, job.reply);
        }
        queue.drop_cancelled(|r| r.is_closed());
        metrics::gauge!("modelship_queue_depth", "task" => task).set(queue.requests() as f64);
        let batch = queue.next_batch(budget);
        if batch.is_empty() {
            continue;
        }
        let tokens: Vec<&Sequence> = batch.iter().map(|e| &e.tokens).collect();
        let padded = tokens.iter().map(|t| t.len()).max().unwrap_or(0) * tokens.len();
        metrics::histogram!("modelship_batch_size", "task" => task).record(tokens.len() as f64);
        metrics::histogram!("modelship_batch_tokens", "task" => task).record(padded as f64);
        let started = Instant::now();
        let result = backend.encode(&tokens);
        metrics::histogram!("modelship_forward_seconds", "task" => task)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(vectors) if vectors.len() == batch.len() => {
                for (reply, vectors) in queue.complete(batch, vectors) {
                    let _ = reply.send(Ok(vectors));
                }
            }
            Ok(vectors) => {
                let err = BackendError(format!(
                    "backend returned {} vectors for {} inputs",
                    vectors.len(),
                    batch.len()
                ));
                for reply in queue.fail(&batch) {
                    let _ = reply.send(Err(err.clone()));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "embedding forward pass failed");
                for reply in queue.fail(&batch) {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}
