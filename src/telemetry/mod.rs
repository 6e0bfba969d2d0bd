//! Logs (`tracing`), metrics (Prometheus text format) and build information.

mod metrics;

pub use metrics::{Health, Metrics};

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

// Statics, not consts: a const's text is copied into every module that uses it, so each
// commit would change the compiled code of all of them (and the names ThinLTO gives their
// local functions, which scripts/link-order.txt lists); a static lives in this module only.

/// `tessera --version`: version, git commit, build date.
pub static VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TESSERA_GIT_COMMIT"),
    ", built ",
    env!("TESSERA_BUILD_DATE"),
    ")"
);
pub static GIT_COMMIT: &str = env!("TESSERA_GIT_COMMIT");
pub static BUILD_DATE: &str = env!("TESSERA_BUILD_DATE");

/// Installs the global subscriber: logs go to stderr, `RUST_LOG` overrides `level`.
/// Calling it twice is harmless (the second call is ignored).
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
