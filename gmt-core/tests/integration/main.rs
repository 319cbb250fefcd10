//! gmt-core's integration tests, in one test binary (each file would otherwise compile and
//! link burn's autodiff stack on its own).

mod bf16_gamma;
mod conformance;
mod fused_adamw;
mod optimizer;
