/*!
The HTTP endpoints: `/metrics`, `/healthz`, `/api/v1/sockets`,
`/api/v1/summary`, and `POST /api/v1/reaped` ([`reaped`]: the one that
counts something, `cwatch_reaped_sockets_total`); anything else is a 404.
Handlers only read shared state; a bad request cannot reach the table or
the probes. Every route sits behind basic auth when the web config
has users, answers gzip when asked, and gives up after the request timeout.
The accept loop, TLS and the per-connection limits are in [`server`]; the
types the client reads back are in [`wire`].
*/
pub mod admission;
pub mod api;
pub mod auth;
pub mod query;
mod reaped;
pub mod server;
mod stream;
mod summary;
pub mod webconfig;
pub mod wire;

use std::{
    sync::{Arc, RwLock},
    time::Instant,
};

use axum::{
    Json, Router,
    extract::{Query, State as AppState},
    http::{HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tower_http::{compression::CompressionLayer, timeout::TimeoutLayer};

use crate::{export::Exporter, state::State};

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// TLS and basic auth now in force, and the credentials that passed.
#[derive(Default)]
pub struct Web {
    security: RwLock<Arc<webconfig::WebSecurity>>,
    pub auth_cache: auth::AuthCache,
}

impl Web {
    pub fn new(security: webconfig::WebSecurity) -> Self {
        let web = Self::default();
        web.set_security(security);
        web
    }

    /// TLS and basic auth now in force.
    pub fn security(&self) -> Arc<webconfig::WebSecurity> {
        Arc::clone(&self.security.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces them (SIGHUP); credentials must pass again.
    pub fn set_security(&self, security: webconfig::WebSecurity) {
        *self.security.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(security);
        self.auth_cache.clear();
    }
}

/// What the handlers work with: the shared state (read only), the
/// exporter, and the web security.
#[derive(Clone)]
pub struct App {
    pub state: Arc<State>,
    pub exporter: Arc<Exporter>,
    pub web: Arc<Web>,
}

pub fn router(app: App) -> Router {
    let timeout = app.state.config().web.request_timeout;
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/sockets", get(sockets))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/reaped", post(reaped::reaped))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), auth::require))
        .layer(CompressionLayer::new().gzip(true))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(app)
}

async fn metrics(AppState(app): AppState<App>) -> Response {
    let started = Instant::now();
    let body = tokio::task::spawn_blocking(move || app.exporter.render(&app.state, started)).await;
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], body).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics failed: {err}\n"),
        )
            .into_response(),
    }
}

async fn healthz(AppState(app): AppState<App>) -> Response {
    if app.state.is_ready() {
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
    AppState(app): AppState<App>,
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
    if query.limit.is_none() {
        let body = stream::all(app, query);
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let selected = tokio::task::spawn_blocking(move || select(&app, &query)).await;
    let Ok((page, next)) = selected else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "selecting sockets failed\n",
        )
            .into_response();
    };
    let mut response = Json(page).into_response();
    if let Some(cursor) = next
        && let Ok(value) = HeaderValue::from_str(&cursor.to_string())
    {
        response.headers_mut().insert("x-next-cursor", value);
    }
    response
}

/// One page of `/api/v1/sockets`: the owners' units (for the filters) are
/// looked up before the table is locked.
fn select(app: &App, query: &query::SocketQuery) -> (Vec<api::ApiSocket>, Option<query::Cursor>) {
    let state = &app.state;
    let config = state.config();
    let filter = app.exporter.filter(state, Arc::clone(&config));
    let now = state.clock.now_ns();
    let table = state.lock_table();
    let keep = |e: &crate::table::SockEntry| filter.keeps(e);
    let keep: Option<&dyn Fn(&crate::table::SockEntry) -> bool> =
        (!filter.is_empty()).then_some(&keep);
    api::select(&table, now, config.leak_after, query, keep, &state.sites)
}

async fn summary(
    AppState(app): AppState<App>,
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let pairs = match params {
        Ok(Query(pairs)) => pairs,
        Err(err) => return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
    };
    let query = match query::SocketQuery::from_pairs(&pairs) {
        Ok(q) if q.limit.is_none() && q.cursor.is_none() => q,
        Ok(_) => {
            let why = "the summary takes leaked, pid and peer only\n";
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
        Err(err) => return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
    };
    let counted = tokio::task::spawn_blocking(move || {
        let state = &app.state;
        let filter = app.exporter.filter(state, state.config());
        let now = state.clock.now_ns();
        summary::summary(
            &mut state.lock_table(),
            now,
            &query.selection(),
            &filter,
            &state.sites,
        )
    })
    .await;
    match counted {
        Ok(summary) => Json(summary).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "counting failed\n").into_response(),
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}
