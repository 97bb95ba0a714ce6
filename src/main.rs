use clap::{Parser, Subcommand};
#[cfg(feature = "sandbox")]
use profile_gateway::demo;
use profile_gateway::runtime::Flavour;
use profile_gateway::settings::{Mode, Settings};
use profile_gateway::{db, startup, telemetry};
use std::path::PathBuf;
use std::process::ExitCode;

// glibc's malloc and free were a fifth of the gateway's CPU under the benchmark (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "profile-gateway",
    version,
    about = "One endpoint to change a user's payment profile at every provider"
)]
struct Cli {
    /// TOML settings file; repeat it to layer files, later ones winning (e.g. a ConfigMap's
    /// gateway.toml, then a Secret's secrets.toml). Defaults < files < PROFILE_GATEWAY__SECTION__KEY
    /// environment variables. PROFILE_GATEWAY_CONFIG takes a comma-separated list.
    #[arg(
        long,
        global = true,
        env = "PROFILE_GATEWAY_CONFIG",
        value_delimiter = ','
    )]
    config: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API.
    Serve {
        /// Run against the built-in upstream simulator with demo users and a demo caller.
        #[arg(long)]
        sandbox: bool,
    },
    /// Apply database migrations and exit (run as a Kubernetes Job before a rollout).
    Migrate,
    /// Run the upstream simulator alone.
    Sandbox {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
        /// JSON file with the initial state (and optional faults).
        #[arg(long)]
        seed: Option<PathBuf>,
    },
    /// Load and validate the settings, print them with secrets masked, and exit.
    CheckConfig {
        #[arg(long)]
        sandbox: bool,
    },
    /// Print the SHA-256 of a bearer token read from stdin, for `auth.callers[].token_sha256`.
    HashToken,
    /// Audit trail tools (verification, HMAC lookups).
    Audit {
        #[command(subcommand)]
        command: profile_gateway::audit::cli::AuditCommand,
    },
    /// Outcome webhook tools, for callers' own tests.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Check a received webhook's Standard Webhooks signature; exit 1 when it does not match.
    Verify {
        /// The file holding the caller's `whsec_...` secret (as in webhook_secret_file).
        #[arg(long)]
        secret_file: PathBuf,
        /// The `webhook-id` header.
        #[arg(long)]
        id: String,
        /// The `webhook-timestamp` header.
        #[arg(long)]
        timestamp: String,
        /// The `webhook-signature` header.
        #[arg(long)]
        signature: String,
        /// The body exactly as received (`-`: standard input).
        #[arg(long)]
        body_file: PathBuf,
        /// Refuse a timestamp further than this from now (0: do not check, for stored payloads).
        #[arg(long, default_value_t = 300)]
        tolerance_s: i64,
    },
}

fn settings(config: &[PathBuf]) -> Result<Settings, String> {
    Settings::load_layers(config, std::env::vars()).map_err(|e| e.to_string())
}

fn load(config: &[PathBuf], sandbox: bool) -> Result<Settings, String> {
    let settings = settings(config)?;
    startup::validate(
        &settings,
        Mode::sandbox(sandbox),
        &startup::provider_names(),
    )
    .map_err(|e| e.to_string())?;
    Ok(settings)
}

/// What a build without the simulator says to a command that needs it.
const NO_SANDBOX: &str = "this build has no sandbox (built without the `sandbox` feature); \
     build with default features to use `serve --sandbox`, `check-config --sandbox` or `sandbox`";

/// Why `command` cannot run on this build, when it needs the simulator and the build has none.
fn needs_missing_sandbox(command: &Command, has_sandbox: bool) -> Option<&'static str> {
    let needs = matches!(
        command,
        Command::Serve { sandbox: true }
            | Command::CheckConfig { sandbox: true }
            | Command::Sandbox { .. }
    );
    (needs && !has_sandbox).then_some(NO_SANDBOX)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(message) = needs_missing_sandbox(&cli.command, cfg!(feature = "sandbox")) {
        // 2, as for any other command line this build cannot run.
        eprintln!("profile-gateway: {message}");
        return ExitCode::from(2);
    }
    let runtime = match Flavour::for_this_process().and_then(|f| {
        f.build()
            .map_err(|e| format!("cannot start the {f} runtime: {e}"))
    }) {
        Ok(runtime) => runtime,
        Err(message) => {
            eprintln!("profile-gateway: {message}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("profile-gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve { sandbox } => serve(&cli.config, sandbox).await,
        Command::Migrate => {
            let settings = settings(&cli.config)?;
            telemetry::init(
                &settings.telemetry.log_format,
                &settings.telemetry.log_level,
            );
            let newest = db::migrate_once(&settings).await?;
            tracing::info!(version = newest, "migrations applied");
            Ok(())
        }
        #[cfg(feature = "sandbox")]
        Command::Sandbox { listen, seed } => {
            let settings = settings(&cli.config)?;
            telemetry::init(
                &settings.telemetry.log_format,
                &settings.telemetry.log_level,
            );
            upstream_sandbox::run_standalone(listen, seed)
                .await
                .map_err(|e| e.to_string())
        }
        #[cfg(not(feature = "sandbox"))]
        Command::Sandbox { .. } => Err(NO_SANDBOX.into()),
        Command::CheckConfig { sandbox } => {
            let settings = load(&cli.config, sandbox)?;
            println!("{settings:#?}");
            for w in settings.warnings(sandbox) {
                println!("warning: {w}");
            }
            Ok(())
        }
        Command::Audit { command } => {
            let settings = settings(&cli.config)?;
            telemetry::init(&settings.telemetry.log_format, "warn");
            profile_gateway::audit::cli::run(command, &settings).await
        }
        Command::Webhook {
            command:
                WebhookCommand::Verify {
                    secret_file,
                    id,
                    timestamp,
                    signature,
                    body_file,
                    tolerance_s,
                },
        } => {
            use profile_gateway::webhooks::signature;
            let read = |p: &PathBuf| -> Result<Vec<u8>, String> {
                if p.as_os_str() == "-" {
                    let mut b = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                        .map_err(|e| format!("stdin: {e}"))?;
                    Ok(b)
                } else {
                    std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))
                }
            };
            let secrets = signature::parse_secrets(&String::from_utf8_lossy(&read(&secret_file)?))
                .map_err(|e| format!("{}: {e}", secret_file.display()))?;
            let body = read(&body_file)?;
            signature::verify(
                &secrets,
                &id,
                &timestamp,
                &signature,
                &body,
                chrono::Utc::now().timestamp(),
                (tolerance_s > 0).then_some(tolerance_s),
            )
            .map_err(|e| format!("signature not valid: {e}"))?;
            println!("signature valid");
            Ok(())
        }
        Command::HashToken => {
            let mut token = String::new();
            std::io::stdin()
                .read_line(&mut token)
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                profile_gateway::auth::token_sha256(token.trim_end_matches(['\n', '\r']))
            );
            Ok(())
        }
    }
}

/// How long `serve` waits at exit for queued spans to reach the collector.
const TRACE_FLUSH_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

async fn serve(config: &[PathBuf], sandbox: bool) -> Result<(), String> {
    let mut settings = load(config, sandbox)?;
    let traces = telemetry::init_traced(
        &settings.telemetry.log_format,
        &settings.telemetry.log_level,
    )?;
    for w in settings.warnings(sandbox) {
        tracing::warn!("{w}");
    }
    if traces.exporting {
        tracing::info!("exporting traces over OTLP/HTTP");
    }
    let served = serve_with(&mut settings, config, sandbox).await;
    traces.shutdown(TRACE_FLUSH_BOUND).await;
    served
}

async fn serve_with(
    settings: &mut Settings,
    config: &[PathBuf],
    sandbox: bool,
) -> Result<(), String> {
    #[cfg(not(feature = "sandbox"))]
    if sandbox {
        // `main` refuses this before anything starts; kept so the path cannot serve by mistake.
        let _ = config;
        return Err(NO_SANDBOX.into());
    }
    #[cfg(feature = "sandbox")]
    let sandbox_handle = if sandbox {
        let handle = demo::start_sandbox(settings)
            .await
            .map_err(|e| format!("cannot start the sandbox: {e}"))?;
        demo::sandbox_listen(settings, config);
        tracing::warn!(upstream = %handle.base_url(), "SANDBOX MODE: upstreams are simulated; never use this in production");
        db::ensure_database(settings)
            .await
            .map_err(|e| e.to_string())?;
        Some(handle)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(&settings.server.listen)
        .await
        .map_err(|e| format!("server.listen {}: {e}", settings.server.listen))?;
    let app = startup::Application::build(settings, listener)
        .await
        .map_err(|e| e.to_string())?;
    if !sandbox {
        profile_gateway::audit::roles::refuse_privileged(&app.pool).await?;
    }
    #[cfg(feature = "sandbox")]
    if let Some(handle) = &sandbox_handle {
        demo::seed_links(&app.pool)
            .await
            .map_err(|e| format!("cannot seed demo users: {e}"))?;
        println!("{}", demo::banner(app.local_addr(), &handle.base_url()));
    }
    if let Some(addr) = app.metrics_addr() {
        tracing::info!(%addr, "metrics at /metrics");
    }
    // Both follow available_parallelism(), which follows the cgroup CPU quota (runtime.rs).
    let runtime = tokio::runtime::Handle::current();
    tracing::info!(
        addr = %app.local_addr(),
        runtime = %Flavour::of(&runtime),
        tokio_workers = runtime.metrics().num_workers(),
        "profile-gateway listening"
    );
    let shutdown = app.drain_on(startup::shutdown_signal());
    app.run_until(shutdown).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_build_without_the_simulator_refuses_the_commands_that_need_it() {
        let serve = |sandbox| Command::Serve { sandbox };
        let standalone = Command::Sandbox {
            listen: "127.0.0.1:0".parse().unwrap(),
            seed: None,
        };
        let check = |sandbox| Command::CheckConfig { sandbox };
        // `check-config --sandbox` answers as `serve --sandbox` would: a build that could not
        // serve in sandbox mode does not say the configuration is fine for it.
        for command in [serve(true), check(true), standalone] {
            assert_eq!(needs_missing_sandbox(&command, false), Some(NO_SANDBOX));
            assert_eq!(needs_missing_sandbox(&command, true), None);
        }
        for has_sandbox in [false, true] {
            assert_eq!(needs_missing_sandbox(&serve(false), has_sandbox), None);
            assert_eq!(needs_missing_sandbox(&check(false), has_sandbox), None);
            assert_eq!(needs_missing_sandbox(&Command::Migrate, has_sandbox), None);
        }
        assert!(NO_SANDBOX.starts_with("this build has no sandbox"));
    }
}
