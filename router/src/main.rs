//! `kaskade`: the daemon's command line. Thin: parse, load and validate the
//! configuration before binding anything, start, wait for a signal, stop.

use clap::{Parser, Subcommand};
use kaskade_router::cascade::NodeIdentity;
use kaskade_router::config::{Config, KeyArgs, Resolved};
use kaskade_router::metrics::Metrics;
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
    cfg.validate(cores).map_err(|e| e.to_string())
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
    }
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
        let running = match kaskade_router::server::start(&cfg, Metrics::new()).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("kaskade: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(
            control = %running.control,
            workers = running.media.len(),
            "kaskade is up"
        );
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", running.ready_line());
        let _ = out.flush();
        drop(out);
        wait_for_signal().await;
        tracing::info!("stopping");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, Ctrl-C still ends the process.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
