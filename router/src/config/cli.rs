//! The config keys as clap arguments: one `--flag` per key with clap's
//! `env` fallback, built from [`KEYS`](super::KEYS). Flatten [`KeyArgs`]
//! into a clap command; clap then resolves flag over environment, and
//! [`Config::apply`](super::Config::apply) lays the result over the file.
//! A key without a flag (a secret) is read from its variable alone.

use super::table::Key;
use super::KEYS;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

/// The keys given by flag or environment, in table order.
#[derive(Debug, Clone, Default)]
pub struct KeyArgs {
    /// Each key that was given, with its raw values.
    pub values: Vec<(&'static Key, Vec<String>)>,
}

impl KeyArgs {
    /// The raw values of key `name`, if it was given.
    pub fn get(&self, name: &str) -> Option<&[String]> {
        self.values
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v.as_slice())
    }
}

fn arg(k: &'static Key) -> Option<Arg> {
    let cli = k.cli.filter(|c| !c.flag.is_empty())?;
    let list = (k.get)(&super::Config::default()).is_list();
    let mut range = String::new();
    if let Some(r) = k.rule.describe() {
        range = format!("; {r}");
    }
    let short = format!(
        "{} ({}{range}) [default: {}]",
        k.summary(),
        k.name,
        k.default_shown()
    );
    let long = format!(
        "{}\n\nKey {} in the config file{range}. Default: {}.",
        k.doc_text(),
        k.name,
        k.default_shown()
    );
    let a = Arg::new(k.name)
        .long(cli.flag)
        .env(cli.env)
        .value_name(cli.value_name)
        .help(short)
        .long_help(long);
    Some(if list {
        a.action(ArgAction::Append).value_delimiter(',')
    } else {
        a.action(ArgAction::Set)
    })
}

impl Args for KeyArgs {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(KEYS.iter().filter_map(arg))
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for KeyArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut out = KeyArgs::default();
        out.update_from_arg_matches(m)?;
        Ok(out)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        for k in KEYS.iter().filter(|k| k.cli.is_some()) {
            if let Ok(Some(v)) = m.try_get_many::<String>(k.name) {
                let v: Vec<String> = v.cloned().collect();
                self.values.retain(|(old, _)| old.name != k.name);
                self.values.push((k, v));
            }
        }
        // Keys without a flag (secrets) come from the environment only.
        for k in KEYS.iter() {
            let Some(cli) = k.cli.filter(|c| c.flag.is_empty()) else {
                continue;
            };
            if let Ok(v) = std::env::var(cli.env) {
                self.values.retain(|(old, _)| old.name != k.name);
                self.values.push((k, vec![v]));
            }
        }
        Ok(())
    }
}
