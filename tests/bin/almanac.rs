//! The `almanac` CLI's entry point, linked into this package so `cargo test` builds it and
//! tests run long-lived commands (`almanac serve`) as real processes.

fn main() -> std::process::ExitCode {
    almanac_cli::main()
}
