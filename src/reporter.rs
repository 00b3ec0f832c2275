//! Progress reporting kept out of library code.
//!
//! Library functions take a `&dyn Reporter` and call it as work advances; the CLI decides whether
//! that becomes a progress bar (on a terminal), log lines, or nothing.

/// Receives progress events from long-running library operations.
pub trait Reporter: Send + Sync {
    /// A task named `what` starts, with `total` units (bytes or items) when known.
    fn start(&self, _what: &str, _total: Option<u64>) {}
    /// `delta` more units of the current task are done.
    fn advance(&self, _delta: u64) {}
    /// The current task is finished.
    fn finish(&self) {}
}

/// A reporter that ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReporter;

impl Reporter for NoReporter {}
