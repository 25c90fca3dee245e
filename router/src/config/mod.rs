//! Daemon configuration: embedded defaults, then a TOML file, then
//! environment variables, then command-line flags. Validated as a whole
//! ([`Config::validate`]) before any port is bound; every error names the
//! offending key.
//!
//! # One definition per key
//! Every key is declared once, in `config/keys.rs`: its section, name, type,
//! default, environment variable, flag, `--help` text and the [`Rule`] its
//! value must pass. From that one declaration come the serde sections of
//! [`Config`] (the file), the clap arguments with their `env` fallbacks
//! ([`KeyArgs`]), range checking ([`Config::validate`]), the refusal of
//! unknown `KASKADE_*` variables, and the tests that fail when
//! docs/operations.md or deploy/kaskade.toml forget a key.
//!
//! To add a key: add one entry to its section in `keys.rs` (a new section is
//! a new `[name] NameConfig { .. }` block there), then describe it in
//! docs/operations.md and deploy/kaskade.toml. Code reads the validated
//! value from [`Resolved::config`] (`cfg.config.section.key`); only keys that
//! need parsing into another type (addresses, paths) also get a typed field
//! in [`Resolved`].

mod cli;
mod keys;
mod resolve;
pub(crate) mod table;
pub mod value;

#[cfg(test)]
mod tests;

pub use cli::KeyArgs;
pub use keys::*;
pub use resolve::{CascadeResolved, PeerAddr, Resolved, WebhooksResolved};
pub use table::{Cli, Key};
pub use value::{valid_name, Rule, Setting, Span};

use std::path::Path;

/// Environment variables of kaskade's own tools (tests, benchmarks, the
/// load tester) that the daemon ignores rather than refuses as typos; a
/// name ending in `_` is a prefix.
const TOOL_ENV: &[&str] = &[
    "KASKADE_BENCH_",
    "KASKADE_BUILD_",
    "KASKADE_E2E_",
    "KASKADE_FUZZ_",
    "KASKADE_LOADTEST_",
    "KASKADE_TEST_",
    "KASKADE_BIN",
    "KASKADE_CHROMIUM",
];

/// `KASKADE_*` variables the daemon reads that are not plain keys.
pub const EXTRA_ENV: &[&str] = &[crate::auth::API_KEYS_ENV];

/// A configuration error, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The path given.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The file is not valid TOML or has unknown keys / wrong types.
    #[error("invalid config file {path}: {reason}")]
    Parse {
        /// The path given.
        path: String,
        /// toml's message, which names the key and line.
        reason: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid value for {key}: {reason}")]
    Value {
        /// The key, e.g. `media.bind` (or the variable, e.g. `RUST_LOG`).
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A `KASKADE_*` environment variable that no key has (a typo?).
    #[error("unknown environment variable {name}{}", .suggestion.map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    UnknownEnv {
        /// The variable.
        name: String,
        /// The known variable closest to it.
        suggestion: Option<&'static str>,
    },
}

/// The key called `name` (`section.key`).
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

impl Config {
    /// Reads a TOML file on top of the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text).map_err(|reason| ConfigError::Parse {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses TOML text on top of the defaults.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
    }

    /// Sets key `name` from environment/flag text (lists: every item).
    ///
    /// # Panics
    /// If no key is called `name` (a bug in the caller: names are static).
    pub fn set(&mut self, name: &str, raw: &[&str]) -> Result<(), ConfigError> {
        let k = key(name).unwrap_or_else(|| panic!("no config key {name}"));
        let raw: Vec<String> = raw.iter().map(|s| s.to_string()).collect();
        Self::set_key(self, k, &raw, k.name)
    }

    fn set_key(&mut self, k: &Key, raw: &[String], named: &'static str) -> Result<(), ConfigError> {
        (k.get_mut)(self)
            .set(raw, &k.rule)
            .map_err(|reason| ConfigError::Value { key: named, reason })
    }

    /// Applies what clap found in the environment and on the command line
    /// (flags over environment), on top of this (the defaults or the file).
    /// `rust_log` is `RUST_LOG`: it sets `log.level` unless
    /// `KASKADE_LOG_LEVEL` or `--log-level` does.
    pub fn apply(&mut self, args: &KeyArgs, rust_log: Option<&str>) -> Result<(), ConfigError> {
        if let Some(filter) = rust_log.filter(|_| args.get("log.level").is_none()) {
            if let Some(k) = key("log.level") {
                self.set_key(k, &[filter.to_string()], "RUST_LOG")?;
            }
        }
        for (k, raw) in &args.values {
            self.set_key(k, raw, k.name)?;
        }
        Ok(())
    }

    /// Refuses `KASKADE_*` variables that no key reads (typos), naming the
    /// closest known one. Variables of kaskade's tools are left alone.
    pub fn check_env<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<(), ConfigError> {
        let known = || {
            KEYS.iter()
                .filter_map(|k| k.cli.map(|c| c.env))
                .chain(EXTRA_ENV.iter().copied())
        };
        for name in names {
            if !name.starts_with("KASKADE_")
                || known().any(|k| k == name)
                || TOOL_ENV
                    .iter()
                    .any(|p| name == *p || (p.ends_with('_') && name.starts_with(p)))
            {
                continue;
            }
            let suggestion = known()
                .map(|k| (strsim::levenshtein(k, name), k))
                .filter(|(d, _)| *d <= 4)
                .min()
                .map(|(_, k)| k);
            return Err(ConfigError::UnknownEnv {
                name: name.to_string(),
                suggestion,
            });
        }
        Ok(())
    }
}
