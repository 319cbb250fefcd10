//! gmt-train driven as a library, without the `gmt` binary.

mod dpo;
mod trainer;
