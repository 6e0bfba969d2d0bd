//! Configuration: the figment chain (defaults < profile file < `TESSERA_*` env < `--set`)
//! yields the user config ([`schema`]); [`validate`] turns it into a [`RuntimeConfig`] or
//! a list of every problem found, each naming its source, key and what is wrong.

mod addr;
mod error;
mod load;
mod schema;
pub mod sink;
mod validate;

pub use addr::ListenAddr;
pub use error::{ConfigError, Problem};
pub use load::{load, Overrides, Source};
pub use schema::{
    AgentConfig, ControlConfig, DbproxyConfig, GatewayCertificate, GatewayConfig, LogConfig,
    LogFormat, LogSink, PlainHttp, Role, TlsConfig, UserConfig,
};
pub use validate::{check_url, validate, RuntimeConfig};

/// The key-encryption key in `path` (`control.kek_file`): 64 hex characters, blanks
/// around them ignored. The file must not be readable by group or others.
pub fn read_kek(path: &std::path::Path) -> Result<[u8; 32], String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::util::unhex(text.trim())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            format!(
                "{} does not hold a key: expected 64 hex characters (openssl rand -hex 32)",
                path.display()
            )
        })
}

/// Loads and validates in one step: what `run`, `up` and `config check` use.
pub fn resolve(source: &Source, overrides: &Overrides) -> Result<RuntimeConfig, ConfigError> {
    let (user, figment) = load(source, overrides)?;
    validate(user, &figment)
}
