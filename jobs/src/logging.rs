//! What every Almanac binary sets up: structured logs (text or JSON lines on stderr), the
//! async runtime its work runs on, and how a long-running one hears it should stop.

use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset. Ballista and DataFusion log through `log` at info level
/// per query; keep them quiet unless asked. delta-rs warns whenever parallel tasks commit close
/// together, which is expected and resolved by its conflict check.
pub const DEFAULT_FILTER: &str = "warn,almanac=info,deltalake_core::kernel::transaction=error";

/// Installs the global subscriber; `RUST_LOG` overrides `default_filter`.
pub fn init(json: bool, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests running services in-process) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Runs a binary's work on a multi-threaded runtime; an error is printed as `error: ...` (and,
/// for a service, also logged as `"{service} stopped"`) and makes the exit code non-zero.
pub fn run_main<E: std::fmt::Display>(
    service: Option<&str>,
    work: impl std::future::Future<Output = std::result::Result<(), E>>,
) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(service) = service {
                tracing::error!(error = %e, "{service} stopped");
            }
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
