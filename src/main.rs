//! The `tandem` command line: run the proxy, check a config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::watch;

use tandem::backend::{Backend, BackendSettings};
use tandem::client::auth::Users;
use tandem::config::{self, Config, LogFormat};
use tandem::mirror::journal::Journal;
use tandem::proto::request::Limits;
use tandem::route::{CutoverPlan, MirrorMode, Routing};
use tandem::server::{Policy, Proxy};

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
    /// How long SIGTERM waits for clients to finish what they sent.
    #[arg(long, default_value = "10s", value_parser = config::units::parse_duration)]
    drain_timeout: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
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
    init_logging(&config.log.level, json);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let source = Backend::new(backend_settings("source", &config.backends.source));
        let target = config.backends.target.as_ref().map(|t| Backend::new(backend_settings("target", t)));
        let journal = match &config.mirror.journal {
            Some(path) => Some(Arc::new(
                Journal::open(path.clone(), config.mirror.journal_max_bytes)
                    .with_context(|| format!("cannot open repair journal {}", path.display()))?,
            )),
            None => None,
        };
        let routing = Routing {
            plan: CutoverPlan::new(config.cutover.percent),
            mirror: mirror_mode(config.mirror.mode),
            moving: None,
            has_target: target.is_some(),
        };
        let proxy =
            Proxy::new(policy(&config), routing, source, target, config.mirror.queue_len as usize, journal);

        let listener =
            TcpListener::bind(&config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let admin = TcpListener::bind(&config.admin.listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", config.admin.listen))?;
        tracing::info!(listen = %config.listen, admin = %config.admin.listen, source = %config.backends.source.url, "tandem started");

        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(tandem::admin::serve(admin, proxy.clone(), stop_rx.clone()));
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = stop_tx.send(true);
        });
        tandem::server::serve(listener, proxy, stop_rx, args.drain_timeout).await;
        tracing::info!("tandem stopped");
        Ok(())
    })
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

fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn backend_settings(name: &str, b: &config::Backend) -> BackendSettings {
    BackendSettings {
        name: name.into(),
        addr: b.url.addr(),
        db: b.url.db,
        username: b.username.clone(),
        password: b.password().map(|s| s.expose().to_string()),
        pool_size: b.pool_size as usize,
        connect_timeout: b.connect_timeout,
        command_timeout: b.command_timeout,
        backoff_min: b.reconnect_backoff.min,
        backoff_max: b.reconnect_backoff.max,
    }
}

fn policy(config: &Config) -> Policy {
    let mut users = Users::default();
    for u in &config.auth.users {
        if let Some(p) = u.password() {
            users.add_password(&u.name, p.expose(), u.read_only);
        } else if let Some(d) = u.password_sha256_digest() {
            users.add_digest(&u.name, *d, u.read_only);
        }
    }
    let l = &config.limits;
    Policy {
        limits: Limits { max_bulk_len: l.max_bulk_len as usize, max_array_len: l.max_array_len as usize },
        max_clients: l.max_clients as usize,
        idle_timeout: (!l.idle_timeout.is_zero()).then_some(l.idle_timeout),
        max_pipeline: l.max_pipeline as usize,
        users,
        allow: config.allow_commands.clone(),
        mirror_timeout: config.mirror.timeout,
        flip_timeout: config.cutover.flip_timeout,
    }
}

fn mirror_mode(mode: config::MirrorMode) -> MirrorMode {
    match mode {
        config::MirrorMode::Off => MirrorMode::Off,
        config::MirrorMode::Async => MirrorMode::Async,
        config::MirrorMode::Sync => MirrorMode::Sync,
    }
}

#[allow(dead_code)]
fn _assert_send(p: Arc<Proxy>) -> impl Send {
    p
}
