//! # gmt-tests: cross-crate tests, and what every crate's tests share
//!
//! The tests live in `tests/`. This library is the support the workspace's test files would
//! otherwise copy from one another: where `../shared` is, temporary directories removed even
//! when a test panics, and the SmolLM2 file that a test needs or skips (failing under CI).
//! It depends on no gmt crate, so any crate can take it as a dev-dependency without a cycle.

#![warn(missing_docs)]

use std::path::{Path, PathBuf};

/// A path inside `shared/` beside the repository (fixtures and data; read-only).
pub fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared")
        .join(rel)
}

/// A tiny reference model of `shared/fixtures/hf` (see its README): `llama-tiny`,
/// `llama3-tiny`, `mistral-tiny`.
pub fn hf_fixture(name: &str) -> PathBuf {
    shared("fixtures/hf").join(name)
}

/// Whether the tests run under CI (`CI` set, as `.ci/run` does): there, what a test needs
/// from outside the repository must be present, and its absence fails instead of skipping.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// A fresh, empty temporary directory, removed when dropped (a panicking test included).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `<tmp>/gmt-<name>-<pid>`, emptied if it exists.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gmt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// sha256 of `SmolLM2-135M-Instruct.Q4_1.gguf`, as `scripts/fetch-smollm2.sh` checks it.
pub const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Where `scripts/fetch-smollm2.sh` puts SmolLM2-135M-Instruct: `$GMT_SMOLLM2_GGUF` if set,
/// else `$GMT_CACHE_DIR/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (cache default
/// `~/.cache/gmt`). The file may not exist.
pub fn smollm2_gguf_path() -> PathBuf {
    if let Some(path) = std::env::var_os("GMT_SMOLLM2_GGUF") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("GMT_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/gmt")
        });
    cache.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The SmolLM2 GGUF file, or `None` after printing `SKIPPED` when it is absent. Under CI its
/// absence is a failure: CI fetches it first and must never skip these tests silently.
pub fn smollm2_or_skip(test: &str) -> Option<PathBuf> {
    let path = smollm2_gguf_path();
    if path.is_file() {
        return Some(path);
    }
    assert!(
        !under_ci(),
        "{test}: {} is missing: CI must run scripts/fetch-smollm2.sh first",
        path.display()
    );
    eprintln!(
        "SKIPPED {test}: {} not found; run scripts/fetch-smollm2.sh",
        path.display()
    );
    None
}
