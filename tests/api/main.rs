//! The integration tests: one binary (one link) for the whole black-box suite.

mod backups;
mod common;
mod kernel;
mod memory;
mod remote;
mod security;
mod world;
