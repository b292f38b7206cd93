//! The `tandem` command line: run the proxy, check a config, talk to a running proxy, and the
//! migration tools (backfill, verify, repair).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::watch;

use tandem::config::{self, Config, LogFormat};
use tandem::control::{Control, Overrides};
use tandem::server::Proxy;

#[derive(Parser)]
#[command(name = "tandem", version, about = "A RESP proxy for zero-downtime Redis migrations")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run(RunArgs),
    /// Validate a config file and print every problem with its YAML path (exit 1 if any).
    Check {
        #[arg(long, short, default_value = "proxy.yaml")]
        config: PathBuf,
    },
    /// Talk to a running proxy's admin API: status, cutover, rollback, mirror, compare.
    Ctl(tandem::ctl::CtlArgs),
    /// Copy the keys that already exist on the source to the target, with their TTLs, never
    /// overwriting what live mirroring wrote.
    Backfill(tandem::migrate::backfill::BackfillArgs),
    /// Compare both keyspaces (type, value, TTL); exit 1 when they differ.
    Verify(tandem::migrate::verify::VerifyArgs),
    /// Re-copy the keys a verify report or repair journal lists, from the side serving them.
    Repair(tandem::migrate::repair::RepairArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The config file. Without it, --source is required and everything else is default.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Client listener address, overriding `listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Admin HTTP address, overriding `admin.listen`.
    #[arg(long)]
    admin: Option<String>,
    /// Source backend URL (redis://host:port[/db]), overriding `backends.source.url`.
    #[arg(long)]
    source: Option<String>,
    /// Target backend URL, overriding `backends.target.url`.
    #[arg(long)]
    target: Option<String>,
    /// Log format, overriding `log.format`.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// How often the config file is checked for changes (besides file events and SIGHUP).
    #[arg(long, default_value = "2s", value_parser = config::units::parse_duration)]
    reload_poll: Duration,
    /// Where API changes are kept across restarts (default: beside the config,
    /// `<config>.state.json`). Point it at a writable volume when the config is a read-only
    /// ConfigMap mount.
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Do not watch the config directory for file events (polling and SIGHUP still reload);
    /// for hosts where inotify watches are scarce.
    #[arg(long)]
    no_watch: bool,
    /// How long SIGTERM waits for clients to finish what they sent.
    #[arg(long, default_value = "10s", value_parser = config::units::parse_duration)]
    drain_timeout: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Ctl(args) => tandem::ctl::run(args),
        Command::Backfill(args) => {
            init_logging("info", false, std::io::stderr);
            tandem::migrate::backfill::run(args)
        }
        Command::Verify(args) => {
            init_logging("warn", false, std::io::stderr);
            tandem::migrate::verify::run(args)
        }
        Command::Repair(args) => {
            init_logging("info", false, std::io::stderr);
            tandem::migrate::repair::run(args)
        }
        Command::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tandem: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{}: {} problem(s)", path.display(), errors.len());
            for e in errors.iter() {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn load_config(args: &RunArgs) -> Result<Config, String> {
    let result = match &args.config {
        Some(path) => Config::load(path).and_then(|mut c| {
            c.apply_overrides(args.listen.clone(), args.admin.clone(), args.source.clone(), args.target.clone())?;
            Ok(c)
        }),
        None => {
            Config::from_overrides(args.listen.clone(), args.admin.clone(), args.source.clone(), args.target.clone())
        }
    };
    result.map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        format!("invalid configuration:\n{}", lines.join("\n"))
    })
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = load_config(&args).map_err(anyhow::Error::msg)?;
    let json = match args.log_format.as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => config.log.format == LogFormat::Json,
    };
    let (writer, _log) = proxy_log_writer();
    init_logging(&config.log.level, json, writer);
    admin_exposure_check(&config)?;

    let workers = config.workers.count();
    let runtime = if workers == 1 {
        // One event loop: no task is ever handed to another thread.
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("tandem-worker")
            .enable_all()
            .build()?
    };
    let workers_setting = config.workers;
    runtime.block_on(async move {
        let listen = config.listen.clone();
        let admin_listen = config.admin.listen.clone();
        let source_url = config.backends.source.url.to_string();
        let overrides = Overrides {
            listen: args.listen.clone(),
            admin: args.admin.clone(),
            source: args.source.clone(),
            target: args.target.clone(),
        };
        let ramp = config.ramp.clone();
        let control = Control::start(config, args.config.clone(), args.state_file.clone(), overrides)?;
        control.drive_ramp(ramp.as_ref());
        let listener = TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let admin = TcpListener::bind(&admin_listen)
            .await
            .with_context(|| format!("cannot listen on {admin_listen} (admin)"))?;
        tracing::info!(
            listen = %listen,
            admin = %admin_listen,
            source = %source_url,
            workers,
            workers_setting = %workers_setting,
            "tandem started"
        );

        control.watch(args.reload_poll, !args.no_watch);
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(tandem::admin::serve(admin, control.clone(), stop_rx.clone()));
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = stop_tx.send(true);
        });
        tandem::server::serve(listener, control.proxy.clone(), stop_rx, args.drain_timeout).await;
        tracing::info!("tandem stopped");
        Ok(())
    })
}

/// An admin API reachable from other hosts can move the cutover: refuse to start it
/// without a token.
fn admin_exposure_check(config: &Config) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = match config.admin.listen.parse() {
        Ok(a) => a,
        Err(_) => return Ok(()),
    };
    if !addr.ip().is_loopback() && config.admin.token().is_none() {
        anyhow::bail!(
            "admin.listen {} is not a loopback address: set admin.token_env or admin.token_file so the admin API requires a bearer token",
            config.admin.listen
        );
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutting down");
}

/// Lines a stalled log pipe may leave waiting before the proxy drops new ones.
const LOG_LINES_WAITING: usize = 4096;

/// The proxy's stderr, written by a thread of its own: a stalled log pipe never stops the
/// event loop; lines are dropped once `LOG_LINES_WAITING` are waiting. Keep the guard until
/// exit: dropping it writes what is still buffered. The queue is allocated whole up front,
/// so it is 4096 lines (128 KiB), not the crate's default 128k (4 MiB of RSS, measured).
fn proxy_log_writer() -> (tracing_appender::non_blocking::NonBlocking, tracing_appender::non_blocking::WorkerGuard) {
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES_WAITING)
        .finish(std::io::stderr())
}

/// Logs through `writer` (the command-line tools write stderr directly and lose nothing).
fn init_logging<W>(level: &str, json: bool, writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    // Colours only for a person at a terminal, never in log files or collectors.
    let builder = builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[allow(dead_code)]
fn _assert_send(p: Arc<Proxy>) -> impl Send {
    p
}
