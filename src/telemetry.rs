//! Logging. `RUST_LOG` picks what is shown; by default authql's own events and one line per request.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("authql=info,tower_http=info"));
    // try_init: a second call (tests start many servers in one process) is harmless.
    let _ = tracing_subscriber::registry()
        .with(filter)
        // Colours only for a terminal: a log file or a collector gets plain text.
        .with(fmt::layer().with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())))
        .try_init();
}
