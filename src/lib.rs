//! comfix — a Nix-style content-addressed store and builder for ComfyUI environments.
//!
//! The library holds everything; `src/main.rs` only calls [`cli::main`]. Each stage of the
//! pipeline is a module with its own error type (see `docs/ARCHITECTURE.md`):
//!
//! - [`spec`]: the version spec (`versions/<id>.json`, schema_version 2), parsed and validated.
//! - [`store`]: the content-addressed store — objects, store paths, the SQLite db, locks.
//! - [`lock`]: the lock, `<id>.lock.json`, with every moving part pinned.
//! - [`fetch`]: git mirrors and checkouts, registry packages, model downloads.
//! - [`resolve`]: spec + existing lock → complete lock, fetching what it pins.
//! - [`build`]: derivations (one store path each) and the executor that runs their DAG.
//! - [`plan`]: spec + lock → the DAG of derivations a realization runs.
//! - [`realize`]: a lock's store paths materialized as a `COMFY_HOME`, in generations.
//! - [`repair`]: `store verify --repair`, from the sources live locks name.
//! - [`reporter`]: how library code reports progress without printing.
//! - [`cli`]: the command-line interface, a thin layer that maps errors to exit codes.

pub mod build;
pub mod cli;
pub mod fault;
pub mod fetch;
pub mod hint;
pub mod lock;
pub mod plan;
pub mod python;
pub mod realize;
pub mod repair;
pub mod reporter;
pub mod resolve;
pub mod spec;
pub mod store;
pub mod units;
