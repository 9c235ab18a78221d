//! Response cache policy benchmark (being written).
fn main() {}
