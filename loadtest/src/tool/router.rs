//! Starts a `kaskade` router on free loopback ports and stops it again.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The addresses in the router's `KASKADE_READY` line.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Ready {
    /// gRPC control address.
    pub control: SocketAddr,
    /// Prometheus address (absent when metrics are off).
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

/// Parses a `KASKADE_READY {...}` line.
pub(crate) fn parse_ready(line: &str) -> Result<Ready, String> {
    let json = line
        .trim()
        .strip_prefix("KASKADE_READY ")
        .ok_or_else(|| format!("not a ready line: {line:?}"))?;
    serde_json::from_str(json).map_err(|e| format!("ready line: {e}"))
}

/// A router process this tool started; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub(crate) struct RouterProcess {
    child: Child,
    /// Its addresses.
    pub ready: Ready,
}

impl RouterProcess {
    /// Starts `bin serve` with `workers` media workers on ephemeral loopback ports,
    /// `extra` arguments and `env` variables; its stderr goes to `log`.
    pub(crate) fn start(
        bin: &Path,
        workers: u32,
        log: &Path,
        extra: &[String],
        env: &[(&str, String)],
    ) -> Result<RouterProcess, String> {
        let log_file =
            std::fs::File::create(log).map_err(|e| format!("router log {}: {e}", log.display()))?;
        let mut child = Command::new(bin)
            .args([
                "serve",
                "--control-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--media-port-start",
                "0",
                "--workers",
                &workers.to_string(),
                // No demo app (its default port may be taken).
                "--http-listen",
                "",
            ])
            .args(extra)
            .env_remove("KASKADE_CONTROL_LISTEN")
            .env_remove("KASKADE_METRICS_LISTEN")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err("router stdout not captured".into());
        };
        // Read stdout on a thread: the ready line, then drain it so the pipe never fills.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            for line in lines.by_ref().map_while(Result::ok) {
                if !sent && line.starts_with("KASKADE_READY ") {
                    sent = true;
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} printed no KASKADE_READY line within 20 s (see {})",
                    bin.display(),
                    log.display()
                ));
            }
        };
        let ready = match parse_ready(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(RouterProcess { child, ready })
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it: SIGTERM, up to 5 s, then SIGKILL.
    pub(crate) fn stop(&mut self) {
        terminate(&mut self.child);
    }
}

/// The version `bin --version` prints (`kaskade 0.1.0` → `0.1.0`).
pub(crate) fn bin_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.split_whitespace().last()?.to_string())
}

/// Stops a child process: SIGTERM, up to 5 s for it to exit, then SIGKILL.
pub(crate) fn terminate(child: &mut std::process::Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a pid of our own child; no memory is touched.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The router binary to use: `explicit`, else `target/release/kaskade` or
/// `target/debug/kaskade` next to this executable or under the current directory.
pub(crate) fn find_router_bin(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--router-bin {}: no such file", p.display()))
        };
    }
    let mut candidates = vec![];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("kaskade"));
        }
    }
    for profile in ["release", "debug"] {
        candidates.push(PathBuf::from("target").join(profile).join("kaskade"));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        "no kaskade binary found: build it (cargo build --release -p kaskade-router) \
             or pass --router-bin PATH"
            .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line() {
        let r = parse_ready(
            "KASKADE_READY {\"control\":\"127.0.0.1:5\",\"metrics\":\"127.0.0.1:6\",\
             \"media\":[\"127.0.0.1:7\",\"127.0.0.1:8\"]}",
        )
        .unwrap();
        assert_eq!(r.control.port(), 5);
        assert_eq!(r.metrics.map(|m| m.port()), Some(6));
        assert!(parse_ready("hello").is_err());
    }
}
