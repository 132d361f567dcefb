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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout();
    match runtime.block_on(almanac_cli::run(cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
