//! End-to-end tests of the `gmt` binary. One test binary for the whole crate: each test file
//! would otherwise be linked (and the model code compiled) on its own.

mod common;

mod bad_input;
mod commands;
mod data_parallel;
mod dpo;
mod memory;
#[cfg(feature = "mpi")]
mod mpi;
mod smollm2;
mod sweep;
mod train;
