/*!
The accept loop: connections are accepted as they come and held open up to
a limit, the longest-waiting unserved one closed to make room
([`super::admission`]); at most `web.max_connections` requests are served
at once (more wait for a turn, within the request timeout). Each
connection is optionally wrapped in TLS, and watched so that no client can
hold one forever:

- its first byte must come within `web.request_timeout` of the connect;
- a request must arrive whole (its head at most 16 KiB), and its answer be
  taken, within `web.request_timeout` of its first byte (slowloris,
  stalled readers);
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

use super::{
    App,
    admission::{self, Activity, Registry},
};

/// How long a keep-alive connection may sit idle between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

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

/// Connections the kernel queues for `accept()`: room for a burst of
/// connects (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

/// How long the kernel holds a connection that has sent nothing before
/// handing it to `accept()` (TCP_DEFER_ACCEPT, in seconds).
const DEFER_ACCEPT_SECS: libc::c_int = 10;

/// The listening socket, with a backlog for bursts of connects.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Connections are handed over only once they send something
/// (TCP_DEFER_ACCEPT), so thousands of idle connects wait in the kernel,
/// not in the daemon, and never queue ahead of a scraper that sent its
/// request; one the kernel hands over anyway once the period is over has
/// sent nothing for that long and is closed at once. Whether it could be
/// set.
fn defer_accept(listener: &TcpListener) -> bool {
    use std::os::fd::AsRawFd as _;
    let secs = DEFER_ACCEPT_SECS;
    // SAFETY: setsockopt on the listening socket we own, with a c_int value
    // that lives across the call and its exact size.
    let set = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const secs).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        debug!("TCP_DEFER_ACCEPT: {}", std::io::Error::last_os_error());
    }
    set == 0
}

/// Whether a byte waits on `stream` now (a peek, nothing read).
fn has_data(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut byte = 0u8;
    // SAFETY: recv into one byte we own, non-blocking, peeking only.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
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
    admission::raise_fd_limit();
    let deferred = defer_accept(&listener);
    let served = app.state.config().web.max_connections;
    let open = admission::open_limit(served);
    let slots = Arc::new(Semaphore::new(open));
    let requests = Arc::new(Semaphore::new(served));
    let registry = Arc::new(Registry::default());
    // One router for every connection (a clone is a reference count).
    let router = served_in_turn(super::router(app.clone()), Arc::clone(&requests));
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: make room, back off, go on.
                    debug!("accept: {err}");
                    registry.evict_one(Instant::now());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // At the limit, the longest-waiting connection makes room; its slot
        // comes back as soon as its task has closed it (the next accept
        // waits for that, which paces a flood).
        if slots.available_permits() == 0 && registry.evict_one(Instant::now()) {
            debug!(open, "connection limit: closed the longest-waiting one");
        }
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit.map_err(std::io::Error::other)?,
        };
        let activity = Arc::new(Mutex::new(Activity::new(Instant::now())));
        let admitted = registry.admit(Arc::clone(&activity));
        let conn = Connection {
            deferred,
            app: app.clone(),
            router: router.clone(),
            activity,
            evict: admitted.evict.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            if let Err(reason) = conn.run(stream).await {
                debug!(%peer, "connection closed: {reason}");
            }
            drop((admitted, permit));
        });
    }
    // Give in-flight requests their time, not more.
    let grace = app.state.config().web.request_timeout;
    let _ = tokio::time::timeout(grace, slots.acquire_many(open as u32)).await;
    Ok(())
}

/// One accepted connection and what it answers to.
struct Connection {
    /// Handed over by TCP_DEFER_ACCEPT: with data, or after sending nothing.
    deferred: bool,
    app: App,
    router: axum::Router,
    activity: Arc<Mutex<Activity>>,
    /// Cancelled when the connection is closed to make room.
    evict: CancellationToken,
    stop: CancellationToken,
}

impl Connection {
    async fn run(self, stream: TcpStream) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        if self.deferred && !has_data(&stream) {
            return Err("sent nothing within the defer period".into());
        }
        let timeout = self.app.state.config().web.request_timeout;
        // Nothing is allocated for a connection until it sends something.
        tokio::select! {
            ready = tokio::time::timeout(timeout, stream.readable()) => match ready {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("no request within the request timeout".into()),
            },
            () = self.evict.cancelled() => return Err("closed to make room".into()),
            () = self.stop.cancelled() => return Ok(()),
        }
        // Boxed: the (large) TLS and HTTP state is allocated only now.
        Box::pin(self.serve(stream, timeout)).await
    }

    async fn serve(self, stream: TcpStream, timeout: Duration) -> Result<(), String> {
        let watched = Watched {
            inner: stream,
            activity: Arc::clone(&self.activity),
        };
        let tls = self.app.web.security().tls.clone();
        // Each request carries its connection's activity to the handlers'
        // turn-taking.
        let activity = Arc::clone(&self.activity);
        let router = tower::ServiceExt::map_request(
            self.router,
            move |mut r: hyper::Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(Arc::clone(&activity));
                r
            },
        );
        let limits = Limits {
            activity: self.activity,
            timeout,
            evict: self.evict,
            stop: self.stop,
        };
        match tls {
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let tls_stream = tokio::select! {
                    accepted = tokio::time::timeout(timeout, acceptor.accept(watched)) => accepted
                        .map_err(|_| "TLS handshake timed out".to_string())?
                        .map_err(|e| format!("TLS handshake: {e}"))?,
                    () = limits.evict.cancelled() => return Err("closed to make room".into()),
                };
                drive(TokioIo::new(tls_stream), router, limits).await
            }
            None => drive(TokioIo::new(watched), router, limits).await,
        }
    }
}

/// `router`, each request waiting for one of `requests` (at most
/// `web.max_connections` served at once) and marking its connection (its
/// activity, in the request's extensions) as being served, so that it is
/// never the one closed to make room.
fn served_in_turn(router: axum::Router, requests: Arc<Semaphore>) -> axum::Router {
    router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let requests = Arc::clone(&requests);
            let activity = request.extensions().get::<Arc<Mutex<Activity>>>().cloned();
            async move {
                let set = |serving| {
                    if let Some(a) = &activity {
                        a.lock().unwrap_or_else(|e| e.into_inner()).serving = serving;
                    }
                };
                // Waiting for a turn, it may still be closed to make room.
                let turn = requests.acquire_owned().await;
                set(true);
                let response = next.run(request).await;
                drop(turn);
                set(false);
                response
            }
        },
    ))
}

/// What ends a connection besides its client.
struct Limits {
    activity: Arc<Mutex<Activity>>,
    timeout: Duration,
    evict: CancellationToken,
    stop: CancellationToken,
}

async fn drive<I, S>(io: I, router: S, limits: Limits) -> Result<(), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(admission::MAX_HEAD);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result.map_err(|e| e.to_string()),
        reason = overstayed(limits.activity, limits.timeout) => Err(reason.to_string()),
        () = limits.evict.cancelled() => Err("closed to make room".into()),
        () = limits.stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(limits.timeout, conn).await
                .map_err(|_| "shutdown".to_string())?
                .map_err(|e| e.to_string())
        }
    }
}
