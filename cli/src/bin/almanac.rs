//! The `almanac` binary: parses flags, sets up logging and runs the command.

use std::process::ExitCode;

use almanac_cli::{Cli, LogFormat};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    almanac_jobs::logging::init(
        cli.log_format == LogFormat::Json,
        almanac_jobs::logging::DEFAULT_FILTER,
    );
    let mut stdout = std::io::stdout();
    almanac_jobs::logging::run_main(None, almanac_cli::run(cli, &mut stdout))
}
