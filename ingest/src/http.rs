//! Operations endpoints: `/healthz` (the process is alive), `/readyz` (database, broker and
//! migrations are in order), `/metrics` (Prometheus).

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    health::Health,
    store::{Pool, migrate},
};

#[derive(Clone)]
struct AppState {
    pool: Pool,
    health: Health,
    metrics: PrometheusHandle,
}

pub async fn serve(
    listener: TcpListener,
    pool: Pool,
    health: Health,
    metrics: PrometheusHandle,
    token: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(AppState {
            pool,
            health,
            metrics,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(token.cancelled_owned())
        .await
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let database = tokio::time::timeout(Duration::from_secs(1), async {
        let client = state.pool.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()?;
        migrate::is_current(&client).await.ok()
    })
    .await
    .ok()
    .flatten();
    let database_ok = database.is_some();
    let migrations_ok = database == Some(true);
    state.health.set_database(database_ok);
    let broker_ok = state.health.broker();
    let stopping = state.health.stopping();
    let ready = database_ok && migrations_ok && broker_ok && !stopping;
    let body = Json(json!({
        "ready": ready,
        "database": database_ok,
        "migrations": migrations_ok,
        "broker": broker_ok,
        "stopping": stopping,
    }));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}
