//! `almanac-executor`'s entry point, linked into this package so `cargo test` builds it and
//! the cluster tests start it as a real process.

fn main() -> std::process::ExitCode {
    almanac_executor::main()
}
