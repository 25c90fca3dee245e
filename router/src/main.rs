//! `kaskade`: the daemon's command line. Thin: parse, load and validate the
//! configuration before binding anything, start, wait for a signal, stop.

use clap::{Parser, Subcommand};
use kaskade_router::cascade::NodeIdentity;
use kaskade_router::config::{Config, Overrides, Resolved};
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
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// gRPC listen address (control.listen).
    #[arg(long, value_name = "ADDR")]
    control_listen: Option<String>,
    /// Prometheus listen address, empty to disable (metrics.listen).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// IP the media sockets bind to (media.bind).
    #[arg(long, value_name = "IP")]
    media_bind: Option<String>,
    /// First media UDP port, 0 for ephemeral (media.port_start).
    #[arg(long, value_name = "PORT")]
    media_port_start: Option<String>,
    /// Media worker threads, 0 for one per core (media.workers).
    #[arg(long, value_name = "N")]
    workers: Option<String>,
    /// IP advertised in ICE candidates (media.advertise).
    #[arg(long, value_name = "IP")]
    advertise: Option<String>,
    /// Capacity of each worker's fan-out inbox, in batches (media.bus_queue).
    #[arg(long, value_name = "N")]
    bus_queue: Option<String>,
    /// Packets kept per outgoing video stream to answer NACKs (media.rtx_cache).
    #[arg(long, value_name = "N")]
    rtx_cache: Option<String>,
    /// Minimum time between two keyframe requests to one publisher layer, in
    /// ms (media.keyframe_interval_ms).
    #[arg(long, value_name = "MS")]
    keyframe_interval_ms: Option<String>,
    /// Expected load, in streams, up to which a room's sessions share one
    /// media worker; 0 spreads every session (media.room_share).
    #[arg(long, value_name = "STREAMS")]
    room_share: Option<String>,
    /// Log filter, e.g. info or kaskade=debug (log.level).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Include IP addresses in logs: true or false (log.ips).
    #[arg(long, value_name = "BOOL")]
    log_ips: Option<String>,
    /// This router's node id (node.id).
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// This router's region, e.g. eu-de-fra (node.region).
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// QUIC listen address for links to other routers (cascade.listen).
    #[arg(long, value_name = "ADDR")]
    cascade_listen: Option<String>,
    /// Cluster CA certificate, PEM (cascade.ca).
    #[arg(long, value_name = "FILE")]
    cascade_ca: Option<String>,
    /// This node's certificate, PEM (cascade.cert).
    #[arg(long, value_name = "FILE")]
    cascade_cert: Option<String>,
    /// This node's private key, PEM (cascade.key).
    #[arg(long, value_name = "FILE")]
    cascade_key: Option<String>,
    /// A peer router, node_id=host:port (cascade.peers; repeatable).
    #[arg(long = "peer", value_name = "ID=ADDR")]
    peers: Vec<String>,
}

fn load(args: &ServeArgs) -> Result<Resolved, String> {
    let mut cfg = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    cfg.apply_env(|k| std::env::var(k).ok())
        .map_err(|e| e.to_string())?;
    cfg.apply(&Overrides {
        control_listen: args.control_listen.clone(),
        metrics_listen: args.metrics_listen.clone(),
        media_bind: args.media_bind.clone(),
        media_port_start: args.media_port_start.clone(),
        media_workers: args.workers.clone(),
        media_advertise: args.advertise.clone(),
        media_bus_queue: args.bus_queue.clone(),
        media_rtx_cache: args.rtx_cache.clone(),
        media_keyframe_interval_ms: args.keyframe_interval_ms.clone(),
        media_room_share: args.room_share.clone(),
        log_level: args.log_level.clone(),
        log_ips: args.log_ips.clone(),
        node_id: args.node_id.clone(),
        node_region: args.region.clone(),
        cascade_listen: args.cascade_listen.clone(),
        cascade_ca: args.cascade_ca.clone(),
        cascade_cert: args.cascade_cert.clone(),
        cascade_key: args.cascade_key.clone(),
        cascade_peers: (!args.peers.is_empty()).then(|| args.peers.clone()),
    })
    .map_err(|e| e.to_string())?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    cfg.resolve(cores).map_err(|e| e.to_string())
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
