//! The `almanac-executor` binary.

fn main() -> std::process::ExitCode {
    almanac_executor::main()
}
