/*!
`POST /api/v1/reaped`: `cwatch reap --yes` reports the cookies of the
sockets it destroyed; the daemon checks and counts them
([`crate::export::reaped`]) and answers which it counted. The only route
that is not a GET, behind the same basic auth as the others; it changes
nothing but that counter (the table, the probes and the kernel are only
read).
*/
use axum::{
    Json,
    extract::State as AppState,
    http::StatusCode,
    response::{IntoResponse, Response},
};

use super::{
    App,
    wire::{ReapedAnswer, ReapedReport, RefusedReap},
};
use crate::export::reaped;

/// Most cookies one report may carry.
pub const MAX_COOKIES: usize = 100_000;

pub async fn reaped(
    AppState(app): AppState<App>,
    body: Result<Json<ReapedReport>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let report = match body {
        Ok(Json(r)) if r.cookies.len() <= MAX_COOKIES => r,
        Ok(_) => {
            let why = format!("at most {MAX_COOKIES} cookies per report\n");
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
        Err(err) => return (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response(),
    };
    let answer = tokio::task::spawn_blocking(move || count(&app, &report.cookies)).await;
    match answer {
        Ok(answer) => Json(answer).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "counting failed\n").into_response(),
    }
}

fn count(app: &App, cookies: &[u64]) -> ReapedAnswer {
    let state = &app.state;
    let leak_after = state.config().leak_after;
    let own_netns = crate::kernel_view::netns::own_inode();
    let verdicts = app.exporter.reaped.report(
        cookies,
        |pending| {
            let now = state.clock.now_ns();
            reaped::classify(&state.lock_table(), pending, now, leak_after, own_netns)
        },
        |cookie| {
            let table = state.lock_table();
            table.contains(cookie) || table.dead_entry(cookie).is_some()
        },
        reaped::SETTLE,
    );
    let mut answer = ReapedAnswer::default();
    for (cookie, verdict) in verdicts {
        match verdict {
            Ok(()) => answer.counted.push(cookie),
            Err(why) => answer.refused.push(RefusedReap {
                cookie,
                why: why.to_string(),
            }),
        }
    }
    answer
}
