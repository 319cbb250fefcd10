//! gmt-train driven as a library, without the `gmt` binary.

mod data_parallel;
mod dpo;
mod mixed_precision;
mod trainer;
