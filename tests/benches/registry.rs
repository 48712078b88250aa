//! Registry benchmarks (being written).
fn main() {}
