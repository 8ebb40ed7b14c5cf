//! Logging. `RUST_LOG` picks what is shown; by default authql's own events and one line per
//! request. `LOG_FORMAT` picks text (the default) or JSON, one object per line with the same
//! events and fields.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Where log lines go: the server logs to stdout; the admin CLI to stderr, as its answers use
/// stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stdout,
    Stderr,
}

pub fn init(format: LogFormat, target: LogTarget) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("authql=info,tower_http=info"));
    let to_stderr = target == LogTarget::Stderr;
    // Colours only for a terminal: a log file or a collector gets plain text.
    let terminal = if to_stderr {
        std::io::IsTerminal::is_terminal(&std::io::stderr())
    } else {
        std::io::IsTerminal::is_terminal(&std::io::stdout())
    };
    let layer = fmt::layer().with_ansi(terminal && format == LogFormat::Text);
    let layer = match (format, to_stderr) {
        (LogFormat::Text, false) => layer.boxed(),
        (LogFormat::Text, true) => layer.with_writer(std::io::stderr).boxed(),
        (LogFormat::Json, false) => layer.json().boxed(),
        (LogFormat::Json, true) => layer.json().with_writer(std::io::stderr).boxed(),
    };
    // try_init: a second call (tests start many servers in one process) is harmless.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}
