//! gmt-train driven as a library, without the `gmt` binary.

mod trainer;
