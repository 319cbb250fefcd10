//! gmt-models' integration tests, in one test binary (each file would otherwise compile and
//! link the model for its backend on its own).

mod files;
mod gguf;
mod hf_parity;
mod masks;
mod smollm2;

use gmt_tests::{hf_fixture, shared};
