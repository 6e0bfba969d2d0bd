//! The figment chain: built-in defaults < profile file < `TESSERA_SECTION__KEY` < `--set`.

use super::error::{did_you_mean, ConfigError, Problem};
use super::schema::UserConfig;
use figment::error::Kind;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use std::path::PathBuf;

/// Top-level keys that may come from a plain `TESSERA_KEY` variable. Anything else needs a
/// section (`TESSERA_CONTROL__LISTEN`), so client variables such as `TESSERA_TOKEN` and
/// `TESSERA_SERVER` never leak into a role's configuration.
const TOP_LEVEL_ENV: [&str; 5] = [
    "node_name",
    "roles",
    "data_dir",
    "zone",
    "shutdown_grace_secs",
];

/// Where the base configuration comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A TOML profile on disk (`run`, `config check`).
    Profile(PathBuf),
    /// Embedded values (`tessera up`): a dotted key -> TOML value list applied over defaults.
    Embedded(Vec<(String, String)>),
}

/// `--set KEY=VALUE` pairs, applied last.
#[derive(Clone, Debug, Default)]
pub struct Overrides(pub Vec<String>);

/// Loads and extracts the user config, reporting every problem with its source and key.
/// Returns the figment too, so validation can say which source set a value.
pub fn load(source: &Source, overrides: &Overrides) -> Result<(UserConfig, Figment), ConfigError> {
    let mut figment = Figment::new();
    let mut problems = Vec::new();
    match source {
        Source::Profile(path) => {
            if let Err(e) = std::fs::metadata(path).and_then(|m| {
                if m.is_file() {
                    Ok(())
                } else {
                    Err(std::io::Error::other("not a regular file"))
                }
            }) {
                return Err(ConfigError {
                    problems: vec![Problem {
                        source: path.display().to_string(),
                        key: String::new(),
                        message: format!("cannot read profile: {e}"),
                    }],
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Source::Embedded(pairs) => {
            for (k, v) in pairs {
                figment = figment.merge(KeyValue::parse("built-in default", k, v).map_err(one)?);
            }
        }
    }
    figment = figment.merge(
        Env::prefixed("TESSERA_")
            .filter(|k| k.as_str().contains("__") || TOP_LEVEL_ENV.iter().any(|t| k == *t))
            .split("__"),
    );
    for raw in &overrides.0 {
        match KeyValue::from_set(raw) {
            Ok(kv) => figment = figment.merge(kv),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    match figment.extract::<UserConfig>() {
        Ok(cfg) => Ok((cfg, figment)),
        Err(e) => Err(ConfigError {
            problems: e.into_iter().map(|e| describe(&figment, e)).collect(),
        }),
    }
}

fn one(p: Problem) -> ConfigError {
    ConfigError { problems: vec![p] }
}

/// Names the provider that set `key` (dotted) in `figment`.
pub(super) fn source_of(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(md) => describe_source(md, key),
        None => "built-in default".to_string(),
    }
}

fn describe_source(md: &Metadata, key: &str) -> String {
    match &md.source {
        Some(figment::Source::File(p)) => p.display().to_string(),
        _ if md.name.contains("environment") => {
            let var: Vec<String> = key.split('.').map(|s| s.to_uppercase()).collect();
            format!("environment TESSERA_{}", var.join("__"))
        }
        _ => md.name.to_string(),
    }
}

/// Turns one figment error into a [`Problem`] naming source, key and what is wrong.
fn describe(figment: &Figment, e: figment::Error) -> Problem {
    // Array items as `[i]`: `agent.log_sinks[2].url`.
    let mut key = String::new();
    for part in &e.path {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    let message = match &e.kind {
        Kind::UnknownField(field, expected) => {
            // Inside arrays figment's path already ends with the field.
            if e.path.last() != Some(field) {
                key = if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
            }
            let hint = did_you_mean(field, expected.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            format!(
                "unknown key{hint}; known keys here: {}",
                expected.join(", ")
            )
        }
        Kind::UnknownVariant(v, expected) => {
            let hint = did_you_mean(v, expected.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            let what = if key == "roles" || key.starts_with("roles.") || key.starts_with("roles[") {
                "role"
            } else {
                "value"
            };
            if what == "role" {
                key = "roles".into();
            }
            format!(
                "unknown {what} `{v}`{hint}; expected one of {}",
                expected.join(", ")
            )
        }
        Kind::InvalidType(actual, expected) => {
            format!("wrong type: found {actual}, expected {expected}")
        }
        other => other.to_string(),
    };
    let source = match &e.metadata {
        Some(md) => describe_source(md, &key),
        None if !key.is_empty() => source_of(figment, key.split('[').next().unwrap_or(&key)),
        None => "configuration".into(),
    };
    Problem {
        source,
        key,
        message,
    }
}

/// One dotted `key = value` as a provider, named for error messages (`--set k=v`).
struct KeyValue {
    name: String,
    key: String,
    value: Value,
}

impl KeyValue {
    fn from_set(raw: &str) -> Result<Self, Problem> {
        let Some((k, v)) = raw.split_once('=') else {
            return Err(Problem {
                source: format!("--set {raw}"),
                key: String::new(),
                message: "expected KEY=VALUE, like control.listen=127.0.0.1:7400".into(),
            });
        };
        Self::parse(&format!("--set {raw}"), k.trim(), v.trim())
    }

    fn parse(name: &str, key: &str, raw: &str) -> Result<Self, Problem> {
        let bad = |message: String| Problem {
            source: name.to_string(),
            key: key.to_string(),
            message,
        };
        if key.is_empty() || key.split('.').any(|s| s.is_empty()) {
            return Err(bad(
                "the key must be a dotted path like control.listen".into()
            ));
        }
        let value: Value = raw
            .parse()
            .map_err(|e| bad(format!("cannot parse value `{raw}`: {e:?}")))?;
        Ok(KeyValue {
            name: name.to_string(),
            key: key.to_string(),
            value,
        })
    }
}

impl Provider for KeyValue {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut parts: Vec<&str> = self.key.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        let mut dict = Dict::new();
        dict.insert(last.to_string(), self.value.clone());
        while let Some(p) = parts.pop() {
            let mut outer = Dict::new();
            outer.insert(p.to_string(), Value::from(dict));
            dict = outer;
        }
        Ok(Profile::Default.collect(dict))
    }
}
