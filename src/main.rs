//! The `telos` command: `serve`, `send`, `backup`, `reindex`, `verify`, `restore`, `bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use telos::{Application, Settings};

/// mimalloc instead of glibc's malloc: under load the server spent ~19% of its CPU in
/// malloc/free (perf, 64 WebSocket clients), most of it in glibc's bin consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "telos",
    version,
    about = "A live, persistent world of prototype objects that learn"
)]
struct Cli {
    /// TOML config file (overridden by TELOS_* variables, which flags override).
    #[arg(long, global = true, env = "TELOS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum MemoryCommand {
    /// The memories nearest in meaning to TEXT, closest first, with their distances.
    Search {
        text: String,
        /// How many.
        #[arg(long, default_value_t = 5)]
        k: usize,
        /// Only this kind: method, object or note.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        server: Option<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Address to listen on (TELOS_BIND); port 0 picks a free port.
        #[arg(long)]
        bind: Option<String>,
        /// Data directory of the embedded database (TELOS_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// SurrealDB server URL, e.g. ws://127.0.0.1:8000 (TELOS_DB_URL); empty = embedded.
        #[arg(long)]
        db_url: Option<String>,
    },
    /// Send a message to a running server: telos send 'genesis_obj.greet("Ada")'.
    Send {
        /// `target.selector(json args)`
        line: String,
        /// Server to talk to (default: http:// + TELOS_BIND).
        #[arg(long)]
        server: Option<String>,
    },
    /// List the objects of a running server (oid and name).
    Objects {
        /// Only those whose oid or name contains this (case-insensitive).
        #[arg(long)]
        filter: Option<String>,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
        /// Server to talk to (default: http:// + TELOS_BIND).
        #[arg(long)]
        server: Option<String>,
    },
    /// Show one object: its parents, value slots and methods.
    Show {
        oid: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        server: Option<String>,
    },
    /// The world's memory (`telos memory search TEXT`).
    Memory {
        #[command(subcommand)]
        command: MemoryCommand,
    },
    /// The most recent kernel runs, learned or failed, newest first.
    Runs {
        #[arg(long, default_value_t = 20)]
        limit: u64,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        server: Option<String>,
    },
    /// List the kernel runs waiting for a person's approval (`kernel_approval = "ask"`).
    Approvals {
        #[arg(long)]
        json: bool,
        /// Server to talk to (default: http:// + TELOS_BIND).
        #[arg(long)]
        server: Option<String>,
    },
    /// Print a shell completion script: `telos completions bash > /etc/bash_completion.d/telos`.
    Completions { shell: clap_complete::Shell },
    /// Approve a waiting kernel run (its method is installed and its message answered), or
    /// reject it with --reject REASON (the reason goes back to BRICK on the next attempt).
    Approve {
        /// The run id (`telos approvals` lists them).
        run: String,
        /// Reject instead, for this reason.
        #[arg(long, value_name = "REASON")]
        reject: Option<String>,
        /// Who decides, for the method's provenance (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// Server to talk to (default: http:// + TELOS_BIND).
        #[arg(long)]
        server: Option<String>,
    },
    /// Ask a running server to take a backup now (incremental unless --full).
    Backup {
        #[arg(long)]
        full: bool,
        /// Server to talk to (default: http:// + TELOS_BIND).
        #[arg(long)]
        server: Option<String>,
    },
    /// Ask a running server to rebuild its memory index from the stored vectors (no
    /// re-embedding); --objects first re-chunks every Retrievable object.
    Reindex {
        #[arg(long)]
        objects: bool,
        /// Server to talk to (default: http:// + TELOS_BIND).
        #[arg(long)]
        server: Option<String>,
    },
    /// Verify a backup (default: the newest) in TELOS_BACKUP_DIR: hashes, then a scratch restore.
    Verify {
        id: Option<String>,
        /// Backup directory (TELOS_BACKUP_DIR).
        #[arg(long)]
        backup_dir: Option<PathBuf>,
    },
    /// Rebuild a database from a backup chain (default: the newest) into a new directory.
    Restore {
        id: Option<String>,
        /// The new data directory to build (must not exist or be empty).
        #[arg(long)]
        to: PathBuf,
        /// Backup directory (TELOS_BACKUP_DIR).
        #[arg(long)]
        backup_dir: Option<PathBuf>,
    },
    /// Drive WebSocket clients against a running server and report errors, latency and the
    /// server's memory (ops/soak.sh starts a server and runs this).
    Soak {
        /// Server to talk to (default: http:// + TELOS_BIND).
        #[arg(long)]
        server: Option<String>,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Milliseconds each client waits between round trips.
        #[arg(long, default_value_t = 100)]
        pause_ms: u64,
        /// The server's process id (its memory is read from /proc).
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Drive a running server from this separate process: REST setters (`--mode writes`) or
    /// WebSocket round trips (`--mode ws`), closed loop or at a fixed offered rate, and print
    /// throughput and latency percentiles.
    Load {
        /// Server to talk to (default: http:// + TELOS_BIND).
        #[arg(long)]
        server: Option<String>,
        #[arg(long, value_enum, default_value = "writes")]
        mode: telos::bench::load::Mode,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Messages per second offered in total (0: closed loop, as fast as answers come).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// `--mode ws`: percent of messages that are committed writes (the rest are reads).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
        writes: u8,
    },
    /// Exchange two directories atomically (used by ops/restore.sh to swap a restored data
    /// directory in: at every instant both paths hold a complete directory).
    #[command(hide = true)]
    SwapDirs { a: PathBuf, b: PathBuf },
    /// Measure the server and print the figures.
    Bench {
        /// Messages per in-process measurement.
        #[arg(long, default_value_t = 200_000)]
        sends: usize,
        /// Round trips per WebSocket client.
        #[arg(long, default_value_t = 20)]
        round_trips: usize,
        /// Instead: measure backup, restore and incremental on a world of this many objects.
        #[arg(long)]
        backup_objects: Option<usize>,
        /// Instead: awakening, listing, cold activation, RSS and sweep over a world of this
        /// many stored objects (10,000 of them activated).
        #[arg(long)]
        objects: Option<usize>,
        /// With --objects: only fill TELOS_DATA_DIR with them (the bench runs this in a child
        /// process so the server's memory is measured alone).
        #[arg(long, hide = true)]
        fill_only: bool,
        /// Instead: measure embeddings, search and cold start with this many memory records.
        #[arg(long)]
        memory: Option<usize>,
        /// Instead: time kernel runs (first miss, similar miss, reuse) with the configured
        /// persona backend.
        #[arg(long)]
        kernel: bool,
        /// Instead: the learning benchmark over a families file (e.g. bench/families.json),
        /// once with recall on and once with recall_k = 0.
        #[arg(long)]
        learning: Option<PathBuf>,
        /// Instead: time N durable commits of 1, 8 and 64 objects, beside bare SurrealDB peers.
        #[arg(long)]
        commits: Option<usize>,
        /// With --learning: only the first N families.
        #[arg(long)]
        families: Option<usize>,
        /// Instead: memory searches and health reads during SECONDS of generation by the
        /// configured local model (what an operator waits for while objects learn).
        #[arg(long, value_name = "SECONDS")]
        busy: Option<u64>,
    },
}

fn main() -> ExitCode {
    // llama.cpp's OpenMP threads spin while waiting by default, which starves everything else on
    // a small machine; this must be set before any thread starts.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        // SAFETY: the process is still single-threaded here.
        unsafe { std::env::set_var("OMP_WAIT_POLICY", "passive") };
    }
    // SurrealDB makes error values on its ordinary write path (an UPSERT of an existing record
    // goes through a failed insert); with RUST_BACKTRACE set, each would capture a backtrace,
    // which cost a third of the database's CPU under write load. Panics keep their backtraces
    // (RUST_BACKTRACE); error values do not capture any unless RUST_LIB_BACKTRACE asks for it.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the process is still single-threaded here.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let cli = Cli::parse();
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("telos: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&settings.log, settings.log_format);
    let result = match cli.command {
        Command::Serve {
            bind,
            data_dir,
            db_url,
        } => {
            if let Some(b) = bind {
                settings.bind = b;
            }
            if let Some(d) = data_dir {
                settings.data_dir = d;
            }
            if let Some(u) = db_url {
                settings.db_url = u;
            }
            serve(settings)
        }
        Command::Send { line, server } => {
            let server = server_url(server, &settings);
            actix_web::rt::System::new().block_on(telos::bench::cli_send(&server, &line, &settings))
        }
        Command::Approvals { json, server } => {
            let server = server_url(server, &settings);
            actix_web::rt::System::new()
                .block_on(telos::bench::cli_approvals(&server, json, &settings))
        }
        Command::Objects {
            filter,
            json,
            server,
        } => {
            let server = server_url(server, &settings);
            actix_web::rt::System::new().block_on(telos::bench::cli_objects(
                &server,
                filter.as_deref(),
                json,
                &settings,
            ))
        }
        Command::Show { oid, json, server } => {
            let server = server_url(server, &settings);
            actix_web::rt::System::new()
                .block_on(telos::bench::cli_show(&server, &oid, json, &settings))
        }
        Command::Memory {
            command:
                MemoryCommand::Search {
                    text,
                    k,
                    kind,
                    json,
                    server,
                },
        } => {
            let server = server_url(server, &settings);
            actix_web::rt::System::new().block_on(telos::bench::cli_memory_search(
                &server,
                &text,
                k,
                kind.as_deref(),
                json,
                &settings,
            ))
        }
        Command::Runs {
            limit,
            json,
            server,
        } => {
            let server = server_url(server, &settings);
            actix_web::rt::System::new()
                .block_on(telos::bench::cli_runs(&server, limit, json, &settings))
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "telos", &mut std::io::stdout());
            Ok(())
        }
        Command::Approve {
            run,
            reject,
            by,
            server,
        } => {
            let server = server_url(server, &settings);
            let by = by
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "cli".into());
            actix_web::rt::System::new().block_on(telos::bench::cli_approve(
                &server, &run, reject, &by, &settings,
            ))
        }
        Command::Backup { full, server } => {
            let server = server_url(server, &settings);
            actix_web::rt::System::new()
                .block_on(telos::bench::cli_backup(&server, full, &settings))
        }
        Command::Reindex { objects, server } => {
            let server = server_url(server, &settings);
            actix_web::rt::System::new()
                .block_on(telos::bench::cli_reindex(&server, objects, &settings))
        }
        Command::Verify { id, backup_dir } => {
            if let Some(id) = &id
                && let Err(e) = telos::backup::validate_id(id)
            {
                eprintln!("telos: {e:#}");
                return ExitCode::from(2);
            }
            let dir = backup_dir.unwrap_or(settings.backup_dir);
            actix_web::rt::System::new().block_on(cli_verify(dir, id))
        }
        Command::Restore { id, to, backup_dir } => {
            let dir = backup_dir.unwrap_or(settings.backup_dir);
            actix_web::rt::System::new().block_on(async move {
                let m = telos::bench::with_local_bar(
                    "restore",
                    telos::backup::restore(&dir, id.as_deref(), &to),
                )
                .await?;
                println!(
                    "restored backup {} ({} objects, sequence {}) into {}",
                    m.id,
                    m.total_objects,
                    m.seq_to,
                    to.display()
                );
                Ok(())
            })
        }
        Command::Soak {
            server,
            clients,
            minutes,
            pause_ms,
            pid,
        } => telos::bench::soak::run(telos::bench::soak::Soak {
            server: server_url(server, &settings),
            clients,
            minutes,
            pause: std::time::Duration::from_millis(pause_ms),
            pid,
            token: settings.admin_token.clone(),
        }),
        Command::Load {
            server,
            mode,
            clients,
            rate,
            seconds,
            writes,
        } => telos::bench::load::run(telos::bench::load::Load {
            server: server_url(server, &settings),
            mode,
            clients,
            rate,
            seconds,
            writes,
            token: settings.admin_token.clone(),
        }),
        Command::SwapDirs { a, b } => telos::backup::exchange_dirs(&a, &b),
        Command::Bench {
            memory: Some(n), ..
        } => telos::bench::memory::run(&settings.models_dir, n),
        Command::Bench {
            learning: Some(file),
            families,
            ..
        } => telos::bench::learning::run(settings, &file, families),
        Command::Bench {
            commits: Some(n), ..
        } => telos::bench::store::run(n),
        Command::Bench { kernel: true, .. } => telos::bench::kernel::run(settings),
        Command::Bench { busy: Some(s), .. } => telos::bench::busy::run(settings, s),
        Command::Bench {
            backup_objects: Some(n),
            ..
        } => telos::bench::run_backup(settings, n),
        Command::Bench {
            objects: Some(n),
            fill_only,
            ..
        } => telos::bench::scale::run(settings, n, fill_only),
        Command::Bench {
            sends, round_trips, ..
        } => telos::bench::run(settings, sends, round_trips),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("telos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn cli_verify(dir: PathBuf, id: Option<String>) -> anyhow::Result<()> {
    let id = match id {
        Some(id) => id,
        None => telos::backup::list(&dir)?
            .last()
            .map(|m| m.id.clone())
            .ok_or_else(|| anyhow::anyhow!("no backups in {}", dir.display()))?,
    };
    let v = telos::bench::with_local_bar(
        "verify",
        telos::backup::verify(&dir, &id, chrono::Utc::now()),
    )
    .await?;
    if v.ok {
        println!("backup {id}: ok: {}", v.detail);
        Ok(())
    } else {
        anyhow::bail!("backup {id} failed verification: {}", v.detail)
    }
}

/// `--server`, or the server this config binds.
fn server_url(server: Option<String>, settings: &Settings) -> String {
    server.unwrap_or_else(|| format!("http://{}", settings.bind))
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(settings).await?;
        // The one line on stdout: tools and tests wait for it.
        println!("listening on http://{}", app.addr());
        tracing::info!(addr = %app.addr(), "serving");
        app.run_until_stopped().await?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn init_tracing(filter: &str, format: telos::config::LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // JSON: one object per line with the span fields (a kernel run, its stage), for collectors.
    let fmt = if format == telos::config::LogFormat::Json {
        fmt.json().with_current_span(true).boxed()
    } else {
        fmt.boxed()
    }
    .with_filter(filter);
    // Watches the storage engine for corruption reports whatever the log filter says.
    let watch =
        telos::store::CorruptionWatch.with_filter(tracing_subscriber::filter::LevelFilter::WARN);
    tracing_subscriber::registry().with(fmt).with(watch).init();
}
