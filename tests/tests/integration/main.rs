//! Cross-crate and cross-backend tests, in one test binary (each file would otherwise compile
//! and link the model for every backend on its own).

mod core_as_a_library;
mod cross_backend;
mod data_to_model;
mod dpo_parity;
mod reproducible;
