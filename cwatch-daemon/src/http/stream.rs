//! `GET /api/v1/sockets` without `limit`: every socket, streamed. The order
//! is taken once (keys only, under the table's lock); then the answer is
//! written a chunk at a time, each chunk taking the lock only to read its
//! sockets, so a million sockets never sit in memory as one answer and a
//! scrape never waits behind one.
use std::{convert::Infallible, sync::Arc};

use axum::body::{Body, Bytes};
use tokio::sync::mpsc;

use super::{App, api, query::SocketQuery};

/// Sockets written per chunk.
const CHUNK: usize = 2_000;

/// The streamed JSON array for `query`.
pub fn all(app: App, query: SocketQuery) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(4);
    tokio::task::spawn_blocking(move || {
        let state = &app.state;
        let config = state.config();
        let filter = app.exporter.filter(state, Arc::clone(&config));
        let now = state.clock.now_ns();
        let leak_after = config.leak_after;
        let mut keys = {
            let table = state.lock_table();
            let keep = |e: &crate::table::SockEntry| filter.keeps(e);
            let keep: Option<&dyn Fn(&crate::table::SockEntry) -> bool> =
                (!filter.is_empty()).then_some(&keep);
            api::matching(&table, now, leak_after, &query, keep)
        };
        keys.sort_unstable();
        if tx.blocking_send(Ok(Bytes::from_static(b"["))).is_err() {
            return;
        }
        let mut first = true;
        for chunk in keys.chunks(CHUNK) {
            let mut out = Vec::with_capacity(chunk.len() * 320);
            {
                let table = state.lock_table();
                api::write_chunk(
                    &table,
                    now,
                    leak_after,
                    chunk,
                    &mut first,
                    &mut out,
                    &state.sites,
                );
            }
            if tx.blocking_send(Ok(Bytes::from(out))).is_err() {
                return; // the client went away
            }
        }
        let _ = tx.blocking_send(Ok(Bytes::from_static(b"\n]\n")));
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }))
}
