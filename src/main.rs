//! The `junction` command: `run` the processor, or `validate` a configuration.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info};

use junction::config;
use junction::metrics::Metrics;
use junction::ops::view::View;
use junction::runtime;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a SIGTERM or SIGINT may take: commit, close the stores, leave the group.
const SHUTDOWN_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Parser)]
#[command(name = "junction", version, about = "Joins workflow step events and publishes one outcome per decision")]
struct Cli {
    /// Log format; the level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor until SIGINT or SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and list every error.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match cli.command {
        Command::Validate { config } => match config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} workflow type{}, {})",
                    config.display(),
                    c.workflows.len(),
                    if c.workflows.len() == 1 { "" } else { "s" },
                    c.kafka.processing_guarantee.as_str()
                );
                for line in junction::ops::edits::report(&c) {
                    println!("{}: {line}", config.display());
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => match config::load(&config) {
            Ok(c) => run(Arc::new(c)),
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::from(2)
            }
        },
    }
}

/// How long mimalloc keeps memory freed by junction before it gives it back
/// to the system (its default is 1 s).
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 10_000;
/// `mi_option_purge_delay` in mimalloc.h, which libmimalloc-sys does not name
/// (it comes just before `mi_option_use_numa_nodes`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;
/// Memory that mimalloc gives back to the system is zeroed by the kernel
/// when it is touched again. Each commit frees and allocates again megabytes
/// (its states, its records), so with mimalloc's default delay a tenth of
/// the stream thread went to page faults (9.2% against 0.6–1.7% with this
/// one). The price is memory freed in a burst staying resident for up to
/// the delay: 1,139 MiB against 791 MiB read 1 s after a million open
/// workflows arrived. `MIMALLOC_PURGE_DELAY` (milliseconds) in the
/// environment overrides this.
fn tune_allocator() {
    // SAFETY: sets one of mimalloc's tuning values, before the threads that allocate are started.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) };
}

fn run(config: Arc<config::Config>) -> ExitCode {
    tune_allocator();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    let view = Arc::new(View::new(Arc::new(Metrics::new())));

    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let stream_thread = {
        let (config, view, handle) = (Arc::clone(&config), Arc::clone(&view), runtime.handle().clone());
        std::thread::Builder::new()
            .name("junction-stream".into())
            .spawn(move || {
                let result = runtime::run(config, view, handle);
                let _ = done_tx.send(());
                result
            })
            .expect("spawn the stream thread")
    };

    let http = serve_http(&runtime, Arc::clone(&view), Arc::clone(&config));
    info!(listen = %config.http.listen, "HTTP endpoints: /metrics /healthz /readyz /workflows/{{id}}");

    let mut done_rx = done_rx;
    let stopped_by_itself = runtime.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { info!("SIGINT received"); false }
            _ = term.recv() => { info!("SIGTERM received"); false }
            _ = &mut done_rx => true,
        }
    });
    view.shutdown.store(true, Ordering::SeqCst);
    if !stopped_by_itself
        && runtime.block_on(async { tokio::time::timeout(SHUTDOWN_BUDGET, &mut done_rx).await }).is_err()
    {
        // What was not committed is processed again after the restart (at-least-once).
        error!(seconds = SHUTDOWN_BUDGET.as_secs(), "shutdown did not finish in time; exiting without it");
        eprintln!("junction: shutdown did not finish within {}s", SHUTDOWN_BUDGET.as_secs());
        return ExitCode::FAILURE;
    }
    let result = stream_thread.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the stream thread panicked")));
    let _ = runtime.block_on(http);
    match result {
        Ok(()) => {
            info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = format!("{e:#}"), "junction stopped on an error");
            eprintln!("junction: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serves the HTTP endpoints on the tokio runtime until shutdown.
fn serve_http(
    runtime: &tokio::runtime::Runtime,
    view: Arc<View>,
    config: Arc<config::Config>,
) -> tokio::task::JoinHandle<()> {
    let app = junction::ops::http::router(Arc::clone(&view), Arc::clone(&config));
    let listen = config.http.listen;
    runtime.spawn(async move {
        let stop = async move {
            while !view.shutdown.load(Ordering::SeqCst) {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        if let Err(e) = junction::ops::http::serve(listen, app, stop).await {
            error!(listen = %listen, error = %e, "the HTTP server failed");
        }
    })
}
