//! gmt-models' integration tests, in one test binary (each file would otherwise compile and
//! link the model for its backend on its own).

mod files;
mod gguf;
mod hf_parity;
mod masks;
mod smollm2;

use std::path::PathBuf;

/// A tiny reference model of `shared/fixtures/hf` (see its README).
fn hf_fixture(name: &str) -> PathBuf {
    shared("fixtures/hf").join(name)
}

/// A path inside the repository's `shared` directory.
fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared")
        .join(rel)
}
