use super::*;
use std::net::IpAddr;
use std::time::Duration;

/// What clap would hand over for these `(key, value)` pairs.
fn args(pairs: &[(&str, &str)]) -> KeyArgs {
    KeyArgs {
        values: pairs
            .iter()
            .map(|(k, v)| (key(k).unwrap(), vec![v.to_string()]))
            .collect(),
    }
}

/// Whether validating `c` fails on `key`.
fn refuses(c: &Config, key: &str) -> bool {
    c.validate(1).is_err_and(|e| e.to_string().contains(key))
}

#[test]
fn defaults_resolve() {
    let r = Config::default().validate(4).unwrap();
    assert_eq!(r.control_listen, "127.0.0.1:50051".parse().unwrap());
    assert_eq!(r.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(r.workers, 4);
    assert_eq!(r.media_port_start, 40000);
    assert_eq!(r.advertise, r.media_bind);
    assert!(!r.config.log.ips);
    assert_eq!(r.config, Config::default());
}

#[test]
fn file_then_env_and_flags() {
    let mut c = Config::from_toml("[media]\nworkers = 3\nport_start = 41000\n").unwrap();
    c.apply(&args(&[("media.workers", "7")]), None).unwrap();
    assert_eq!(c.media.port_start, 41000, "the file's value stays");
    assert_eq!(c.validate(2).unwrap().workers, 7);
}

#[test]
fn rust_log_sets_the_level_unless_kaskade_log_level_or_the_flag_does() {
    let mut c = Config::from_toml("[log]\nlevel = \"warn\"\n").unwrap();
    c.apply(&KeyArgs::default(), Some("debug")).unwrap();
    assert_eq!(c.log.level, "debug", "RUST_LOG over the file");
    c.apply(&args(&[("log.level", "error")]), Some("trace"))
        .unwrap();
    assert_eq!(c.log.level, "error", "--log-level over RUST_LOG");
    let e = Config::default()
        .apply(&KeyArgs::default(), Some("a=b=c"))
        .unwrap_err();
    assert!(e.to_string().contains("RUST_LOG"), "{e}");
}

#[test]
fn str0m_logs_errors_only_unless_the_filter_names_it() {
    use crate::config::resolve::log_filter;
    assert_eq!(log_filter("info"), "info,str0m=error");
    assert_eq!(
        log_filter("debug,kaskade=trace"),
        "debug,kaskade=trace,str0m=error"
    );
    assert_eq!(log_filter("info,str0m=debug"), "info,str0m=debug");
    assert_eq!(log_filter(""), "str0m=error");
    assert_eq!(
        Config::default().validate(1).unwrap().log_level,
        "info,str0m=error"
    );
}

#[test]
fn unknown_key_is_named() {
    let err = Config::from_toml("[media]\nworkerz = 3\n").unwrap_err();
    assert!(err.contains("workerz"), "{err}");
}

#[test]
fn wrong_type_is_named() {
    let err = Config::from_toml("[media]\nworkers = \"many\"\n").unwrap_err();
    assert!(err.contains("workers"), "{err}");
}

#[test]
fn out_of_range_numbers_are_refused_naming_the_key() {
    // Issue 15, defect 5: this used to be truncated to 0.
    let e = Config::default()
        .set("limits.max_sessions_per_room", &["4294967296"])
        .unwrap_err();
    assert!(
        e.to_string().contains("limits.max_sessions_per_room"),
        "{e}"
    );
    let e = Config::from_toml("[limits]\nmax_sessions_per_room = 4294967296\n").unwrap_err();
    assert!(e.contains("max_sessions_per_room"), "{e}");
    let mut c = Config::from_toml("[limits]\nmax_sessions_per_room = 0\n").unwrap();
    assert!(refuses(&c, "limits.max_sessions_per_room"));
    c.limits.max_sessions_per_room = 10;
    c.media.rtx_cache = 8;
    assert!(refuses(&c, "media.rtx_cache"));
    let e = Config::default()
        .set("media.port_start", &["70000"])
        .unwrap_err();
    assert!(e.to_string().contains("media.port_start"), "{e}");
}

#[test]
fn every_number_has_a_range_that_fits_its_type() {
    for k in KEYS {
        let mut c = Config::default();
        if !(k.get)(&c).is_number() {
            continue;
        }
        let Rule::Range(min, max) = k.rule else {
            panic!("{} is a number without a Rule::Range", k.name);
        };
        for v in [min, max] {
            c.set(k.name, &[&v.to_string()])
                .unwrap_or_else(|e| panic!("{}: {e}", k.name));
        }
        let below = min.checked_sub(1).map(|v| v.to_string());
        for v in below.into_iter().chain([(u128::from(max) + 1).to_string()]) {
            assert!(c.set(k.name, &[&v]).is_err(), "{} takes {v}", k.name);
        }
        assert!(
            (k.get)(&Config::default()).check(&k.rule).is_ok(),
            "{}",
            k.name
        );
    }
}

#[test]
fn names_follow_the_patterns() {
    let mut envs = std::collections::HashSet::new();
    for k in KEYS {
        assert!(k.name.starts_with(&format!("{}.", k.section)));
        assert!(!k.doc.trim().is_empty(), "{} has no doc", k.name);
        let Some(cli) = k.cli else { continue };
        let want = format!("KASKADE_{}", k.name.replace('.', "_").to_uppercase());
        assert_eq!(cli.env, want, "env of {}", k.name);
        assert!(envs.insert(cli.env), "{} twice", cli.env);
    }
}

#[test]
fn unknown_kaskade_variables_are_refused_with_a_suggestion() {
    let e = Config::check_env(["PATH", "KASKADE_MEDIA_WORKRS"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown environment variable KASKADE_MEDIA_WORKRS (did you mean KASKADE_MEDIA_WORKERS?)"
    );
    let e = Config::check_env(["KASKADE_ZZZZZZZZZZZZZZZZZZZZ"]).unwrap_err();
    assert!(!e.to_string().contains("did you mean"), "{e}");
    Config::check_env([
        "KASKADE_MEDIA_WORKERS",
        "KASKADE_BENCH_RUNS",
        "KASKADE_CHROMIUM",
        "KASKADE_E2E_VERBOSE",
        "HOME",
    ])
    .unwrap();
    assert!(Config::check_env(["KASKADE_BINARY"]).is_err());
}

#[test]
fn bad_values_name_their_key() {
    let mut c = Config::default();
    c.media.bind = "0.0.0.0".into();
    assert!(refuses(&c, "media.advertise"));
    c.media.advertise = "203.0.113.7".into();
    let r = c.validate(2).unwrap();
    assert_eq!(r.advertise, "203.0.113.7".parse::<IpAddr>().unwrap());

    let mut c = Config::default();
    c.control.listen = "localhost".into();
    assert!(refuses(&c, "control.listen"));

    let mut c = Config::default();
    c.media.port_start = 65530;
    c.media.workers = 8;
    assert!(refuses(&c, "media.port_start"));

    let e = Config::default().set("log.ips", &["maybe"]).unwrap_err();
    assert!(e.to_string().contains("log.ips"), "{e}");
}

#[test]
fn node_and_cascade_keys_are_checked() {
    let mut c = Config::from_toml(
        "[node]\nid = \"fra-1\"\nregion = \"eu-de-fra\"\n[cascade]\nlisten = \"127.0.0.1:7000\"\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\npeers = [\"ams-1=127.0.0.1:7001\"]\n",
    )
    .unwrap();
    let r = c.validate(1).unwrap();
    assert_eq!(r.config.node.region, "eu-de-fra");
    assert_eq!(r.cascade.unwrap().peers[0].node_id, "ams-1");
    c.cascade.peers = vec!["nope".into()];
    assert!(refuses(&c, "cascade.peers"));
    c.cascade.peers.clear();
    c.cascade.key.clear();
    assert!(refuses(&c, "cascade.key"));
    c.node.region = "EU".into();
    assert!(refuses(&c, "node.region"));
    c.set("cascade.peers", &["a=h:1,b=h:2", "c=h:3"]).unwrap();
    assert_eq!(c.cascade.peers.len(), 3);
}

#[test]
fn keyframe_interval_is_bounded() {
    let c = Config::from_toml("[media]\nkeyframe_interval_ms = 100\n").unwrap();
    assert_eq!(
        c.validate(1).unwrap().keyframe_interval,
        Duration::from_millis(100)
    );
    let mut c = Config::default();
    c.set("media.keyframe_interval_ms", &["0"]).unwrap();
    assert_eq!(c.validate(1).unwrap().keyframe_interval, Duration::ZERO);
    assert!(c.set("media.keyframe_interval_ms", &["60000"]).is_err());
    c.media.keyframe_interval_ms = 60000;
    assert!(refuses(&c, "media.keyframe_interval_ms"));
    assert_eq!(
        Config::default().validate(1).unwrap().keyframe_interval,
        crate::media::core::PUBLISHER_KEYFRAME_INTERVAL
    );
}

/// Found by the `config` fuzz target: a value with a control character was shown with Rust's
/// escapes (`"a\0b"`), which is no TOML, though `show` is the value "as written in a config
/// file" (`--help`'s defaults).
#[test]
fn shown_values_read_back_from_a_file() {
    let mut c = Config::default();
    c.set("control.tls_cert", &["a\u{0}b\u{6}\"c\\"]).unwrap();
    c.set("webhooks.urls", &["x\u{7f}y,z"]).unwrap();
    let mut back = Config::default();
    for name in ["control.tls_cert", "webhooks.urls"] {
        let k = key(name).unwrap();
        let shown = (k.get)(&c).show();
        let (section, field) = name.split_once('.').unwrap();
        back = Config::from_toml(&format!("[{section}]\n{field} = {shown}\n"))
            .unwrap_or_else(|e| panic!("{name} = {shown} is not TOML: {e}"));
        assert_eq!((k.get)(&back).show(), shown);
    }
    assert_eq!(back.webhooks.urls, c.webhooks.urls);
    assert_eq!(key("media.bind").unwrap().default_shown(), "\"127.0.0.1\"");
}

#[test]
fn metrics_can_be_disabled() {
    let mut c = Config::default();
    c.set("metrics.listen", &[""]).unwrap();
    assert_eq!(c.validate(1).unwrap().metrics_listen, None);
}

fn repo_file(rel: &str) -> String {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    std::fs::read_to_string(format!("{p}/{rel}")).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn operations_doc_lists_every_key_with_its_variable_and_flag() {
    let doc = repo_file("docs/operations.md");
    for k in KEYS {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", k.name)))
            .unwrap_or_else(|| panic!("docs/operations.md has no table row for {}", k.name));
        if let Some(cli) = k.cli {
            assert!(row.contains(&format!("`{}`", cli.env)), "{row}");
            if cli.flag.is_empty() {
                assert!(!row.contains("`--"), "a secret has no flag: {row}");
            } else {
                assert!(row.contains(&format!("`--{}`", cli.flag)), "{row}");
            }
        }
    }
    for v in EXTRA_ENV {
        assert!(doc.contains(v), "docs/operations.md does not mention {v}");
    }
}

#[test]
fn example_config_has_every_key_in_its_section() {
    let text = repo_file("deploy/kaskade.toml");
    let mut section = String::new();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        // Keys may be commented out (`# key = ...`) when they need files.
        let l = line.trim().trim_start_matches('#').trim();
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim_matches(['[', ']']).to_string();
            // An array of tables (`[[api.keys]]`) is the key itself.
            seen.insert(section.clone());
            continue;
        }
        if let Some((k, _)) = l.split_once('=') {
            seen.insert(format!("{section}.{}", k.trim()));
        }
    }
    for k in KEYS {
        assert!(
            seen.contains(k.name),
            "deploy/kaskade.toml misses {}",
            k.name
        );
    }
    let c = Config::from_toml(&text).expect("deploy/kaskade.toml parses");
    c.validate(2).expect("deploy/kaskade.toml is valid");
}

#[test]
fn http_listen_off_loopback_needs_api_keys_and_can_be_off() {
    let r = Config::default().validate(1).unwrap();
    assert_eq!(r.http_listen, Some("127.0.0.1:8080".parse().unwrap()));
    let mut c = Config::default();
    c.apply(&args(&[("http.listen", "[::1]:0")]), None).unwrap();
    assert_eq!(
        c.validate(1).unwrap().http_listen,
        Some("[::1]:0".parse().unwrap())
    );
    c.http.listen = "0.0.0.0:8080".into();
    let refused = c
        .validate(1)
        .unwrap()
        .with_api_keys(None, true)
        .unwrap_err();
    assert!(refused.to_string().contains("http.listen"), "{refused}");
    assert!(
        refused.to_string().contains("KASKADE_API_KEYS"),
        "{refused}"
    );
    let r = c
        .validate(1)
        .unwrap()
        .with_api_keys(Some("k1:0123456789abcdef0123"), false)
        .unwrap();
    assert_eq!(r.http_listen, Some("0.0.0.0:8080".parse().unwrap()));
    c.http.listen = String::new();
    assert_eq!(c.validate(1).unwrap().http_listen, None);
}

#[test]
fn webhooks_need_http_urls_a_secret_and_known_kinds() {
    let mut c = Config::from_toml(
        "[webhooks]\nurls = [\"http://127.0.0.1:9000/hook\"]\nkey_id = \"k1\"\nevents = [\"session_closed\"]\n",
    )
    .unwrap();
    // Signed with the secret of the API key named by key_id.
    let r = c
        .validate(1)
        .unwrap()
        .with_api_keys(Some("k1:0123456789abcdef0123"), false)
        .unwrap();
    assert_eq!(r.webhooks.unwrap().secret, "0123456789abcdef0123");
    let e = c
        .validate(1)
        .unwrap()
        .with_api_keys(Some("k2:0123456789abcdef0123"), false)
        .unwrap_err();
    assert!(e.to_string().contains("webhooks.key_id"), "{e}");
    c.webhooks.key_id.clear();
    assert!(refuses(&c, "webhooks.key_id"));
    c.apply(&args(&[("webhooks.secret", "short")]), None)
        .unwrap();
    assert!(refuses(&c, "webhooks.secret"));
    c.apply(&args(&[("webhooks.secret", "0123456789abcdef")]), None)
        .unwrap();
    let w = c.validate(1).unwrap().webhooks.unwrap();
    assert_eq!(w.urls.len(), 1);
    assert_eq!(w.queue, 1000);
    assert!(!w.participant_data);
    assert!(
        !format!("{w:?}").contains("0123456789abcdef"),
        "no secret in Debug"
    );
    c.webhooks.events = vec!["session_closd".into()];
    assert!(refuses(&c, "webhooks.events"));
    c.webhooks.events.clear();
    c.webhooks.urls = vec!["ftp://hooks.example/x".into()];
    assert!(refuses(&c, "webhooks.urls"));
    c.webhooks.urls = vec!["https://hooks.example/x".into()];
    assert!(c.validate(1).unwrap().webhooks.is_some());
    c.webhooks.urls.clear();
    assert_eq!(c.validate(1).unwrap().webhooks, None);
    let e = c
        .apply(&args(&[("webhooks.participant_data", "maybe")]), None)
        .unwrap_err();
    assert!(e.to_string().contains("webhooks.participant_data"), "{e}");
}

#[test]
fn room_share_sets_the_placement() {
    use crate::media::placement::{Policy, ROOM_SHARE_STREAMS};
    let c = Config::default();
    assert_eq!(
        c.validate(1).unwrap().placement,
        Policy::Rooms {
            share: ROOM_SHARE_STREAMS
        }
    );
    let mut c = Config::from_toml("[media]\nroom_share = 40\n").unwrap();
    assert_eq!(
        c.validate(1).unwrap().placement,
        Policy::Rooms { share: 40 }
    );
    c.apply(&args(&[("media.room_share", "0")]), None).unwrap();
    assert_eq!(c.validate(1).unwrap().placement, Policy::LeastLoaded);
}
