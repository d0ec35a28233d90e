//! Stop sequences over streamed text. Text that might be the start of a stop
//! sequence is held back until it is known not to be, so a client never sees
//! part of a stop sequence.

/// What to send after a piece of generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopStep {
    /// Text that is safe to send now.
    pub emit: String,
    /// A stop sequence was reached; nothing after it is sent.
    pub stopped: bool,
}

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, piece: &str) -> StopStep {
        self.held.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let emit = self.held[..at].to_owned();
            self.held.clear();
            return StopStep {
                emit,
                stopped: true,
            };
        }
        let keep = self.longest_partial_suffix();
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_owned();
        self.held.drain(..cut);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// Whatever is held back, at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of a stop
    /// sequence (on a character boundary).
    fn longest_partial_suffix(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for (start, _) in self.held.char_indices() {
                let suffix = &self.held[start..];
                if suffix.len() <= best {
                    break;
                }
                if stop.starts_with(suffix) {
                    best = suffix.len();
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stops_inside_a_piece() {
        let mut m = StopMatcher::new(vec!["\n\n".into()]);
        assert_eq!(
            m.push("Hello\n\nWorld"),
            StopStep {
                emit: "Hello".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn holds_back_a_possible_start_across_pieces() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc E").emit, "abc ");
        assert_eq!(m.push("N").emit, "");
        let last = m.push("D!");
        assert!(last.stopped);
        assert_eq!(last.emit, "");
    }

    #[test]
    fn releases_a_false_start() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN").emit, "");
        assert_eq!(m.push("x").emit, "ENx");
        assert_eq!(m.flush(), "");
    }

    proptest! {
        /// Without stops firing, the concatenation of emitted text and the flush
        /// is exactly the input.
        #[test]
        fn lossless_when_no_stop(pieces in prop::collection::vec("[a-dé]{0,4}", 0..20)) {
            let mut m = StopMatcher::new(vec!["zz".into(), "éa".into()]);
            let mut out = String::new();
            let mut stopped = false;
            for p in &pieces {
                let s = m.push(p);
                out.push_str(&s.emit);
                if s.stopped { stopped = true; break; }
            }
            let all: String = pieces.concat();
            if !stopped {
                out.push_str(&m.flush());
                prop_assert_eq!(out, all);
            } else {
                prop_assert!(all.starts_with(&out));
                prop_assert!(!out.contains("éa"));
            }
        }
    }
}
