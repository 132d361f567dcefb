//! The `almanac-scheduler` binary.

fn main() -> std::process::ExitCode {
    almanac_scheduler::main()
}
