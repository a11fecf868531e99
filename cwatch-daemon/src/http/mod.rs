/*!
The HTTP endpoints: `/metrics`, `/healthz`, `/api/v1/sockets`; anything else
is a 404. Handlers only read shared state; a bad request cannot reach the
table or the probes.
*/
pub mod api;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

use crate::{Shared, aging::summarize};

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/sockets", get(sockets))
        .fallback(not_found)
        .with_state(shared)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let now = shared.clock.now_ns();
    let summary = {
        let table = shared.lock_table();
        summarize(&table, now, shared.config.leak_after)
    };
    let kernel = shared.kernel_counters();
    let body = shared.metrics.render(&summary, kernel.as_ref());
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], body).into_response()
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.is_ready() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: probes not attached or first reconciliation not done\n",
        )
            .into_response()
    }
}

async fn sockets(State(shared): State<Arc<Shared>>) -> Json<Vec<api::ApiSocket>> {
    let now = shared.clock.now_ns();
    let table = shared.lock_table();
    Json(api::sockets(&table, now, shared.config.leak_after))
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}
