//! The machinery behind the key table in `keys.rs`: the [`Key`] record and
//! the `config_keys!` macro that turns one declaration per key into the
//! serde sections of [`Config`](super::Config), their defaults and the
//! [`KEYS`](super::KEYS) table that the flags, the environment, validation
//! and the docs tests iterate.

use super::value::{Rule, Setting};
use super::Config;

/// How a key is given outside the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cli {
    /// Environment variable, `KASKADE_<SECTION>_<KEY>`.
    pub env: &'static str,
    /// Long flag without the dashes, `section-key` for new keys; empty for
    /// a secret, which the environment gives and a command line (readable
    /// by every local user in /proc) never does.
    pub flag: &'static str,
    /// Placeholder in `--help`.
    pub value_name: &'static str,
}

/// One config key: everything about it, declared once.
pub struct Key {
    /// `section.key`, as in the TOML file.
    pub name: &'static str,
    /// The TOML section.
    pub section: &'static str,
    /// What the key does (the doc comment of its declaration).
    pub doc: &'static str,
    /// Environment variable and flag; `None` for keys set only in the file.
    pub cli: Option<Cli>,
    /// The check its value must pass.
    pub rule: Rule,
    /// The field, to read.
    pub get: fn(&Config) -> &dyn Setting,
    /// The field, to set.
    pub get_mut: fn(&mut Config) -> &mut dyn Setting,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Key {
    /// The key's default, as written in the file.
    pub fn default_shown(&self) -> String {
        (self.get)(&Config::default()).show()
    }

    /// The first sentence of the doc, for the short `--help`.
    pub fn summary(&self) -> &'static str {
        let first = self.doc.lines().next().unwrap_or("").trim();
        first.strip_suffix('.').unwrap_or(first)
    }

    /// The doc as one paragraph.
    pub fn doc_text(&self) -> String {
        self.doc
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Declares the sections and keys of the configuration. See `keys.rs`.
macro_rules! config_keys {
    ($(
        $(#[doc = $sdoc:literal])*
        [$section:ident] $Section:ident {
            $(
                $(#[doc = $doc:literal])*
                $key:ident : $ty:ty = $default:expr,
                $( env $env:literal, flag $flag:literal, value $vname:literal, )?
                rule $rule:expr;
            )*
        }
    )*) => {
        /// The whole configuration of one router, as read from the TOML file
        /// (every key optional) and then overridden by the environment and
        /// flags. Its sections and keys are declared in `config/keys.rs`.
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct Config {
            $( $(#[doc = $sdoc])* pub $section: $Section, )*
        }

        $(
            $(#[doc = $sdoc])*
            #[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
            #[serde(deny_unknown_fields, default)]
            pub struct $Section {
                $(
                    #[doc = concat!("`", stringify!($section), ".", stringify!($key), "`:")]
                    $(#[doc = $doc])*
                    pub $key: $ty,
                )*
            }

            impl Default for $Section {
                fn default() -> Self {
                    Self { $( $key: $default, )* }
                }
            }
        )*

        /// Every key, in the order of the file.
        pub static KEYS: &[$crate::config::table::Key] = &[
            $($(
                $crate::config::table::Key {
                    name: concat!(stringify!($section), ".", stringify!($key)),
                    section: stringify!($section),
                    doc: concat!($($doc, "\n",)*),
                    cli: config_keys!(@cli $($env, $flag, $vname)?),
                    rule: $rule,
                    get: {
                        fn get(c: &Config) -> &dyn $crate::config::value::Setting {
                            &c.$section.$key
                        }
                        get
                    },
                    get_mut: {
                        fn get_mut(c: &mut Config) -> &mut dyn $crate::config::value::Setting {
                            &mut c.$section.$key
                        }
                        get_mut
                    },
                },
            )*)*
        ];
    };
    (@cli) => { None };
    (@cli $env:literal, $flag:literal, $vname:literal) => {
        Some($crate::config::table::Cli { env: $env, flag: $flag, value_name: $vname })
    };
}
pub(crate) use config_keys;
