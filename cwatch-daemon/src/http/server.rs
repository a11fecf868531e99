/*!
The accept loop: at most `web.max_connections` connections are served at
once (more wait in the kernel's backlog), each optionally wrapped in TLS, and
each watched so that no client can hold one forever:

- a request must arrive whole, and its answer be taken, within
  `web.request_timeout` of its first byte (slowloris, stalled readers);
- a TLS handshake must finish within the same time;
- a connection idle for [`IDLE_TIMEOUT`] between requests is closed.

Idle keep-alive connections are not cut sooner on purpose: a connection the
daemon closes first leaves the scraper's socket in CLOSE_WAIT, the very thing
cwatch reports. Garbage gets hyper's 400 and the connection closed.
*/
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::App;

/// How long a keep-alive connection may sit idle between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Activity of one connection, shared with its watchdog.
#[derive(Debug)]
struct Activity {
    last: Instant,
    /// First byte of a request not yet answered.
    busy_since: Option<Instant>,
    /// A write the client does not take.
    stalled_since: Option<Instant>,
}

/// A stream that records its activity.
struct Watched<S> {
    inner: S,
    activity: Arc<Mutex<Activity>>,
}

impl<S> Watched<S> {
    fn touch(&self, f: impl FnOnce(&mut Activity, Instant)) {
        let mut a = self.activity.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        f(&mut a, now);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch(|a, now| {
                a.last = now;
                a.busy_since.get_or_insert(now);
            });
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        match &poll {
            Poll::Ready(Ok(n)) if *n > 0 => self.touch(|a, now| {
                a.last = now;
                a.busy_since = None;
                a.stalled_since = None;
            }),
            Poll::Pending => self.touch(|a, now| {
                a.stalled_since.get_or_insert(now);
            }),
            _ => {}
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves when the connection has overstayed one of its limits.
async fn overstayed(activity: Arc<Mutex<Activity>>, request_timeout: Duration) -> &'static str {
    let tick = (request_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let a = activity.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if a.busy_since.is_some_and(|t| now - t > request_timeout) {
            return "request not complete within the request timeout";
        }
        if a.stalled_since.is_some_and(|t| now - t > request_timeout) {
            return "client does not read the answer";
        }
        if now - a.last > IDLE_TIMEOUT {
            return "idle";
        }
    }
}

/// The HTTP server task: it owns the listening socket and serves `app`.
pub struct Server {
    pub listener: TcpListener,
    pub app: App,
}

impl Server {
    /// Serves until `stop`; then stops accepting and lets open requests
    /// finish (at most one request timeout).
    pub async fn run(self, stop: CancellationToken) -> std::io::Result<()> {
        serve(self.listener, self.app, stop).await
    }
}

async fn serve(listener: TcpListener, app: App, stop: CancellationToken) -> std::io::Result<()> {
    let limit = app.state.config().web.max_connections;
    let slots = Arc::new(Semaphore::new(limit));
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit.map_err(std::io::Error::other)?,
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    debug!("accept: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(reason) = connection(stream, app, stop).await {
                debug!(%peer, "connection closed: {reason}");
            }
            drop(permit);
        });
    }
    // Give in-flight requests their time, not more.
    let grace = app.state.config().web.request_timeout;
    let _ = tokio::time::timeout(grace, slots.acquire_many(limit as u32)).await;
    Ok(())
}

async fn connection(stream: TcpStream, app: App, stop: CancellationToken) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let timeout = app.state.config().web.request_timeout;
    let activity = Arc::new(Mutex::new(Activity {
        last: Instant::now(),
        busy_since: None,
        stalled_since: None,
    }));
    let watched = Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    };
    let tls = app.web.security().tls.clone();
    let router = super::router(app);
    match tls {
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let tls_stream = tokio::time::timeout(timeout, acceptor.accept(watched))
                .await
                .map_err(|_| "TLS handshake timed out".to_string())?
                .map_err(|e| format!("TLS handshake: {e}"))?;
            drive(TokioIo::new(tls_stream), router, activity, timeout, stop).await
        }
        None => drive(TokioIo::new(watched), router, activity, timeout, stop).await,
    }
}

async fn drive<I>(
    io: I,
    router: axum::Router,
    activity: Arc<Mutex<Activity>>,
    timeout: Duration,
    stop: CancellationToken,
) -> Result<(), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result.map_err(|e| e.to_string()),
        reason = overstayed(activity, timeout) => Err(reason.to_string()),
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(timeout, conn).await
                .map_err(|_| "shutdown".to_string())?
                .map_err(|e| e.to_string())
        }
    }
}
