//! Command line: flags → scenario, targets and thresholds; runs; writes reports;
//! exit code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use super::html;
use super::janus::JanusSpec;
use super::output::{write_reports, JsonReport, Machine};
use super::report::{comparison_table, medians};
use super::router::find_router_bin;
use super::run::{run_once, RunOpts};
use super::scenario::{Bootstrap, LayerPref, Scenario, Transport};
use super::target::TargetSpec;
use super::thresholds::{Thresholds, Violation};
use super::units::{Dur, Frac, Rate};

/// Exit code: a threshold was broken.
const EXIT_THRESHOLD: u8 = 1;
/// Exit code: a run could not be done (target did not start, ...).
const EXIT_RUN: u8 = 2;
/// Exit code: bad usage or scenario.
const EXIT_USAGE: u8 = 64;

/// What to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TargetKind {
    /// kaskade over its gRPC control API.
    Kaskade,
    /// Janus VideoRoom over its HTTP API.
    Janus,
}

/// Load-tests a WebRTC SFU with real str0m clients (ICE, DTLS-SRTP, RTCP, NACK).
///
/// The scenario comes from --preset, then --scenario FILE, then the flags below, each
/// overriding the previous. Exit codes: 0 all thresholds held, 1 a threshold broke,
/// 2 a run could not be done, 64 bad usage.
#[derive(Debug, Parser)]
#[command(name = "kaskade-loadtest", version)]
pub(crate) struct Cli {
    /// Canonical scenario: s1 (1→50 fan-out), s2 (5×5 meeting), s3 (audio 10→200).
    #[arg(long)]
    preset: Option<String>,
    /// TOML scenario file (keys as in `--print-scenario`).
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Print the resolved scenario as TOML and exit.
    #[arg(long)]
    print_scenario: bool,

    /// Rooms.
    #[arg(long)]
    rooms: Option<u32>,
    /// Publishers per room.
    #[arg(long)]
    publishers: Option<u32>,
    /// Receive-only subscribers per room.
    #[arg(long)]
    subscribers: Option<u32>,
    /// Meeting: publishers also subscribe to every other publisher of their room.
    #[arg(long)]
    meeting: bool,
    /// Publish no audio.
    #[arg(long)]
    no_audio: bool,
    /// Publish no video.
    #[arg(long)]
    no_video: bool,
    /// Simulcast rids, lowest first, comma-separated (one rid: no simulcast).
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<String>>,
    /// Layer subscribers ask for: auto (router decides), low, mid, high.
    #[arg(long)]
    subscriber_layer: Option<LayerPref>,
    /// What a kaskade subscriber's first offer carries: datachannel, or
    /// recvonly (a receive-only video transceiver, no SCTP).
    #[arg(long)]
    subscriber_bootstrap: Option<Bootstrap>,
    /// How clients reach the router: udp, or tcp (ICE-TCP: each client's only
    /// candidate is an active TCP one, as behind a firewall that drops UDP;
    /// a kaskade this tool starts gets `--media-tcp-listen`).
    #[arg(long)]
    transport: Option<Transport>,
    /// Measured steady state (after ramp-up and warm-up), e.g. 30s.
    #[arg(long)]
    duration: Option<Dur>,
    /// Warm-up between the last join and the measurement.
    #[arg(long)]
    warmup: Option<Dur>,
    /// Joins started per second.
    #[arg(long)]
    ramp_up: Option<f64>,
    /// Longest a join may take.
    #[arg(long)]
    join_timeout: Option<Dur>,
    /// Seed of the clients' randomness.
    #[arg(long)]
    seed: Option<u64>,

    /// Subscribers: one-way delay added each way (e.g. 40ms).
    #[arg(long)]
    delay: Option<Dur>,
    /// Subscribers: jitter, uniform 0..JITTER per packet.
    #[arg(long)]
    jitter: Option<Dur>,
    /// Subscribers: random loss each way (e.g. 2%).
    #[arg(long)]
    loss: Option<Frac>,
    /// Subscribers: bandwidth cap each way (e.g. 1mbps).
    #[arg(long)]
    rate: Option<Rate>,
    /// Subscribers: share of them impaired (default all).
    #[arg(long)]
    impair_fraction: Option<Frac>,
    /// Publishers: one-way delay each way.
    #[arg(long)]
    pub_delay: Option<Dur>,
    /// Publishers: jitter.
    #[arg(long)]
    pub_jitter: Option<Dur>,
    /// Publishers: random loss each way.
    #[arg(long)]
    pub_loss: Option<Frac>,
    /// Publishers: bandwidth cap each way.
    #[arg(long)]
    pub_rate: Option<Rate>,

    /// Cascade: routers besides the publishers' one that subscribers join
    /// (0: no cascade).
    #[arg(long)]
    edge_routers: Option<u32>,
    /// Cascade: share of subscribers on the publishers' router (the baseline).
    #[arg(long)]
    origin_share: Option<Frac>,
    /// Cascade: one-way delay of each link between routers.
    #[arg(long)]
    link_delay: Option<Dur>,
    /// Cascade: jitter of each link.
    #[arg(long)]
    link_jitter: Option<Dur>,
    /// Cascade: random loss of each link, each way.
    #[arg(long)]
    link_loss: Option<Frac>,
    /// Join/leave soak: cycles in total (`subscribers` at a time).
    #[arg(long)]
    cycles: Option<u32>,

    /// What to load.
    #[arg(long, value_enum, default_value = "kaskade")]
    target: TargetKind,
    /// Run against kaskade and Janus, and print a side-by-side table.
    #[arg(long)]
    compare: bool,
    /// kaskade binary to start (default: target/{release,debug}/kaskade).
    #[arg(long, value_name = "PATH")]
    router_bin: Option<PathBuf>,
    /// Media workers of the started kaskade; a list runs once per value (e.g. 1,2).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    workers: Vec<u32>,
    /// Use a running kaskade at this control address instead of starting one.
    #[arg(long, value_name = "ADDR")]
    control: Option<SocketAddr>,
    /// Process id of that running kaskade (for CPU figures).
    #[arg(long)]
    router_pid: Option<u32>,
    /// Metrics address of that running kaskade (for the forwarded-packet counter).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Janus binary.
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/janus")]
    janus_bin: PathBuf,

    /// Runs per target; the tables show medians. Targets take turns.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Client driver threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Directory for report.json, report.html and server logs.
    #[arg(long, value_name = "DIR", default_value = "loadtest-report")]
    out: PathBuf,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,

    /// Fail if loss after repair exceeds this (e.g. 1%).
    #[arg(long)]
    max_loss: Option<Frac>,
    /// Fail if p99 end-to-end latency (audio or video) exceeds this (e.g. 200ms).
    #[arg(long)]
    max_p99_latency: Option<Dur>,
    /// Fail if more joins fail than this.
    #[arg(long)]
    max_join_failures: Option<u64>,
    /// Fail if the p99 join time exceeds this.
    #[arg(long)]
    max_join_time: Option<Dur>,
    /// Fail if there are more freezes than this.
    #[arg(long)]
    max_freezes: Option<u64>,
    /// Fail if the router spends more CPU µs per delivered packet than this.
    #[arg(long, value_name = "MICROS")]
    max_cpu_per_packet: Option<f64>,
    /// Fail if a smaller share of subscriptions received media (e.g. 100%).
    #[arg(long)]
    min_receiving: Option<Frac>,
}

impl Cli {
    /// The scenario: preset, then file, then flags.
    pub(crate) fn scenario(&self) -> Result<Scenario, String> {
        let mut s = match &self.preset {
            Some(p) => Scenario::preset(p)?,
            None => Scenario::default(),
        };
        // A preset's name describes its shape: one changed below says so.
        let preset = s.shape();
        if let Some(path) = &self.scenario {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            // A file on top of a preset: start from the preset's values.
            let mut base = toml::Table::try_from(&s).map_err(|e| e.to_string())?;
            let over: toml::Table =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            for (k, v) in over {
                base.insert(k, v);
            }
            s = Scenario::from_toml(&toml::to_string(&base).map_err(|e| e.to_string())?)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        macro_rules! set {
            ($field:ident) => {
                if let Some(v) = &self.$field {
                    s.$field = v.clone();
                }
            };
        }
        set!(rooms);
        set!(publishers);
        set!(subscribers);
        set!(layers);
        set!(subscriber_layer);
        set!(subscriber_bootstrap);
        set!(transport);
        set!(duration);
        set!(warmup);
        set!(ramp_up);
        set!(join_timeout);
        set!(seed);
        if self.meeting {
            s.meeting = true;
        }
        if self.no_audio {
            s.audio = false;
        }
        if self.no_video {
            s.video = false;
        }
        let si = &mut s.subscriber_impairment;
        if let Some(v) = self.delay {
            si.delay = v;
        }
        if let Some(v) = self.jitter {
            si.jitter = v;
        }
        if let Some(v) = self.loss {
            si.loss = v;
        }
        if let Some(v) = self.rate {
            si.rate = v;
        }
        if let Some(v) = self.impair_fraction {
            si.fraction = v;
        }
        let pi = &mut s.publisher_impairment;
        if let Some(v) = self.pub_delay {
            pi.delay = v;
        }
        if let Some(v) = self.pub_jitter {
            pi.jitter = v;
        }
        if let Some(v) = self.pub_loss {
            pi.loss = v;
        }
        if let Some(v) = self.pub_rate {
            pi.rate = v;
        }
        set!(cycles);
        let c = &mut s.cascade;
        if let Some(v) = self.edge_routers {
            c.edge_routers = v;
        }
        if let Some(v) = self.origin_share {
            c.origin_share = v;
        }
        if let Some(v) = self.link_delay {
            c.link.delay = v;
        }
        if let Some(v) = self.link_jitter {
            c.link.jitter = v;
        }
        if let Some(v) = self.link_loss {
            c.link.loss = v;
        }
        if self.preset.is_some() && s.shape() != preset {
            s.name = format!("{}, modified", s.name);
        }
        s.validate()?;
        Ok(s)
    }

    /// The targets, in the order runs take turns.
    pub(crate) fn targets(&self, scn: &Scenario) -> Result<Vec<TargetSpec>, String> {
        let mut v = vec![];
        if scn.cascade.is_active() {
            if self.compare || self.target == TargetKind::Janus || self.control.is_some() {
                return Err("a cascade runs on kaskade routers this tool starts: \
                            no --compare, --target janus or --control"
                    .into());
            }
            let bin = find_router_bin(self.router_bin.as_deref())?;
            return Ok(self
                .workers
                .iter()
                .map(|w| TargetSpec::KaskadeCascade {
                    bin: bin.clone(),
                    workers: *w,
                })
                .collect());
        }
        let kaskade = self.compare || self.target == TargetKind::Kaskade;
        let janus = self.compare || self.target == TargetKind::Janus;
        if janus && scn.transport == Transport::Tcp {
            return Err("transport tcp: kaskade only (no --compare or --target janus)".into());
        }
        if kaskade {
            if let Some(control) = self.control {
                v.push(TargetSpec::KaskadeExisting {
                    control,
                    pid: self.router_pid,
                    metrics: self.metrics,
                });
            } else {
                let bin = find_router_bin(self.router_bin.as_deref())?;
                for w in &self.workers {
                    v.push(TargetSpec::KaskadeSpawn {
                        bin: bin.clone(),
                        workers: *w,
                    });
                }
            }
        }
        if janus {
            v.push(TargetSpec::Janus(JanusSpec {
                bin: self.janus_bin.clone(),
            }));
        }
        Ok(v)
    }

    /// The thresholds.
    pub(crate) fn thresholds(&self) -> Thresholds {
        Thresholds {
            max_loss: self.max_loss,
            max_p99_latency: self.max_p99_latency,
            max_join_failures: self.max_join_failures,
            max_join_time: self.max_join_time,
            max_freezes: self.max_freezes,
            max_cpu_per_packet_us: self.max_cpu_per_packet,
            min_receiving: self.min_receiving,
        }
    }
}

/// Entry point.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let scn = match cli.scenario() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kaskade-loadtest: scenario: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if cli.print_scenario {
        match toml::to_string(&scn) {
            Ok(t) => {
                print!("{t}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("kaskade-loadtest: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let targets = match cli.targets(&scn) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kaskade-loadtest: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&cli.out) {
        eprintln!("kaskade-loadtest: {}: {e}", cli.out.display());
        return ExitCode::from(EXIT_USAGE);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kaskade-loadtest: runtime: {e}");
            return ExitCode::from(EXIT_RUN);
        }
    };
    let opts = RunOpts {
        threads: cli.threads.max(1),
        out_dir: cli.out.clone(),
        progress: !cli.quiet,
    };
    let machine = Machine::probe();
    eprintln!(
        "kaskade-loadtest: {} — {}; targets: {}; {} run(s) each; machine: {}",
        scn.name,
        scn.shape(),
        targets
            .iter()
            .map(TargetSpec::label)
            .collect::<Vec<_>>()
            .join(", "),
        cli.repeat.max(1),
        machine.line()
    );
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut runs = vec![];
    let mut run_errors = vec![];
    for rep in 0..cli.repeat.max(1) {
        for t in &targets {
            match rt.block_on(run_once(&scn, t, &opts, rep)) {
                Ok(r) => {
                    println!("{}", r.summary());
                    runs.push(r);
                }
                Err(e) => {
                    eprintln!("kaskade-loadtest: {} run {}: {e}", t.label(), rep + 1);
                    run_errors.push(format!("{}: {e}", t.label()));
                }
            }
        }
    }
    let meds = medians(&runs);
    let table = comparison_table(&meds);
    if meds.len() > 1 || cli.repeat > 1 {
        println!("Side by side (median, spread in parentheses):\n{table}");
    }
    let th = cli.thresholds();
    let violations: Vec<Violation> = runs.iter().flat_map(|r| th.check(r)).collect();
    for v in &violations {
        eprintln!(
            "THRESHOLD BROKEN: {} run {}: {} — measured {}",
            v.target,
            v.repeat + 1,
            v.limit,
            v.measured
        );
    }
    let passed = violations.is_empty() && run_errors.is_empty();
    let command: Vec<String> = std::env::args().collect();
    let meta = html::Meta {
        command: command.join(" "),
        date: date.clone(),
        machine: machine.line(),
        thresholds_set: !th.is_empty(),
    };
    let json = JsonReport {
        tool: "kaskade-loadtest",
        version: env!("CARGO_PKG_VERSION"),
        command,
        date,
        machine: &machine,
        scenario: &scn,
        thresholds: &th,
        passed,
        violations: &violations,
        medians: &meds,
        comparison_markdown: table,
        runs: &runs,
    };
    let page = html::page(&runs, &meds, &violations, &meta);
    match write_reports(&cli.out, &json, &page) {
        Ok((j, h)) => eprintln!("reports: {} {}", j.display(), h.display()),
        Err(e) => eprintln!("kaskade-loadtest: writing reports: {e}"),
    }
    if !run_errors.is_empty() {
        ExitCode::from(EXIT_RUN)
    } else if !violations.is_empty() {
        ExitCode::from(EXIT_THRESHOLD)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut v = vec!["kaskade-loadtest"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    #[test]
    fn flags_override_preset() {
        let cli = parse(&[
            "--preset",
            "s1",
            "--subscribers",
            "7",
            "--duration",
            "5s",
            "--loss",
            "2%",
            "--delay",
            "30ms",
            "--subscriber-layer",
            "low",
            "--layers",
            "a,b",
            "--subscriber-bootstrap",
            "recvonly",
        ]);
        let s = cli.scenario().unwrap();
        assert_eq!(s.subscriber_bootstrap, Bootstrap::Recvonly);
        assert_eq!(s.subscribers, 7);
        assert_eq!(s.publishers, 1);
        assert_eq!(s.duration.0, std::time::Duration::from_secs(5));
        assert_eq!(s.subscriber_impairment.loss.0, 0.02);
        assert_eq!(s.subscriber_impairment.delay.0.as_millis(), 30);
        assert_eq!(s.subscriber_layer, LayerPref::Low);
        assert_eq!(s.layers, vec!["a", "b"]);
    }

    #[test]
    fn file_overrides_preset_and_flags_override_file() {
        let dir = std::env::temp_dir().join(format!("lt-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s.toml");
        std::fs::write(&f, "subscribers = 12\nramp_up = 4\n").unwrap();
        let cli = parse(&[
            "--preset",
            "s1",
            "--scenario",
            f.to_str().unwrap(),
            "--ramp-up",
            "8",
        ]);
        let s = cli.scenario().unwrap();
        assert_eq!(s.subscribers, 12);
        assert_eq!(s.ramp_up, 8.0);
        assert_eq!(s.name, "S1 fan-out 1→50, modified");
        let s = parse(&["--preset", "s1", "--ramp-up", "8"])
            .scenario()
            .unwrap();
        assert_eq!(s.name, "S1 fan-out 1→50", "the shape is the preset's");
        std::fs::write(&f, "subscriberz = 12\n").unwrap();
        let cli = parse(&["--scenario", f.to_str().unwrap()]);
        assert!(cli.scenario().unwrap_err().contains("subscriberz"));
    }

    #[test]
    fn thresholds_from_flags() {
        let cli = parse(&[
            "--max-loss",
            "1%",
            "--max-p99-latency",
            "200ms",
            "--max-join-failures",
            "0",
        ]);
        let t = cli.thresholds();
        assert_eq!(t.max_loss.unwrap().0, 0.01);
        assert_eq!(t.max_p99_latency.unwrap().0.as_millis(), 200);
        assert_eq!(t.max_join_failures, Some(0));
        assert!(t.min_receiving.is_none());
    }

    #[test]
    fn bad_values_are_usage_errors() {
        assert!(Cli::try_parse_from(["x", "--loss", "lots"]).is_err());
        assert!(Cli::try_parse_from(["x", "--subscriber-layer", "ultra"]).is_err());
        let cli = parse(&["--rooms", "0"]);
        assert!(cli.scenario().is_err());
    }
}
