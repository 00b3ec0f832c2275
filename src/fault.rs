//! Fault injection for crash tests.
//!
//! When `COMFIX_FAULT_PAUSE` names a point that a process reaches, the process creates the file
//! `$COMFIX_FAULT_DIR/<point>` and then sleeps forever, so a test can `kill -9` it at exactly that
//! point. Without the variable (every real use), [`pause_point`] does nothing.

/// Pause here if the environment asks for it (see the module docs).
pub fn pause_point(point: &str) {
    let Ok(wanted) = std::env::var("COMFIX_FAULT_PAUSE") else {
        return;
    };
    if wanted != point {
        return;
    }
    let dir = std::env::var_os("COMFIX_FAULT_DIR").unwrap_or_else(|| ".".into());
    let _ = std::fs::write(
        std::path::Path::new(&dir).join(point),
        std::process::id().to_string(),
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
