//! `kaskade`: the daemon's command line. Thin: parse, load and validate the
//! configuration before binding anything, start, wait for a signal, stop.

use clap::{Parser, Subcommand};
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
    Serve(ServeArgs),
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
    /// Log filter, e.g. info or kaskade=debug (log.level).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Include IP addresses in logs: true or false (log.ips).
    #[arg(long, value_name = "BOOL")]
    log_ips: Option<String>,
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
        log_level: args.log_level.clone(),
        log_ips: args.log_ips.clone(),
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
