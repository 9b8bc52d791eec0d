//! The gRPC listener (h2c, beside the HTTP API, on the same [`AppState`]): Envoy's
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` ([`rls`]),
//! `envoy.service.auth.v3.Authorization/Check` ([`authz`]) and `grpc.health.v1.Health`.
//!
//! Every request message is bounded by [`MAX_MESSAGE_BYTES`] (a larger one is refused by tonic
//! with `OUT_OF_RANGE`, "decoded message length too large", before it is decoded); every call by `request_timeout_ms`
//! (`DEADLINE_EXCEEDED`). See `docs/SERVICE.md`.

pub mod authz;
pub mod rls;

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tonic::transport::server::TcpIncoming;

use crate::state::AppState;

/// Largest accepted gRPC request message (1 MiB). An RLS request of 1,000 descriptors with
/// 8 entries of 100-byte values is about 0.9 MiB; an ext_authz `CheckRequest` carries the request
/// headers (Envoy's own limit is 60 KiB by default) and no body unless `with_request_body` is set.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The fully qualified names of the services served (health reports each as `SERVING`).
pub const SERVICES: [&str; 2] = [
    "envoy.service.auth.v3.Authorization",
    "envoy.service.ratelimit.v3.RateLimitService",
];

/// Serve the gRPC services of `state` on `listener` until `shutdown` completes, then stop
/// accepting, let in-flight calls finish (bounded by `shutdown_timeout_ms`) and return.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let settings = state.runtime().loaded.service.clone();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    for s in SERVICES {
        reporter
            .set_service_status(s, tonic_health::ServingStatus::Serving)
            .await;
    }
    let authz = AuthorizationServer::new(authz::ExtAuthz::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let rls = RateLimitServiceServer::new(rls::Rls::new(state.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tracing::info!(%addr, "gRPC listening (RLS v3, ext_authz v3, health)");
    println!("ratewall-server gRPC listening on {addr}");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .timeout(settings.request_timeout)
        .add_service(health)
        .add_service(rls)
        .add_service(authz)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_rx.await;
        });
    let mut server = std::pin::pin!(server);
    tokio::select! {
        r = &mut server => return r.map_err(std::io::Error::other),
        () = shutdown => {}
    }
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(settings.shutdown_timeout, server).await {
        Ok(r) => r.map_err(std::io::Error::other),
        Err(_) => {
            tracing::warn!(
                timeout_ms = settings.shutdown_timeout.as_millis() as u64,
                "in-flight gRPC calls did not finish in time; exiting"
            );
            Ok(())
        }
    }
}
