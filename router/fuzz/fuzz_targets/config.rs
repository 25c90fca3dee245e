//! The daemon's configuration as `kaskade serve` loads it: the TOML file, then `KASKADE_*`
//! variables and flags (through the same clap arguments, with their list splitting), then
//! `RUST_LOG`, then validation of the whole and the API keys of `KASKADE_API_KEYS`.
//!
//! The input is the file's text, then, after a NUL byte, one `NAME=VALUE` per line: a
//! `KASKADE_*` name is checked as the environment's names are (typos refused) and, if a key
//! has it, its value is given as that key's flag (clap reads an `env` fallback the same way);
//! `RUST_LOG` and `KASKADE_API_KEYS` are read as the daemon reads them. No process
//! environment is touched and no file is read.
//!
//! Checked: nothing panics, and in a configuration that validates, every key's value as shown
//! (`--help`, the docs, as in a config file) reads back from a file as the same value.
#![no_main]

use kaskade_router::auth::API_KEYS_ENV;
use kaskade_router::config::{Config, KeyArgs, KEYS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, env) = text.split_once('\0').unwrap_or((text, ""));
    let vars: Vec<(&str, &str)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .take(64)
        .collect();
    let _ = load(file, &vars);
});

fn load(file: &str, vars: &[(&str, &str)]) -> Result<(), String> {
    Config::check_env(vars.iter().map(|(k, _)| *k)).map_err(|e| e.to_string())?;
    let mut cfg = Config::from_toml(file)?;
    let mut argv = vec!["kaskade".to_string()];
    for (name, value) in vars {
        if let Some(cli) = KEYS.iter().filter_map(|k| k.cli).find(|c| c.env == *name) {
            argv.push(format!("--{}={value}", cli.flag));
        }
    }
    let cmd = <KeyArgs as clap::Args>::augment_args(clap::Command::new("kaskade"));
    let matches = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
    let args =
        <KeyArgs as clap::FromArgMatches>::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let get = |n: &str| vars.iter().rev().find(|(k, _)| *k == n).map(|(_, v)| *v);
    let rust_log = get("RUST_LOG").filter(|v| !v.is_empty());
    cfg.apply(&args, rust_log).map_err(|e| e.to_string())?;
    let resolved = cfg
        .validate(2)
        .and_then(|r| r.with_api_keys(get(API_KEYS_ENV), false))
        .map_err(|e| e.to_string())?;
    drop(resolved);
    // Every key's value, shown as `--help` and the docs show it (as in a config file), reads
    // back from a file as the same value.
    for k in KEYS {
        let shown = (k.get)(&cfg).show();
        let (section, key) = k.name.split_once('.').expect("section.key");
        let text = format!("[{section}]\n{key} = {shown}\n");
        let back = Config::from_toml(&text)
            .unwrap_or_else(|e| panic!("{} = {shown} does not read back: {e}", k.name));
        assert_eq!(
            (k.get)(&back).show(),
            shown,
            "{} reads back as it was",
            k.name
        );
    }
    Ok(())
}
