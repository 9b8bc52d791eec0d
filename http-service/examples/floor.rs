//! The benchmark floor: a trivial axum handler on the same runtime and HTTP serving loop as
//! ratewall-server (`ratewall_server::serve_router`), answering `POST /check` and `/authz` with a fixed small JSON body without
//! reading the request. `loadtest/service_bench.py` loads it in the same run as ratewall-server.
//!
//! `cargo run --release -p ratewall-server --example floor -- 127.0.0.1:18999`

use std::time::Duration;

use axum::http::header;
use axum::routing::{any, post};
use axum::Router;

const BODY: &str = r#"{"allowed":true,"reason":null,"limit":1000000,"remaining":999999,"reset":1,"retry_after":null,"headers":[],"dimensions":[]}"#;

async fn trivial() -> ([(header::HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, "application/json")], BODY)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18999".to_string());
    let app = Router::new()
        .route("/check", post(trivial))
        .route("/authz", any(trivial))
        .route("/authz/{*rest}", any(trivial))
        .route("/healthz", any(trivial));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("floor listening on http://{addr}");
    ratewall_server::serve_router(
        app,
        listener,
        Duration::from_secs(5),
        Duration::from_secs(30),
    )
    .await
}
