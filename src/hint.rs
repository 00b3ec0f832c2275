//! Errors that can tell the user what to do next.
//!
//! Every module's error type implements [`Hint`]; the CLI prints the hint on its own `hint:` line
//! and uses [`Hint::is_user_error`] to choose the exit code (1 for user errors, 2 otherwise).

/// Extra guidance attached to an error.
pub trait Hint {
    /// What the user should do next, if there is something useful to say.
    fn hint(&self) -> Option<String> {
        None
    }

    /// Whether the error was caused by the user's input (bad spec, missing input, hash mismatch)
    /// rather than by an internal or I/O failure.
    fn is_user_error(&self) -> bool;
}

/// `a`, `b`, `c`: names as messages quote them.
pub fn code_list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
