//! The fuzz targets as a library for the libFuzzer binaries.

#[path = "../harness.rs"]
mod harness;

pub use harness::*;
