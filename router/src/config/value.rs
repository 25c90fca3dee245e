//! What a config value can be: how it is parsed from an environment
//! variable or a flag, how it is checked against its key's [`Rule`], and how
//! it is shown in `--help` and the docs. The TOML file goes through serde.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The check a key's value must pass, declared next to the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Anything the type can hold (text, lists, booleans).
    Any,
    /// A number within `min..=max` (both inclusive).
    Range(u64, u64),
    /// A duration within `min..=max`.
    Between(Duration, Duration),
    /// A socket address such as `127.0.0.1:50051`.
    SocketAddr,
    /// A socket address, or empty for "off".
    SocketAddrOrOff,
    /// An IP address.
    Ip,
    /// An IP address, or empty.
    IpOrEmpty,
    /// A `tracing` filter such as `info,kaskade_router=debug`.
    LogFilter,
    /// A node id or region: 1-63 lowercase letters, digits or '-'.
    Name,
    /// A name, or empty.
    NameOrEmpty,
}

impl Rule {
    /// The rule in words, for `--help` and error messages.
    pub fn describe(&self) -> Option<String> {
        Some(match self {
            Rule::Any => return None,
            Rule::Range(min, max) => format!("{min} to {max}"),
            Rule::Between(min, max) => format!(
                "{} to {}",
                humantime::format_duration(*min),
                humantime::format_duration(*max)
            ),
            Rule::SocketAddr => "an address such as 127.0.0.1:50051".into(),
            Rule::SocketAddrOrOff => "an address such as 127.0.0.1:9464, or empty for off".into(),
            Rule::Ip => "an IP address".into(),
            Rule::IpOrEmpty => "an IP address, or empty".into(),
            Rule::LogFilter => "a log filter such as info or kaskade_router=debug".into(),
            Rule::Name => "1-63 lowercase letters, digits or '-'".into(),
            Rule::NameOrEmpty => "1-63 lowercase letters, digits or '-', or empty".into(),
        })
    }
}

/// Whether a node id or region name is well formed: lowercase letters,
/// digits and '-', 1 to 63 characters.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A value a config key holds. Object safe: the key table reaches every
/// field through `&mut dyn Setting`.
pub trait Setting: fmt::Debug {
    /// Sets the value from an environment variable or flag. Scalars take the
    /// last of `raw`; lists take every item, each split at commas.
    fn set(&mut self, raw: &[String], rule: &Rule) -> Result<(), String>;
    /// Checks the value against `rule`.
    fn check(&self, rule: &Rule) -> Result<(), String>;
    /// The value as written in a config file or on the command line.
    fn show(&self) -> String;
    /// Whether this is a number (numbers must declare a [`Rule::Range`]).
    fn is_number(&self) -> bool {
        false
    }
    /// Whether the flag takes several values (`--peer a --peer b`).
    fn is_list(&self) -> bool {
        false
    }
}

fn last(raw: &[String]) -> &str {
    raw.last().map_or("", |s| s.as_str())
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            fn set(&mut self, raw: &[String], rule: &Rule) -> Result<(), String> {
                let s = last(raw).trim();
                let v: i128 = s.parse().map_err(|_| format!("{s:?} is not a whole number"))?;
                if let Rule::Range(min, max) = rule {
                    if v < i128::from(*min) || v > i128::from(*max) {
                        return Err(format!("{v} is outside {min} to {max}"));
                    }
                }
                *self = <$t>::try_from(v)
                    .map_err(|_| format!("{v} does not fit in {}", stringify!($t)))?;
                Ok(())
            }
            fn check(&self, rule: &Rule) -> Result<(), String> {
                match rule {
                    Rule::Range(min, max) if (*self as u64) < *min || (*self as u64) > *max => {
                        Err(format!("{self} is outside {min} to {max}"))
                    }
                    _ => Ok(()),
                }
            }
            fn show(&self) -> String {
                self.to_string()
            }
            fn is_number(&self) -> bool {
                true
            }
        }
    )*};
}
numbers!(u16, u32, u64, usize);

impl Setting for String {
    fn set(&mut self, raw: &[String], rule: &Rule) -> Result<(), String> {
        let v = last(raw).trim().to_string();
        let old = std::mem::replace(self, v);
        self.check(rule).inspect_err(|_| *self = old)
    }
    fn check(&self, rule: &Rule) -> Result<(), String> {
        let s = self.as_str();
        let ok = match rule {
            Rule::SocketAddr => s.parse::<SocketAddr>().is_ok(),
            Rule::SocketAddrOrOff => s.is_empty() || s.parse::<SocketAddr>().is_ok(),
            Rule::Ip => s.parse::<IpAddr>().is_ok(),
            Rule::IpOrEmpty => s.is_empty() || s.parse::<IpAddr>().is_ok(),
            Rule::LogFilter => tracing_subscriber::EnvFilter::try_new(s).is_ok(),
            Rule::Name => valid_name(s),
            Rule::NameOrEmpty => s.is_empty() || valid_name(s),
            Rule::Any | Rule::Range(..) | Rule::Between(..) => true,
        };
        if ok {
            Ok(())
        } else {
            let want = rule.describe().unwrap_or_default();
            Err(format!("{s:?} is not {want}"))
        }
    }
    fn show(&self) -> String {
        toml_string(self)
    }
}

/// `s` as a TOML string (Rust's `{:?}` escapes, `\0` or `\u{6}`, are not TOML).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl Setting for bool {
    fn set(&mut self, raw: &[String], _rule: &Rule) -> Result<(), String> {
        *self = match last(raw).trim() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            v => return Err(format!("{v:?} is not a boolean (true or false)")),
        };
        Ok(())
    }
    fn check(&self, _rule: &Rule) -> Result<(), String> {
        Ok(())
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Setting for Vec<String> {
    fn set(&mut self, raw: &[String], _rule: &Rule) -> Result<(), String> {
        *self = raw
            .iter()
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        Ok(())
    }
    fn check(&self, _rule: &Rule) -> Result<(), String> {
        Ok(())
    }
    fn show(&self) -> String {
        let items: Vec<String> = self.iter().map(|v| toml_string(v)).collect();
        format!("[{}]", items.join(", "))
    }
    fn is_list(&self) -> bool {
        true
    }
}

impl Setting for Vec<crate::auth::ApiKeyEntry> {
    fn set(&mut self, _raw: &[String], _rule: &Rule) -> Result<(), String> {
        Err("is set in the file, or as id:secret pairs in KASKADE_API_KEYS".into())
    }
    fn check(&self, _rule: &Rule) -> Result<(), String> {
        Ok(())
    }
    fn show(&self) -> String {
        "[]".into()
    }
}

/// A duration written the human way (`30s`, `5m`, `1h 30m`), in the file, in
/// the environment and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Span(pub Duration);

impl Span {
    /// `secs` seconds.
    pub const fn secs(secs: u64) -> Self {
        Span(Duration::from_secs(secs))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl std::str::FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Span)
            .map_err(|e| format!("{s:?} is not a duration such as 30s or 5m ({e})"))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Setting for Span {
    fn set(&mut self, raw: &[String], rule: &Rule) -> Result<(), String> {
        let v: Span = last(raw).parse()?;
        v.check(rule)?;
        *self = v;
        Ok(())
    }
    fn check(&self, rule: &Rule) -> Result<(), String> {
        match rule {
            Rule::Between(min, max) if self.0 < *min || self.0 > *max => Err(format!(
                "{self} is outside {}",
                rule.describe().unwrap_or_default()
            )),
            _ => Ok(()),
        }
    }
    fn show(&self) -> String {
        format!("\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: &str) -> Vec<String> {
        vec![v.to_string()]
    }

    #[test]
    fn numbers_are_checked_against_their_range_before_they_are_stored() {
        let mut n: u32 = 7;
        let e = n.set(&raw("4294967296"), &Rule::Range(1, 100)).unwrap_err();
        assert!(e.contains("outside 1 to 100"), "{e}");
        assert_eq!(n, 7, "unchanged");
        let e = n.set(&raw("4294967296"), &Rule::Any).unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        assert!(n.set(&raw("-1"), &Rule::Any).is_err());
        assert!(n.set(&raw("lots"), &Rule::Any).is_err());
        n.set(&raw(" 42 "), &Rule::Range(1, 100)).unwrap();
        assert_eq!(n, 42);
        assert!(n.check(&Rule::Range(50, 60)).is_err());
    }

    #[test]
    fn lists_split_at_commas_and_drop_empty_items() {
        let mut v: Vec<String> = vec!["old".into()];
        v.set(&["a, b".into(), "".into(), "c".into()], &Rule::Any)
            .unwrap();
        assert_eq!(v, ["a", "b", "c"]);
    }

    #[test]
    fn spans_read_human_durations() {
        let mut s = Span::secs(1);
        s.set(&raw("1m 30s"), &Rule::Any).unwrap();
        assert_eq!(s.0, Duration::from_secs(90));
        let rule = Rule::Between(Duration::ZERO, Duration::from_secs(60));
        assert!(s.set(&raw("2m"), &rule).is_err());
        assert!(s.set(&raw("soon"), &Rule::Any).is_err());
        assert_eq!(Span::secs(300).to_string(), "5m");
    }

    #[test]
    fn text_rules() {
        let mut s = String::new();
        assert!(s.set(&raw("localhost"), &Rule::SocketAddr).is_err());
        assert!(s.is_empty(), "a refused value is not kept");
        s.set(&raw("127.0.0.1:1"), &Rule::SocketAddr).unwrap();
        assert!(String::new().check(&Rule::SocketAddrOrOff).is_ok());
        assert!("EU".to_string().check(&Rule::Name).is_err());
        assert!(String::new().check(&Rule::NameOrEmpty).is_ok());
    }
}
