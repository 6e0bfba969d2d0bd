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

/// Loads and validates in one step: what `run`, `up` and `config check` use.
pub fn resolve(source: &Source, overrides: &Overrides) -> Result<RuntimeConfig, ConfigError> {
    let (user, figment) = load(source, overrides)?;
    validate(user, &figment)
}
