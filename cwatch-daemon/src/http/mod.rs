/*!
The HTTP endpoints: `/metrics`, `/healthz`, `/api/v1/sockets`; anything else
is a 404. Handlers only read shared state; a bad request cannot reach the
table or the probes. Every route sits behind basic auth when the web config
has users, answers gzip when asked, and gives up after the request timeout.
The accept loop, TLS and the per-connection limits are in [`server`].
*/
pub mod api;
pub mod auth;
pub mod query;
pub mod server;
pub mod webconfig;

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};
use tower_http::{compression::CompressionLayer, timeout::TimeoutLayer};

use crate::Shared;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn router(shared: Arc<Shared>) -> Router {
    let timeout = shared.config().web.request_timeout;
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/sockets", get(sockets))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            auth::require,
        ))
        .layer(CompressionLayer::new().gzip(true))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(shared)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let started = Instant::now();
    let body = tokio::task::spawn_blocking(move || shared.render_metrics(started)).await;
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], body).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {err}\n"),
        )
            .into_response(),
    }
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

async fn sockets(
    State(shared): State<Arc<Shared>>,
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let pairs = match params {
        Ok(Query(pairs)) => pairs,
        Err(err) => return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
    };
    let query = match query::SocketQuery::from_pairs(&pairs) {
        Ok(q) => q,
        Err(err) => return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
    };
    let (page, next) = shared.select_sockets(&query);
    let mut response = Json(page).into_response();
    if let Some(cursor) = next
        && let Ok(value) = HeaderValue::from_str(&cursor.to_string())
    {
        response.headers_mut().insert("x-next-cursor", value);
    }
    response
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}
