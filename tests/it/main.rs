//! Integration tests: one binary (see `Cargo.toml`), each module a concern. Every test runs the
//! real `comfix` binary against its own store in a temporary directory.

mod support;

mod adopt;
mod cache_contract;
mod channels;
mod cli;
mod closure;
mod gc;
mod gc_stress;
mod image;
mod inputs;
mod models_index;
mod python;
mod realize;
mod resolve;
mod run;
mod s3;
mod serve;
mod shared;
mod spec;
mod store_add;
mod store_crash;
mod store_db;
mod store_reads;
mod store_verify;
mod torch;
