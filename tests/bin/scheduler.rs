//! `almanac-scheduler`'s entry point, linked into this package so `cargo test` builds it and
//! the cluster tests start it as a real process (a binary of another package is not built by
//! `cargo test`).

fn main() -> std::process::ExitCode {
    almanac_scheduler::main()
}
