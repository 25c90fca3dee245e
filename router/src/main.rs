//! `kaskade`: the daemon's command line. Thin: parse, load and validate the
//! configuration before binding anything, start, wait for a signal, stop.

#![warn(missing_docs, clippy::unwrap_used)]
use clap::{Parser, Subcommand};
use kaskade_router::cascade::NodeIdentity;
use kaskade_router::config::{Config, KeyArgs, Resolved};
use kaskade_router::metrics::Metrics;
use kaskade_router::server::StartError;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for bad configuration or usage (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(name = "kaskade", version, about = "A WebRTC media router (SFU)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the router. Embedded defaults; a config file, KASKADE_* environment
    /// variables and these flags override them, in that order.
    Serve(Box<ServeArgs>),
    /// Certificates for links between routers (a cluster CA, node certificates).
    #[command(subcommand)]
    Cert(CertCmd),
    /// Mints a room token (JWT, HS256) with an API key from KASKADE_API_KEYS.
    Token(TokenArgs),
}

#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// Id of the API key that signs it (its secret comes from KASKADE_API_KEYS).
    #[arg(long)]
    key: String,
    /// The room the token is for.
    #[arg(long)]
    room: String,
    /// Grant: may publish.
    #[arg(long)]
    publish: bool,
    /// Grant: may subscribe.
    #[arg(long)]
    subscribe: bool,
    /// Participant id the client should take (the `sub` claim).
    #[arg(long)]
    participant: Option<String>,
    /// How long it is valid, e.g. 10m or 1h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
}

#[derive(Subcommand, Debug)]
enum CertCmd {
    /// Create a cluster CA (ca.pem, ca.key).
    Ca {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "kaskade cluster")]
        name: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create a node certificate carrying a node id and a region.
    Node {
        /// The CA certificate.
        #[arg(long)]
        ca: PathBuf,
        /// The CA key.
        #[arg(long)]
        ca_key: PathBuf,
        /// Node id (lowercase letters, digits, '-').
        #[arg(long)]
        id: String,
        /// Region, e.g. eu-de-fra.
        #[arg(long)]
        region: String,
        /// Extra host names or IPs (informational).
        #[arg(long)]
        san: Vec<String>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// A development cluster: a CA and one certificate per node.
    DevCluster {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// A node as id:region, e.g. fra:eu-de-fra (repeatable).
        #[arg(long = "node", required = true)]
        nodes: Vec<NodeIdentity>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Print the node id and region a certificate carries.
    Show {
        /// The certificate (PEM).
        file: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
#[command(after_long_help = SERVE_AFTER_HELP)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Allow a control listener reachable from other hosts without API keys.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Every config key as a flag, each with its KASKADE_* variable.
    #[command(flatten)]
    keys: KeyArgs,
}

const SERVE_AFTER_HELP: &str = "\
Every key can be set in the file, by its environment variable or by its flag; \
a later source wins (file < environment < flag). Unknown KASKADE_* variables \
are refused. RUST_LOG is honoured when neither KASKADE_LOG_LEVEL nor \
--log-level is given. See docs/operations.md.";

fn load(args: &ServeArgs) -> Result<Resolved, String> {
    let env_names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    Config::check_env(env_names.iter().map(String::as_str)).map_err(|e| e.to_string())?;
    let mut cfg = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    cfg.apply(&args.keys, rust_log.as_deref())
        .map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let api_keys = std::env::var(kaskade_router::auth::API_KEYS_ENV).ok();
    cfg.validate(cores)
        .and_then(|r| r.with_api_keys(api_keys.as_deref(), args.insecure_no_auth))
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Cmd::Serve(args) => serve(&args),
        Cmd::Cert(c) => cert(c),
        Cmd::Token(t) => token(&t),
    }
}

fn token(t: &TokenArgs) -> ExitCode {
    use kaskade_router::auth::{token, KeySet, API_KEYS_ENV};
    let env = std::env::var(API_KEYS_ENV).unwrap_or_default();
    let keys = match KeySet::build(&[], Some(&env)) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("kaskade token: {API_KEYS_ENV}: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(secret) = keys.get(&t.key).and_then(|k| k.secret()) else {
        eprintln!(
            "kaskade token: no key {:?} in {API_KEYS_ENV} (id:secret,...)",
            t.key
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    if !t.publish && !t.subscribe {
        eprintln!("kaskade token: grant something: --publish and/or --subscribe");
        return ExitCode::from(EXIT_CONFIG);
    }
    // A token the router would refuse on every request is an error now,
    // not a surprise later.
    if let Err(e) = kaskade_protocol::RoomId::parse(&t.room) {
        eprintln!("kaskade token: --room: room_id {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Some(Err(e)) = t
        .participant
        .as_deref()
        .map(kaskade_protocol::ParticipantId::parse)
    {
        eprintln!("kaskade token: --participant: participant_id {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // Expiry has whole seconds: a shorter ttl would expire as it is made.
    if t.ttl < std::time::Duration::from_secs(1) {
        eprintln!("kaskade token: --ttl must be at least 1s");
        return ExitCode::from(EXIT_CONFIG);
    }
    let claims = token::Claims {
        publish: t.publish,
        subscribe: t.subscribe,
        sub: t.participant.clone(),
        ..token::Claims::new(&t.room, std::time::SystemTime::now(), t.ttl)
    };
    println!("{}", token::mint(&t.key, secret, &claims));
    ExitCode::SUCCESS
}

fn cert(c: CertCmd) -> ExitCode {
    use kaskade_router::cascade::cert;
    let show = |f: &cert::CertFiles| println!("wrote {} and {}", f.cert.display(), f.key.display());
    let r = match c {
        CertCmd::Ca { out, name, force } => cert::write_ca(&out, &name, force).map(|f| show(&f)),
        CertCmd::Node {
            ca,
            ca_key,
            id,
            region,
            san,
            out,
            force,
        } => NodeIdentity::new(id, region)
            .and_then(|n| cert::write_node(&ca, &ca_key, &n, &san, &out, force).map(|f| show(&f))),
        CertCmd::DevCluster { out, nodes, force } => cert::write_dev_cluster(&out, &nodes, force)
            .map(|d| {
                show(&d.ca);
                for (n, f) in &d.nodes {
                    print!("{n}: ");
                    show(f);
                }
            }),
        CertCmd::Show { file } => cert::read_pem_file(&file)
            .and_then(|pem| cert::identity_of_pem(&pem))
            .map(|n| println!("{n}")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kaskade cert: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let cfg = match load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kaskade: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log_level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tracing::debug!(filter = %cfg.log_level, "log filter");
    kaskade_router::panics::install();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kaskade-control")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kaskade: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        // Handlers first: a signal sent as soon as the ready line is out (or
        // during start-up) must find them, not the default action (SIGHUP
        // would end the process).
        let signals = Signals::install();
        let running = match kaskade_router::server::start(&cfg, Metrics::new()).await {
            Ok(r) => r,
            Err(e @ StartError::Config(_)) => {
                eprintln!("kaskade: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(e) => {
                eprintln!("kaskade: {e}");
                return ExitCode::FAILURE;
            }
        };
        log_access(&cfg, running.control);
        tracing::info!(
            control = %running.control,
            workers = running.media.len(),
            "kaskade is up"
        );
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", running.ready_line());
        let _ = out.flush();
        drop(out);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        run_until_stopped(&running, signals).await;
        tracing::info!("stopping");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// One line on who can reach the control API.
/// One line on who may call the control API, naming the address it is bound to.
fn log_access(cfg: &Resolved, bound: std::net::SocketAddr) {
    let tls = match (
        cfg.config.control.tls_cert.is_empty(),
        cfg.config.control.tls_client_ca.is_empty(),
    ) {
        (true, _) => "plaintext",
        (false, true) => "TLS",
        (false, false) => "mutual TLS",
    };
    let scope = if cfg.control_listen.ip().is_loopback() {
        "loopback only"
    } else {
        "reachable from other hosts"
    };
    if cfg.api_keys.is_empty() {
        tracing::warn!(
            "control API: {tls}, {scope}, no API keys: anyone who reaches {} may call it (set {} to require keys)",
            bound,
            kaskade_router::auth::API_KEYS_ENV
        );
    } else {
        tracing::info!(keys = ?cfg.api_keys, "control API: {tls}, {scope}, API key required");
    }
}

/// The stop and reload signals, listened to from start-up on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// `None` if the handlers cannot be installed (the default actions then
    /// end the process).
    fn install() -> Option<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Self {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }
}

/// Serves until a drain ends. SIGTERM or SIGINT starts a drain (a second
/// one stops at once); SIGHUP reloads certificates.
async fn run_until_stopped(running: &kaskade_router::server::Running, signals: Option<Signals>) {
    let Some(Signals {
        mut term,
        mut int,
        mut hup,
    }) = signals
    else {
        running.drained().await;
        return;
    };
    let drained = running.drained();
    tokio::pin!(drained);
    loop {
        tokio::select! {
            _ = &mut drained => return,
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {
                match running.reload().await {
                    Ok(()) => tracing::info!("SIGHUP: certificates reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed; the previous certificates stay in use"),
                }
                continue;
            }
        }
        if running.lifecycle.is_draining() {
            tracing::warn!("second stop signal: closing every session now");
            return;
        }
        running.start_drain().await;
    }
}
