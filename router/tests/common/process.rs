//! A `kaskade serve` process for tests that need the real binary with
//! their own flags: its ready line read, killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A running `kaskade serve`.
pub(crate) struct Router {
    pub child: Child,
    pub control: SocketAddr,
    pub metrics: SocketAddr,
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A string field of the ready line's JSON.
pub(crate) fn field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    Some(json[start..start + json[start..].find('"')?].to_string())
}

/// `kaskade serve` on loopback ports (control and metrics ephemeral, no
/// HTTP listener, one worker, no API keys) with `args` and `env` added.
pub(crate) fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kaskade"));
    c.arg("serve");
    if !args.contains(&"--control-listen") {
        c.args(["--control-listen", "127.0.0.1:0"]);
    }
    c.args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--media-port-start", "0", "--workers", "1"])
        .args(["--http-listen", ""])
        .args(args)
        .env_remove("KASKADE_API_KEYS")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Spawns `cmd` and waits for its ready line.
pub(crate) fn start(mut cmd: Command) -> Router {
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("KASKADE_READY "),
        "no ready line: {line:?}"
    );
    Router {
        control: field(&line, "control").unwrap().parse().unwrap(),
        metrics: field(&line, "metrics")
            .unwrap_or_else(|| "127.0.0.1:9".into())
            .parse()
            .unwrap(),
        child,
    }
}
