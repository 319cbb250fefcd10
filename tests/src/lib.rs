//! Cross-crate and cross-backend tests for gmt. The tests live in `tests/`; this library is
//! empty so the crate can hold them.
