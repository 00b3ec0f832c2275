//! What can go wrong running derivations. Offline misses from every layer are lifted into one
//! [`BuildError::Offline`] list; many failures are reported together.

use crate::fetch::FetchError;
use crate::hint::Hint;
use crate::python::PythonError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Fetch(FetchError),
    #[error(transparent)]
    Python(PythonError),
    #[error(transparent)]
    Store(StoreError),
    /// Assembling a home.
    #[error(transparent)]
    Realize(Box<crate::realize::RealizeError>),
    #[error("Offline, and the store lacks:\n{}", .missing.iter().map(|m| format!("  {m}")).collect::<Vec<_>>().join("\n"))]
    Offline { missing: Vec<String> },
    #[error("{what} is not pinned in the lock")]
    NotPinned { what: String },
    #[error("{what}: the lock pins `{wanted}`, but its source now gives `{got}`")]
    Changed {
        what: String,
        wanted: String,
        got: String,
    },
    #[error("{what}: bad URL `{url}` in the lock: {reason}")]
    BadLockUrl {
        what: String,
        url: String,
        reason: String,
    },
    #[error("{what}: the substituter `{from}` failed: {source}")]
    Substituter {
        what: String,
        from: String,
        /// What went wrong there, kept whole.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{} items failed:\n{}", .errors.len(), .errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Many { errors: Vec<BuildError> },
}

impl From<FetchError> for BuildError {
    fn from(err: FetchError) -> BuildError {
        match err {
            FetchError::Offline { missing } => BuildError::Offline { missing },
            FetchError::Store(e) => BuildError::Store(e),
            other => BuildError::Fetch(other),
        }
    }
}

impl From<PythonError> for BuildError {
    fn from(err: PythonError) -> BuildError {
        match err {
            PythonError::Fetch(e) => e.into(),
            PythonError::Store(e) => BuildError::Store(e),
            other => BuildError::Python(other),
        }
    }
}

impl From<crate::realize::RealizeError> for BuildError {
    fn from(err: crate::realize::RealizeError) -> BuildError {
        BuildError::Realize(Box::new(err))
    }
}

impl From<StoreError> for BuildError {
    fn from(err: StoreError) -> BuildError {
        BuildError::Store(err)
    }
}

/// One error for many: every offline miss in one list (first), other failures alongside.
pub fn combine(errors: Vec<BuildError>) -> BuildError {
    let mut missing = Vec::new();
    let mut others = Vec::new();
    for err in errors {
        match err {
            BuildError::Offline { missing: m } => missing.extend(m),
            BuildError::Many { errors } => others.extend(errors),
            other => others.push(other),
        }
    }
    if !missing.is_empty() {
        others.insert(0, BuildError::Offline { missing });
    }
    if others.len() == 1 {
        others.pop().expect("one error")
    } else {
        BuildError::Many { errors: others }
    }
}

impl Hint for BuildError {
    fn hint(&self) -> Option<String> {
        match self {
            BuildError::Fetch(e) => e.hint(),
            BuildError::Python(e) => e.hint(),
            BuildError::Store(e) => e.hint(),
            BuildError::Realize(e) => e.hint(),
            BuildError::Offline { .. } => Some(
                "run once with network access (without `--offline`) to fill the store".into(),
            ),
            BuildError::NotPinned { .. } => Some("run `comfix resolve` first".into()),
            BuildError::Substituter { .. } => None,
            BuildError::Changed { .. } => Some(
                "the source no longer gives what was locked; if the new content is intended, run `comfix resolve --update <NAME>`".into(),
            ),
            BuildError::BadLockUrl { .. } => {
                Some("the lock was edited by hand; run `comfix resolve --update <NAME>`".into())
            }
            BuildError::Many { errors } => {
                let mut hints: Vec<String> = errors.iter().filter_map(|e| e.hint()).collect();
                hints.dedup();
                (!hints.is_empty()).then(|| hints.join("\nhint: "))
            }
        }
    }

    fn is_user_error(&self) -> bool {
        match self {
            BuildError::Fetch(e) => e.is_user_error(),
            BuildError::Python(e) => e.is_user_error(),
            BuildError::Store(e) => e.is_user_error(),
            BuildError::Realize(e) => e.is_user_error(),
            BuildError::Many { errors } => errors.iter().all(|e| e.is_user_error()),
            BuildError::Substituter { .. } => false,
            BuildError::Offline { .. }
            | BuildError::NotPinned { .. }
            | BuildError::Changed { .. }
            | BuildError::BadLockUrl { .. } => true,
        }
    }
}
