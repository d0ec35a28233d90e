//! Dynamic batching of embedding requests under a token budget.
//!
//! A request's texts become separate entries, so one large request shares
//! forward passes with small ones and never exceeds the budget alone.
//! Requests take turns: a batch takes one text from each waiting request in
//! the order of their turns, round after round, while the padded cost
//! (`entries × longest entry`) stays within the budget, and a request whose
//! text was taken goes to the back. A one-word request that arrives behind
//! 512 texts is in the next batch instead of after all of them. The first
//! entry is always taken, and every entry fits on its own because inputs are
//! checked against `max_context ≤ max_batch_tokens` before they are queued.

use std::collections::{HashMap, VecDeque};

use crate::Sequence;

/// One text of a request, waiting for a forward pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub request: u64,
    pub index: usize,
    pub tokens: Sequence,
}

struct Pending<R> {
    /// Texts not yet batched, in input order: (index, tokens).
    queued: VecDeque<(usize, Sequence)>,
    vectors: Vec<Option<Vec<f32>>>,
    remaining: usize,
    reply: R,
}

/// The queue and the requests waiting for their vectors. `R` is whatever
/// carries the answer back (a oneshot sender in the engine, a plain value in
/// tests).
pub struct BatchQueue<R> {
    /// Requests with texts still queued, the one whose turn it is first.
    turns: VecDeque<u64>,
    pending: HashMap<u64, Pending<R>>,
    next_id: u64,
}

impl<R> Default for BatchQueue<R> {
    fn default() -> Self {
        Self {
            turns: VecDeque::new(),
            pending: HashMap::new(),
            next_id: 0,
        }
    }
}

/// A request whose vectors are all computed, in input order.
pub type Finished<R> = (R, Vec<Vec<f32>>);

impl<R> BatchQueue<R> {
    /// Queues the texts of one request; it takes its turn after the
    /// requests already waiting.
    pub fn append(&mut self, inputs: Vec<Sequence>, reply: R) {
        let id = self.next_id;
        self.next_id += 1;
        let n = inputs.len();
        if n > 0 {
            self.turns.push_back(id);
        }
        self.pending.insert(
            id,
            Pending {
                queued: inputs.into_iter().enumerate().collect(),
                vectors: vec![None; n],
                remaining: n,
                reply,
            },
        );
    }

    /// Requests not yet answered.
    pub fn requests(&self) -> usize {
        self.pending.len()
    }

    /// Whether no text waits for a batch.
    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }

    /// Takes the next batch whose padded size stays within `budget` tokens,
    /// one text per request per turn.
    pub fn next_batch(&mut self, budget: usize) -> Vec<Entry> {
        let mut batch: Vec<Entry> = Vec::new();
        let mut longest = 0;
        while let Some(&request) = self.turns.front() {
            let p = self
                .pending
                .get_mut(&request)
                .expect("a request with a turn is pending");
            let (_, tokens) = p.queued.front().expect("a request with a turn has texts");
            let longest_with = longest.max(tokens.len());
            if !batch.is_empty() && longest_with * (batch.len() + 1) > budget {
                break;
            }
            longest = longest_with;
            let (index, tokens) = p.queued.pop_front().expect("front exists");
            batch.push(Entry {
                request,
                index,
                tokens,
            });
            self.turns.pop_front();
            if !p.queued.is_empty() {
                self.turns.push_back(request);
            }
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

    /// Removes the requests of `batch` (its forward pass failed) and their
    /// queued texts; returns their replies.
    pub fn fail(&mut self, batch: &[Entry]) -> Vec<R> {
        let mut failed = Vec::new();
        for e in batch {
            if let Some(p) = self.pending.remove(&e.request) {
                failed.push(p.reply);
            }
        }
        self.turns.retain(|r| self.pending.contains_key(r));
        failed
    }

    /// Drops requests whose caller went away, so no compute is spent on them.
    pub fn drop_cancelled(&mut self, is_cancelled: impl Fn(&R) -> bool) {
        self.pending.retain(|_, p| !is_cancelled(&p.reply));
        self.turns.retain(|r| self.pending.contains_key(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn toks(n: usize) -> Sequence {
        Sequence::single(vec![7; n])
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
    fn a_small_request_behind_a_large_one_joins_the_next_batch() {
        let mut q = BatchQueue::default();
        q.append(vec![toks(10); 512], "large");
        q.append(vec![toks(3)], "small");
        let first = q.next_batch(40);
        assert_eq!(first.len(), 4);
        assert_eq!(
            first
                .iter()
                .map(|e| (e.request, e.index))
                .collect::<Vec<_>>(),
            vec![(0, 0), (1, 0), (0, 1), (0, 2)]
        );
        let vectors = first.iter().map(|_| vec![0.0]).collect();
        let done = q.complete(first, vectors);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, "small");
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
        /// Every entry is batched exactly once, each request's in input order,
        /// and no batch of two or more entries exceeds the budget.
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
            for r in 0..requests.len() as u64 {
                let mine: Vec<usize> = seen.iter().filter(|s| s.0 == r).map(|s| s.1).collect();
                prop_assert!(mine.windows(2).all(|w| w[0] < w[1]), "request {} out of order", r);
            }
            seen.sort_unstable();
            prop_assert_eq!(seen, expected);
            prop_assert_eq!(finished, requests.len());
        }

        /// Requests take turns: with texts of one length, every request's
        /// k-th text is batched before any request's (k+1)-th.
        #[test]
        fn requests_take_turns(
            counts in prop::collection::vec(1usize..12, 1..8),
            per_batch in 1usize..6,
        ) {
            let mut q = BatchQueue::default();
            for (r, &n) in counts.iter().enumerate() {
                q.append(vec![toks(8); n], r);
            }
            let mut order = Vec::new();
            while !q.is_empty() {
                let b = q.next_batch(8 * per_batch);
                prop_assert!(b.len() <= per_batch);
                order.extend(b.into_iter().map(|e| e.index));
            }
            prop_assert!(order.windows(2).all(|w| w[0] <= w[1]), "{:?}", order);
        }
    }
}
