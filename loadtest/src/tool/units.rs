//! Human-friendly quantities for scenarios and thresholds: durations (`200ms`, `1.5s`,
//! through `humantime`),
//! fractions (`1%`, `0.01`) and bit rates (`2mbps`, `500k`). Each parses from a string
//! (flags, TOML strings) or a plain number (TOML numbers) and serialises back to the
//! canonical string.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration: `humantime`'s syntax (`250us`, `200ms`, `1.5s`, `30m`, `1m 30s`);
/// bare numbers are seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Dur(pub Duration);

/// A fraction 0.0–1.0: `1%`, `0.5%` or a bare number `0.01`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub(crate) struct Frac(pub f64);

/// A bit rate in bits per second: `2mbps`, `1.5M`, `500kbps`, `64k`, `300000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Rate(pub u64);

fn split_number(s: &str) -> Result<(f64, String), String> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'))
        .unwrap_or(s.len());
    // An 'e' that starts a unit (none of ours does) would be eaten above; fine here.
    let (num, unit) = s.split_at(end);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}': expected a number with an optional unit"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("'{s}': must be a non-negative number"));
    }
    Ok((v, unit.trim().to_ascii_lowercase()))
}

impl FromStr for Dur {
    type Err = String;
    /// `humantime`'s syntax (`200ms`, `1.5s`, `30m`, `1m 30s`, `2h`), and a bare
    /// number as seconds (TOML numbers).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(secs) = t.parse::<f64>() {
            return if secs.is_finite() && secs >= 0.0 {
                Ok(Dur(Duration::from_secs_f64(secs)))
            } else {
                Err(format!("'{s}': must be a non-negative number"))
            };
        }
        humantime::parse_duration(t)
            .map(Dur)
            .map_err(|e| format!("'{s}': {e} (e.g. 250ms, 1.5s, 30m, 1m 30s)"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl FromStr for Frac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (v, unit) = split_number(s)?;
        let v = match unit.as_str() {
            "%" => v / 100.0,
            "" => v,
            _ => return Err(format!("'{s}': expected a fraction like 0.01 or 1%")),
        };
        if v > 1.0 {
            return Err(format!("'{s}': a fraction must be at most 1 (100%)"));
        }
        Ok(Frac(v))
    }
}

impl fmt::Display for Frac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", (self.0 * 100.0 * 1e6).round() / 1e6)
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (v, unit) = split_number(s)?;
        let mult = match unit.trim_end_matches("bps").trim_end_matches("bit/s") {
            "" => 1.0,
            "k" => 1e3,
            "m" => 1e6,
            "g" => 1e9,
            _ => return Err(format!("'{s}': expected a rate like 500kbps or 2mbps")),
        };
        Ok(Rate((v * mult).round() as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v >= 1_000_000 && v.is_multiple_of(1000) {
            write!(f, "{}mbps", v as f64 / 1e6)
        } else if v >= 1000 && v.is_multiple_of(1000) {
            write!(f, "{}kbps", v / 1000)
        } else {
            write!(f, "{v}bps")
        }
    }
}

/// A TOML value that is either a string with a unit or a bare number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Str(String),
    Int(i64),
    Float(f64),
}

impl Raw {
    fn text(self) -> String {
        match self {
            Raw::Str(s) => s,
            Raw::Int(i) => i.to_string(),
            Raw::Float(f) => f.to_string(),
        }
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Raw::deserialize(d)?
                    .text()
                    .parse()
                    .map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

serde_via_str!(Dur);
serde_via_str!(Frac);
serde_via_str!(Rate);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            "200ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(200)
        );
        assert_eq!(
            "1.5s".parse::<Dur>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert_eq!("2".parse::<Dur>().unwrap().0, Duration::from_secs(2));
        assert_eq!(
            "250us".parse::<Dur>().unwrap().0,
            Duration::from_micros(250)
        );
        assert_eq!("1m".parse::<Dur>().unwrap().0, Duration::from_secs(60));
        assert!("5 parsecs".parse::<Dur>().is_err());
        assert!("-1s".parse::<Dur>().is_err());
        assert_eq!("1m 30s".parse::<Dur>().unwrap().0, Duration::from_secs(90));
        assert_eq!("30min".parse::<Dur>().unwrap().0, Duration::from_secs(1800));
        assert_eq!(Dur(Duration::from_millis(1500)).to_string(), "1s 500ms");
        assert_eq!(Dur(Duration::from_secs(30)).to_string(), "30s");
        assert_eq!(Dur(Duration::ZERO).to_string(), "0s");
        for d in ["1s 500ms", "30m", "250us"] {
            let v: Dur = d.parse().unwrap();
            assert_eq!(v.to_string().parse::<Dur>().unwrap(), v, "{d} round-trips");
        }
    }

    #[test]
    fn fractions() {
        assert_eq!("1%".parse::<Frac>().unwrap().0, 0.01);
        assert_eq!("0.5 %".parse::<Frac>().unwrap().0, 0.005);
        assert_eq!("0.02".parse::<Frac>().unwrap().0, 0.02);
        assert!("150%".parse::<Frac>().is_err());
        assert!("1x".parse::<Frac>().is_err());
        assert_eq!(Frac(0.015).to_string(), "1.5%");
    }

    #[test]
    fn rates() {
        assert_eq!("2mbps".parse::<Rate>().unwrap().0, 2_000_000);
        assert_eq!("1.5M".parse::<Rate>().unwrap().0, 1_500_000);
        assert_eq!("500kbps".parse::<Rate>().unwrap().0, 500_000);
        assert_eq!("64k".parse::<Rate>().unwrap().0, 64_000);
        assert_eq!("300000".parse::<Rate>().unwrap().0, 300_000);
        assert!("3 furlongs".parse::<Rate>().is_err());
        assert_eq!(Rate(2_000_000).to_string(), "2mbps");
        assert_eq!(Rate(64_000).to_string(), "64kbps");
    }

    #[test]
    fn serde_accepts_strings_and_numbers() {
        #[derive(Deserialize, Serialize)]
        struct T {
            d: Dur,
            f: Frac,
            r: Rate,
        }
        let t: T = toml::from_str("d = 3\nf = \"2%\"\nr = \"1mbps\"").unwrap();
        assert_eq!(t.d.0, Duration::from_secs(3));
        assert_eq!(t.f.0, 0.02);
        assert_eq!(t.r.0, 1_000_000);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"d":"3s","f":"2%","r":"1mbps"}"#);
    }
}
