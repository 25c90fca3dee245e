//! The certificates and tokens of the real binary: cascade certificates
//! checked before any port is bound and reloaded on SIGHUP, and `kaskade
//! token` minting room tokens the library verifies.

mod common;

use common::process::start;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "s3cret-0123456789abcdef";

#[test]
fn cascade_certificate_of_another_node_or_cluster_exits_64_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let gen = |out: &Path| {
        let ok = Command::new(env!("CARGO_BIN_EXE_kaskade"))
            .args([
                "cert",
                "dev-cluster",
                "--node",
                "fra:eu-de-fra",
                "--node",
                "ams:eu-nl-ams",
                "--out",
            ])
            .arg(out)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    gen(&a);
    gen(&b);
    // A fixed control port: if the router bound it before failing, the
    // test could see it; it must exit before binding anything.
    let control = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = control.local_addr().unwrap().port();
    drop(control);
    let run = |ca: &Path, cert: &Path, key: &Path| {
        Command::new(env!("CARGO_BIN_EXE_kaskade"))
            .args([
                "serve",
                "--http-listen",
                "",
                "--control-listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                "",
            ])
            .args([
                "--media-port-start",
                "0",
                "--workers",
                "1",
                "--node-id",
                "fra",
                "--region",
                "eu-de-fra",
            ])
            .args(["--cascade-listen", "127.0.0.1:0"])
            .arg("--cascade-ca")
            .arg(ca)
            .arg("--cascade-cert")
            .arg(cert)
            .arg("--cascade-key")
            .arg(key)
            .output()
            .unwrap()
    };
    let file = |d: &Path, f: &str| d.join(f);
    let find = |d: &Path, prefix: &str, ext: &str| {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let n = p.file_name().unwrap().to_string_lossy().to_string();
                n.starts_with(prefix) && n.ends_with(ext)
            })
            .unwrap_or_else(|| panic!("no {prefix}*{ext} in {}", d.display()))
    };
    // Another node's certificate.
    let out = run(
        &file(&a, "ca.pem"),
        &find(&a, "ams", ".pem"),
        &find(&a, "ams", ".key"),
    );
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cascade.cert"));
    assert!(out.stdout.is_empty(), "never ready");
    // This node's certificate, from another cluster's CA.
    let out = run(
        &file(&a, "ca.pem"),
        &find(&b, "fra", ".pem"),
        &find(&b, "fra", ".key"),
    );
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The right files start.
    let out_ok = {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kaskade"));
        c.args([
            "serve",
            "--http-listen",
            "",
            "--control-listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            "",
        ])
        .args([
            "--media-port-start",
            "0",
            "--workers",
            "1",
            "--node-id",
            "fra",
            "--region",
            "eu-de-fra",
        ])
        .args(["--cascade-listen", "127.0.0.1:0"])
        .arg("--cascade-ca")
        .arg(file(&a, "ca.pem"))
        .arg("--cascade-cert")
        .arg(find(&a, "fra", ".pem"))
        .arg("--cascade-key")
        .arg(find(&a, "fra", ".key"))
        .stdout(Stdio::piped());
        start(c)
    };
    drop(out_ok);
}

#[test]
fn token_command_mints_a_token_the_library_verifies() {
    use kaskade_router::auth::token::{verify, Grant};
    use kaskade_router::auth::KeySet;
    let keys = format!("backend:{SECRET}");
    let out = Command::new(env!("CARGO_BIN_EXE_kaskade"))
        .args([
            "token",
            "--key",
            "backend",
            "--room",
            "standup",
            "--publish",
            "--ttl",
            "10m",
        ])
        .env("KASKADE_API_KEYS", &keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let set = KeySet::build(&[], Some(&keys)).unwrap();
    let now = std::time::SystemTime::now();
    let claims = verify(&set, token.trim(), "standup", Grant::Publish, now).unwrap();
    assert!(claims.exp >= claims.iat + 599);
    assert!(verify(&set, token.trim(), "standup", Grant::Subscribe, now).is_err());
    let out = Command::new(env!("CARGO_BIN_EXE_kaskade"))
        .args(["token", "--key", "nobody", "--room", "r", "--publish"])
        .env("KASKADE_API_KEYS", &keys)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    // Tokens every request would refuse are not minted.
    for (bad, says) in [
        (&["--room", "bad room"][..], "--room"),
        (
            &["--room", "r", "--participant", "bad id"][..],
            "--participant",
        ),
        (&["--room", "r", "--ttl", "0s"][..], "--ttl"),
        (&["--room", "r", "--ttl", "500ms"][..], "--ttl"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kaskade"))
            .args(["token", "--key", "backend", "--publish"])
            .args(bad)
            .env("KASKADE_API_KEYS", &keys)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{bad:?}: {err}");
        assert!(err.contains(says), "{bad:?}: {err}");
        assert!(out.stdout.is_empty(), "{bad:?}");
    }
}

/// SIGHUP reloads the cascade's certificates too: a certificate of another
/// node put in place of this one's is refused (the link certificates stay
/// as they were, the router goes on), and this node's own files load.
#[test]
fn sighup_reloads_cascade_certificates_and_refuses_another_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    let ok = Command::new(env!("CARGO_BIN_EXE_kaskade"))
        .args(["cert", "dev-cluster", "--node", "fra:eu-de-fra"])
        .args(["--node", "ams:eu-nl-ams", "--out"])
        .arg(&cluster)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let (cert, key) = (dir.path().join("node.pem"), dir.path().join("node.key"));
    let put = |node: &str| {
        std::fs::copy(cluster.join(format!("{node}.pem")), &cert).unwrap();
        std::fs::copy(cluster.join(format!("{node}.key")), &key).unwrap();
    };
    put("fra");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kaskade"))
        .args([
            "serve",
            "--http-listen",
            "",
            "--control-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--metrics-listen",
            "",
            "--media-port-start",
            "0",
            "--workers",
            "1",
        ])
        .args(["--node-id", "fra", "--region", "eu-de-fra"])
        .args(["--cascade-listen", "127.0.0.1:0", "--cascade-ca"])
        .arg(cluster.join("ca.pem"))
        .arg("--cascade-cert")
        .arg(&cert)
        .arg("--cascade-key")
        .arg(&key)
        .env_remove("KASKADE_API_KEYS")
        .env("KASKADE_LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with("KASKADE_READY "), "{ready:?}");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |what: &str| {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                if l.contains(what) {
                    return l;
                }
            }
        }
        panic!("no log line with {what:?}");
    };
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    put("ams");
    hup();
    let refused = wait_for("SIGHUP: reload failed");
    assert!(refused.contains("cascade"), "{refused}");
    put("fra");
    hup();
    wait_for("SIGHUP: certificates reloaded");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let _ = child.kill();
    let _ = child.wait();
}
