//! Dynamic batching of embedding requests under a token budget.
//!
//! A request's texts become separate entries, so one large request can share
//! forward passes with small ones and never exceeds the budget alone. The queue
//! is FIFO: a batch takes entries from the front while the padded cost
//! (`entries × longest entry`) stays within the budget; the first entry is
//! always taken, and every entry fits on its own because inputs are checked
//! against `max_context ≤ max_batch_tokens` before they are queued.

use std::collections::{HashMap, VecDeque};

/// One text of a request, waiting for a forward pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub request: u64,
    pub index: usize,
    pub tokens: Vec<u32>,
}

struct Pending<R> {
    vectors: Vec<Option<Vec<f32>>>,
    remaining: usize,
    reply: R,
}

/// The queue and the requests waiting for their vectors. `R` is whatever
/// carries the answer back (a oneshot sender in the engine, a plain value in
/// tests).
pub struct BatchQueue<R> {
    entries: VecDeque<Entry>,
    pending: HashMap<u64, Pending<R>>,
    next_id: u64,
}

impl<R> Default for BatchQueue<R> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            pending: HashMap::new(),
            next_id: 0,
        }
    }
}

/// A request whose vectors are all computed, in input order.
pub type Finished<R> = (R, Vec<Vec<f32>>);

impl<R> BatchQueue<R> {
    /// Queues the texts of one request.
    pub fn append(&mut self, inputs: Vec<Vec<u32>>, reply: R) {
        let id = self.next_id;
        self.next_id += 1;
        let n = inputs.len();
        self.pending.insert(
            id,
            Pending {
                vectors: vec![None; n],
                remaining: n,
                reply,
            },
        );
        for (index, tokens) in inputs.into_iter().enumerate() {
            self.entries.push_back(Entry {
                request: id,
                index,
                tokens,
            });
        }
    }

    /// Requests not yet answered.
    pub fn requests(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes the next batch whose padded size stays within `budget` tokens.
    pub fn next_batch(&mut self, budget: usize) -> Vec<Entry> {
        let mut batch: Vec<Entry> = Vec::new();
        let mut longest = 0;
        while let Some(front) = self.entries.front() {
            let longest_with = longest.max(front.tokens.len());
            if !batch.is_empty() && longest_with * (batch.len() + 1) > budget {
                break;
            }
            longest = longest_with;
            batch.extend(self.entries.pop_front());
        }
        batch
    }

    /// Records the vectors of `batch` (in batch order) and returns the requests
    /// that are now complete.
    pub fn complete(&mut self, batch: Vec<Entry>, vectors: Vec<Vec<f32>>) -> Vec<Finished<R>> {
        let mut done = Vec::new();
        for (entry, v) in batch.into_iter().zip(vectors) {
            let Some(p) = self.pending.get_mut(&entry.request) else {
                continue; // cancelled or failed meanwhile
            };
            p.vectors[entry.index] = Some(v);
            p.remaining -= 1;
            if p.remaining == 0 {
                let p = self.pending.remove(&entry.request).expect("present above");
                let vectors = p
                    .vectors
                    .into_iter()
                    .map(Option::unwrap_or_default)
                    .collect();
                done.push((p.reply, vectors));
            }
        }
        done
    }

    /// Removes the requests of `batch` (its forward pass failed) and every
    /// queued entry of theirs; returns their replies.
    pub fn fail(&mut self, batch: &[Entry]) -> Vec<R> {
        let mut failed = Vec::new();
        for e in batch {
            if let Some(p) = self.pending.remove(&e.request) {
                failed.push(p.reply);
            }
        }
        self.entries
            .retain(|e| self.pending.contains_key(&e.request));
        failed
    }

    /// Drops requests whose caller went away, so no compute is spent on them.
    pub fn drop_cancelled(&mut self, is_cancelled: impl Fn(&R) -> bool) {
        self.pending.retain(|_, p| !is_cancelled(&p.reply));
        self.entries
            .retain(|e| self.pending.contains_key(&e.request));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn toks(n: usize) -> Vec<u32> {
        vec![7; n]
    }

    #[test]
    fn batches_respect_the_padded_budget() {
        let mut q = BatchQueue::default();
        q.append(vec![toks(10), toks(10), toks(30)], "a");
        // 2 × 10 = 20 fits in 40; adding the 30-token entry costs 3 × 30 = 90.
        let b = q.next_batch(40);
        assert_eq!(b.len(), 2);
        let b2 = q.next_batch(40);
        assert_eq!(b2.len(), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn one_entry_always_goes_even_over_budget() {
        let mut q = BatchQueue::default();
        q.append(vec![toks(100)], ());
        assert_eq!(q.next_batch(10).len(), 1);
    }

    #[test]
    fn requests_complete_in_input_order_across_batches() {
        let mut q = BatchQueue::default();
        q.append(vec![toks(4), toks(4), toks(4)], "r");
        let b1 = q.next_batch(8); // two entries
        assert!(q.complete(b1, vec![vec![0.0], vec![1.0]]).is_empty());
        let b2 = q.next_batch(8);
        let done = q.complete(b2, vec![vec![2.0]]);
        assert_eq!(done, vec![("r", vec![vec![0.0], vec![1.0], vec![2.0]])]);
        assert_eq!(q.requests(), 0);
    }

    #[test]
    fn a_failed_batch_drops_its_requests_entries() {
        let mut q = BatchQueue::default();
        q.append(vec![toks(4), toks(4)], "a");
        q.append(vec![toks(4)], "b");
        let b = q.next_batch(4); // a's first text only
        assert_eq!(q.fail(&b), vec!["a"]);
        let rest = q.next_batch(100);
        assert_eq!(rest.iter().map(|e| e.request).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn cancelled_requests_are_not_computed() {
        let mut q = BatchQueue::default();
        q.append(vec![toks(4)], "gone");
        q.append(vec![toks(4)], "here");
        q.drop_cancelled(|r| *r == "gone");
        let b = q.next_batch(100);
        assert_eq!(b.len(), 1);
        assert_eq!(q.complete(b, vec![vec![1.0]])[0].0, "here");
    }

    proptest! {
        /// Every entry is batched exactly once, in FIFO order, and no batch of
        /// two or more entries exceeds the budget.
        #[test]
        fn batching_is_complete_ordered_and_bounded(
            requests in prop::collection::vec(prop::collection::vec(1usize..64, 1..6), 1..20),
            budget in 64usize..512,
        ) {
            let mut q = BatchQueue::default();
            let mut expected = Vec::new();
            for (r, lens) in requests.iter().enumerate() {
                for (i, &n) in lens.iter().enumerate() { expected.push((r as u64, i)); let _ = n; }
                q.append(lens.iter().map(|&n| toks(n)).collect(), r);
            }
            let mut seen = Vec::new();
            let mut finished = 0;
            while !q.is_empty() {
                let b = q.next_batch(budget);
                prop_assert!(!b.is_empty());
                let longest = b.iter().map(|e| e.tokens.len()).max().unwrap();
                prop_assert!(b.len() == 1 || longest * b.len() <= budget);
                seen.extend(b.iter().map(|e| (e.request, e.index)));
                let vs = b.iter().map(|e| vec![e.index as f32]).collect();
                finished += q.complete(b, vs).len();
            }
            prop_assert_eq!(seen, expected);
            prop_assert_eq!(finished, requests.len());
        }
    }
}
