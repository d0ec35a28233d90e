//! The thread a scheduler runs on, and the one way to learn that it died.
//!
//! A backend that panics (a kernel's assertion, an out-of-range index) ends
//! the thread. Every request then fails, so the replica must stop claiming
//! to be ready and exit, letting its controller restart it; a server learns
//! of it here ([`ComputeThread::is_running`], [`ComputeThread::stopped`])
//! instead of by answering 503 forever.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use crate::EngineError;

/// The sending side of a scheduler thread's job queue.
pub(crate) struct ComputeThread<J> {
    tx: mpsc::UnboundedSender<J>,
    /// Why the thread ended; set before the queue closes.
    ended: Arc<OnceLock<String>>,
}

impl<J> Clone for ComputeThread<J> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            ended: self.ended.clone(),
        }
    }
}

impl<J: Send + 'static> ComputeThread<J> {
    /// Runs `body` on a thread named `name` until it returns (its queue
    /// closed) or panics.
    pub(crate) fn start(
        name: &str,
        body: impl FnOnce(&mut mpsc::UnboundedReceiver<J>) + Send + 'static,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ended = Arc::new(OnceLock::new());
        let reason = ended.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let why = match catch_unwind(AssertUnwindSafe(|| body(&mut rx))) {
                    // Its engine was dropped: the queue closed.
                    Ok(()) => "the engine thread returned".to_owned(),
                    Err(payload) => {
                        let why = format!("the engine thread panicked: {}", panic_text(&*payload));
                        tracing::error!(reason = %why, "engine stopped");
                        why
                    }
                };
                let _ = reason.set(why);
                // Closing the queue last: whoever sees it closed finds the reason.
                drop(rx);
            })
            .expect("spawning a thread");
        Self { tx, ended }
    }
}

impl<J> ComputeThread<J> {
    /// Queues `job`; an error once the thread has stopped.
    pub(crate) fn send(&self, job: J) -> Result<(), EngineError> {
        self.tx.send(job).map_err(|_| EngineError::Unavailable)
    }

    pub(crate) fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Resolves once the thread has stopped, with why.
    pub(crate) async fn stopped(&self) -> String {
        self.tx.closed().await;
        self.ended
            .get()
            .cloned()
            .unwrap_or_else(|| "the engine thread stopped".to_owned())
    }
}

/// A panic's message, when it carries one (`panic!` with a literal or a
/// format string does).
fn panic_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a non-text panic payload"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_reported_and_closes_the_queue() {
        let thread = ComputeThread::<u32>::start("test-panics", |rx| {
            let n = rx.blocking_recv().expect("a job");
            panic!("job {n} broke an invariant");
        });
        assert!(thread.is_running());
        thread.send(7).unwrap();
        let why = thread.stopped().await;
        assert_eq!(why, "the engine thread panicked: job 7 broke an invariant");
        assert!(!thread.is_running());
        assert!(matches!(thread.send(8), Err(EngineError::Unavailable)));
    }

    #[tokio::test]
    async fn a_thread_that_returns_is_stopped_too() {
        let thread = ComputeThread::<u32>::start("test-returns", |_| {});
        assert_eq!(thread.stopped().await, "the engine thread returned");
    }
}
