//! `/metrics`, `/health/live` and `/health/ready`, served by axum (on hyper).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::Metrics;

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    ready_max_lag: Option<f64>,
}

/// Binds `addr` (errors at start-up, before any event is read) and serves until the task is
/// dropped. `/health/ready` answers 503 with the reason while the source is not connected or a
/// pipeline lags more than `ready_max_lag` seconds.
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    ready_max_lag: Option<f64>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "metrics and health endpoints");
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(ready))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "try /metrics, /health/live, /health/ready\n",
            )
        })
        .with_state(Shared {
            metrics,
            ready_max_lag,
        });
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    }))
}

async fn scrape(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        super::exposition::render(&s.metrics),
    )
}

async fn ready(State(s): State<Shared>) -> impl IntoResponse {
    match s.metrics.not_ready(s.ready_max_lag) {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}
