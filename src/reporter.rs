//! Progress reporting kept out of library code.
//!
//! Library functions take a `&dyn Reporter` and call it as work advances; the CLI decides whether
//! that becomes progress bars (on a terminal), log lines, or nothing.

/// Receives progress events from long-running library operations.
pub trait Reporter: Send + Sync {
    /// A task named `what` starts, with `total` units (bytes or items) when known.
    fn start(&self, _what: &str, _total: Option<u64>) {}
    /// `delta` more units of the current task are done.
    fn advance(&self, _delta: u64) {}
    /// The current task is finished.
    fn finish(&self) {}

    /// One of several concurrent items (a download) starts; `id` is unique while it runs.
    fn item_start(&self, _id: u64, _label: &str, _total: Option<u64>) {}
    /// Item `id` turns out to be `total` bytes (when it was not known at `item_start`).
    fn item_length(&self, _id: u64, _total: u64) {}
    /// `delta` more bytes of item `id` are done.
    fn item_advance(&self, _id: u64, _delta: u64) {}
    /// Item `id` is finished (successfully or not).
    fn item_finish(&self, _id: u64) {}
}

/// A reporter that ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReporter;

impl Reporter for NoReporter {}
