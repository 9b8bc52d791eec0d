//! Redis store benchmark (placeholder; the real harness follows).
fn main() {}
