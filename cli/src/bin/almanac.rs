//! The `almanac` binary.

fn main() -> std::process::ExitCode {
    almanac_cli::main()
}
