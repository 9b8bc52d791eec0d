//! `ratewall-server`: see `docs/SERVICE.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ratewall_server::settings::{parse_listen, GrpcListen, DEFAULT_GRPC_LISTEN, DEFAULT_LISTEN};
use ratewall_server::state::{AppState, ConfigSource};

/// The ratewall check service.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// YAML config file (core keys + service keys). Without it: the built-in default policy.
    #[arg(long, env = "RATEWALL_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (overrides `listen` in the file).
    #[arg(long, env = "RATEWALL_LISTEN")]
    listen: Option<String>,
    /// gRPC listen address (Envoy RLS v3 and ext_authz v3, h2c) or `off` (overrides
    /// `grpc_listen` in the file; default 127.0.0.1:8081).
    #[arg(long, env = "RATEWALL_GRPC_LISTEN")]
    grpc_listen: Option<String>,
    /// Validate the configuration, print the effective config, and exit.
    #[arg(long)]
    check_config: bool,
    /// Log format: text or json (env RATEWALL_LOG_FORMAT; level from RUST_LOG, default info).
    #[arg(long, env = "RATEWALL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_format == "json" {
        fmt.json().init()
    } else {
        fmt.init()
    }

    let source = ConfigSource {
        path: cli.config.clone(),
        redis_url: std::env::var("RATEWALL_REDIS_URL")
            .ok()
            .filter(|s| !s.is_empty()),
    };
    let origin = source
        .path
        .as_ref()
        .map_or("built-in default policy".to_string(), |p| {
            p.display().to_string()
        });
    let loaded = match source.load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ratewall-server: configuration error ({origin}): {e}");
            return ExitCode::from(2);
        }
    };
    let listen_text = cli
        .listen
        .clone()
        .or_else(|| loaded.service.listen.map(|a| a.to_string()));
    let listen = match parse_listen(listen_text.as_deref().unwrap_or(DEFAULT_LISTEN)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ratewall-server: configuration error: listen: {e}");
            return ExitCode::from(2);
        }
    };
    // flag/env > file > default; only an address given explicitly must bind (the default is
    // best effort, so that an HTTP-only deployment does not fail when 8081 is taken)
    let (grpc, grpc_required) = match cli.grpc_listen.as_deref() {
        Some(t) => match GrpcListen::parse(t) {
            Ok(g) => (g, true),
            Err(e) => {
                eprintln!("ratewall-server: configuration error: --grpc-listen: {e}");
                return ExitCode::from(2);
            }
        },
        None => match loaded.service.grpc_listen {
            Some(g) => (g, true),
            None => match GrpcListen::parse(DEFAULT_GRPC_LISTEN) {
                Ok(g) => (g, false),
                Err(e) => {
                    eprintln!("ratewall-server: {e}");
                    return ExitCode::FAILURE;
                }
            },
        },
    };
    // Every check start-up runs before serving: the Redis TLS files too (the store reads them).
    #[cfg(feature = "redis")]
    if let Some(r) = &loaded.limiter.redis {
        if let Err(e) = ratewall_core::store::redis::check_tls_files(r) {
            eprintln!("ratewall-server: configuration error ({origin}): {e}");
            return ExitCode::from(2);
        }
    }
    println!("# ratewall-server effective configuration ({origin}); listening on {listen}");
    println!("# gRPC (RLS v3, ext_authz v3): {grpc}");
    print!("{}", loaded.effective_yaml());
    if cli.check_config {
        return ExitCode::SUCCESS;
    }

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ratewall-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let state = AppState::new(loaded, source).await?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        let grpc_listener = match grpc {
            GrpcListen::Off => None,
            GrpcListen::At(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) if grpc_required => {
                    return Err(format!("cannot listen (gRPC) on {addr}: {e}"));
                }
                Err(e) => {
                    tracing::warn!(
                        %addr,
                        error = %e,
                        "gRPC listener not started: the default address is taken; set grpc_listen \
                         (or --grpc-listen) to an address, or to off"
                    );
                    None
                }
            },
        };
        ratewall_server::serve_all(state, listener, grpc_listener)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ratewall-server: {e}");
            ExitCode::FAILURE
        }
    }
}
