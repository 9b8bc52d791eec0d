//! # ratewall-server
//!
//! The check service: any proxy or application asks "may this request pass?" over HTTP.
//!
//! * [`api::app`] builds the router (`POST /check`, `/authz` proxy mode, `/healthz`, `/readyz`,
//!   `/metrics`) over an [`state::AppState`];
//! * [`grpc`] serves Envoy's RLS v3 (`ShouldRateLimit`) and ext_authz v3 (`Check`) on a second
//!   listener (h2c) over the same state;
//! * [`identity`] reads a proxy-mode request's identity, for `/authz` and gRPC ext_authz alike;
//! * [`settings`] validates the service's keys next to the core's in one YAML file;
//! * [`serve`] runs it with hot reload (SIGHUP; file changes through [`watch`]) and graceful
//!   shutdown;
//! * [`metrics`] counts what `/metrics` shows (the `prometheus-client` crate).
//!
//! See `docs/SERVICE.md`.

pub mod api;
pub mod descriptor_files;
pub mod grpc;
pub mod identity;
pub mod metrics;
pub mod settings;
pub mod state;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use api::app;
use state::AppState;

/// Serve `state` on `listener` (HTTP only) until SIGTERM/SIGINT: see [`serve_all`].
pub async fn serve(state: Arc<AppState>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    serve_all(state, listener, None).await
}

/// Serve `state` over HTTP on `http` and, if given, over gRPC on `grpc`, until SIGTERM/SIGINT:
/// both listeners close, in-flight requests finish (bounded by `shutdown_timeout_ms`), idle
/// keep-alive connections are closed. Reloads on SIGHUP and, if `watch_config`, when the file
/// changes. Request headers must arrive within `request_timeout_ms` (as configured at
/// start-up), so idle half-open requests cannot pile up. If either server fails, both stop.
pub async fn serve_all(
    state: Arc<AppState>,
    http: tokio::net::TcpListener,
    grpc: Option<tokio::net::TcpListener>,
) -> std::io::Result<()> {
    let addr: SocketAddr = http.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("ratewall-server listening on http://{addr}");
    spawn_reloaders(state.clone());
    let settings = state.runtime().loaded.service.clone();
    let (tx, rx) = tokio::sync::watch::channel(None::<&'static str>);
    tokio::spawn(async move {
        let sig = shutdown_signal().await;
        let _ = tx.send(Some(sig));
    });
    let signalled = |mut rx: tokio::sync::watch::Receiver<Option<&'static str>>| async move {
        let sig = rx.wait_for(Option::is_some).await.ok().and_then(|s| *s);
        sig.unwrap_or("shutdown")
    };
    let http_server = serve_router_until(
        app(state.clone()),
        http,
        settings.request_timeout,
        settings.shutdown_timeout,
        signalled(rx.clone()),
    );
    match grpc {
        None => http_server.await,
        Some(listener) => {
            let rx2 = rx.clone();
            let grpc_server = grpc::serve(state, listener, async move {
                signalled(rx2).await;
            });
            tokio::try_join!(http_server, grpc_server).map(|_| ())
        }
    }
}

/// The HTTP/1.1 serving loop under [`serve`] (also used by the benchmark's floor handler, so both
/// run on the same stack): TCP_NODELAY, header read timeout, graceful shutdown on SIGTERM/SIGINT.
pub async fn serve_router(
    router: axum::Router,
    listener: tokio::net::TcpListener,
    header_timeout: Duration,
    shutdown_timeout: Duration,
) -> std::io::Result<()> {
    serve_router_until(
        router,
        listener,
        header_timeout,
        shutdown_timeout,
        shutdown_signal(),
    )
    .await
}

/// [`serve_router`] until `shutdown` completes (its output names the signal, for the log).
pub async fn serve_router_until(
    router: axum::Router,
    listener: tokio::net::TcpListener,
    header_timeout: Duration,
    shutdown_timeout: Duration,
    shutdown: impl std::future::Future<Output = &'static str>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let service = TowerToHyperService::new(router);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let signal = loop {
        tokio::select! {
            sig = &mut shutdown => break sig,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = builder.serve_connection(TokioIo::new(stream), service.clone());
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                });
            }
        }
    };
    drop(listener);
    tracing::info!(signal, "shutting down: finishing in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(shutdown_timeout) => {
            tracing::warn!(
                timeout_ms = shutdown_timeout.as_millis() as u64,
                "in-flight requests did not finish in time; exiting"
            );
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

pub(crate) async fn reload_and_log(state: &AppState, why: &str) {
    match state.reload().await {
        Ok(generation) => {
            let rt = state.runtime();
            tracing::info!(
                trigger = why,
                generation,
                backend = rt.store.backend(),
                "configuration reloaded"
            );
        }
        Err(e) => {
            tracing::error!(trigger = why, error = %e, "configuration rejected; keeping the running one")
        }
    }
}

fn spawn_reloaders(state: Arc<AppState>) {
    #[cfg(unix)]
    {
        let st = state.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot install the SIGHUP handler");
                return;
            };
            while hup.recv().await.is_some() {
                reload_and_log(&st, "SIGHUP").await;
            }
        });
    }
    if let Some(path) = state.source.path.clone() {
        watch::spawn(state, path);
    }
}
