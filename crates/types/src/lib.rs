//! modelship's shared vocabulary: what a model is for ([`Task`]) and the limits a
//! replica enforces ([`ServingLimits`]). Pure data with validation; no I/O, no
//! async runtime, nothing heavier than serde.

mod limits;
mod task;

pub use limits::{LimitError, ServingLimits};
pub use task::{ParseTaskError, Task};
