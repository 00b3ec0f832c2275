//! Fault injection and synchronization points for tests.
//!
//! - `COMFIX_FAULT_PAUSE=<point>`: on reaching `<point>`, create `$COMFIX_FAULT_DIR/<point>` and
//!   sleep forever, so a test can `kill -9` the process at exactly that point.
//! - `COMFIX_FAULT_WAIT=<point>`: on reaching `<point>`, create `$COMFIX_FAULT_DIR/<point>` and wait
//!   until `$COMFIX_FAULT_DIR/<point>.go` exists, so a test can interleave another process there.
//!
//! - `COMFIX_FAULT_AFTER=<n>`: with either, act at the `n`-th time the point is reached (the
//!   first by default), so a test can stop a process at every step of a loop in turn.
//!
//! Without these variables (every real use), [`pause_point`] does nothing.

use std::path::Path;
use std::time::Duration;

/// Pause or wait here if the environment asks for it (see the module docs).
pub fn pause_point(point: &str) {
    let pause = std::env::var("COMFIX_FAULT_PAUSE").is_ok_and(|p| p == point);
    let wait = std::env::var("COMFIX_FAULT_WAIT").is_ok_and(|p| p == point);
    if !pause && !wait {
        return;
    }
    static REACHED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nth = std::env::var("COMFIX_FAULT_AFTER")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1);
    if REACHED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 != nth {
        return;
    }
    let dir = std::env::var_os("COMFIX_FAULT_DIR").unwrap_or_else(|| ".".into());
    let dir = Path::new(&dir);
    let _ = std::fs::write(dir.join(point), std::process::id().to_string());
    let go = dir.join(format!("{point}.go"));
    loop {
        if wait && go.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(if pause { 1000 } else { 10 }));
    }
}
