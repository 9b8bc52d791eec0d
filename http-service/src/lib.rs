//! # ratewall-server
//!
//! The check service: any proxy or application asks "may this request pass?" over HTTP.
//!
//! * [`api::app`] builds the router (`POST /check`, `/authz` proxy mode, `/healthz`, `/readyz`,
//!   `/metrics`) over an [`state::AppState`];
//! * [`settings`] validates the service's keys next to the core's in one YAML file;
//! * [`serve`] runs it with hot reload (SIGHUP, file changes) and graceful shutdown.
//!
//! See `docs/SERVICE.md`.

pub mod api;
pub mod metrics;
pub mod settings;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use api::app;
use state::AppState;

/// Serve `state` on `listener` until SIGTERM/SIGINT; in-flight requests finish (bounded by
/// `shutdown_timeout_ms`). Reloads on SIGHUP and, if `watch_config`, when the file changes.
pub async fn serve(state: Arc<AppState>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    println!("ratewall-server listening on http://{addr}");
    spawn_reloaders(state.clone());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let shutdown_timeout = state.runtime().loaded.service.shutdown_timeout;
    tokio::spawn(async move {
        let sig = shutdown_signal().await;
        tracing::info!(signal = sig, "shutting down: finishing in-flight requests");
        let _ = tx.send(true);
    });
    let mut rx2 = rx.clone();
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        let _ = rx2.wait_for(|v| *v).await;
    });
    let mut rx3 = rx;
    tokio::select! {
        r = server => r?,
        _ = async {
            let _ = rx3.wait_for(|v| *v).await;
            tokio::time::sleep(shutdown_timeout).await;
        } => {
            tracing::warn!(timeout_ms = shutdown_timeout.as_millis() as u64, "in-flight requests did not finish in time; exiting");
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

async fn reload_and_log(state: &AppState, why: &str) {
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
    let Some(path) = state.source.path.clone() else {
        return;
    };
    tokio::spawn(async move {
        // Poll (mtime, size, content): works with editors that replace the file and with
        // ConfigMap symlink swaps, without a platform-specific watcher.
        let fingerprint = |p: &std::path::Path| -> Option<(SystemTime, u64, u64)> {
            let m = std::fs::metadata(p).ok()?;
            let text = std::fs::read(p).ok()?;
            let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
            });
            Some((m.modified().ok()?, m.len(), hash))
        };
        let mut last = fingerprint(&path);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if !state.runtime().loaded.service.watch_config {
                last = fingerprint(&path);
                continue;
            }
            let now = fingerprint(&path);
            if now.is_some() && now != last {
                last = now;
                reload_and_log(&state, "file change").await;
            }
        }
    });
}
