/*!
cwatch: follows TCP sockets into CLOSE_WAIT in the kernel, names their owner,
ages them and serves Prometheus metrics.

The data's path, one module per stage: [`probe`] (load and attach) →
[`intake`] (ring buffer events) → [`table`] (sockets by cookie) →
[`owners`] (fd holders from /proc) → [`reconcile`] (against sock_diag, in
every [`netns`], through [`sockdiag`]) → [`aging`] (ages, summaries; the
table keeps them up to date in [`gauges`], [`groups`]) →
[`series`] (filters, labels, [`cardinality`] limits) → [`metrics`] /
[`http`]. [`cli`] and [`config`] are the flags and the file, [`reload`] the
SIGHUP path, [`logging`] and [`notices`] what goes to the journal,
[`selfmetrics`] cwatch's own health, [`heap`] what malloc is told. [`ls`]
is the client side of `cwatch ls`,
[`doctor`] the preflight. Running as a service: [`caps`] (dropping
capabilities once ready) and [`service`] (sd_notify).
*/
pub mod aging;
pub mod caps;
pub mod cardinality;
pub mod cli;
pub mod commands;
pub mod config;
pub mod doctor;
pub mod filters;
pub mod gauges;
pub mod groups;
pub mod heap;
pub mod http;
pub mod intake;
pub mod kernel_view;
pub mod labels;
pub mod logging;
pub mod ls;
pub mod ls_direct;
pub mod metrics;
pub mod netns;
pub mod notices;
pub mod owners;
pub mod probe;
pub mod reconcile;
pub mod reload;
pub mod selfmetrics;
pub mod series;
pub mod service;
pub mod sockdiag;
pub mod table;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use anyhow::Context as _;
use cwatch_common::{Event, SockRecord};
use tokio::{net::TcpListener, sync::watch};
use tracing::info;

use crate::{
    aging::Clock,
    cli::RunArgs,
    config::Config,
    http::{
        api::ApiSocket,
        auth::AuthCache,
        query::{Cursor, SocketQuery},
        webconfig::WebSecurity,
    },
    metrics::KernelCounters,
    probe::Probes,
    series::{Families, SeriesBuilder},
    table::SocketTable,
};

/// State shared by the tasks and the HTTP handlers.
pub struct Shared {
    /// Replaced whole on SIGHUP; read it through [`Shared::config`].
    config: RwLock<Arc<Config>>,
    web: RwLock<Arc<WebSecurity>>,
    pub auth_cache: AuthCache,
    pub metrics: metrics::Metrics,
    pub clock: Box<dyn Clock>,
    pub owners: owners::Handle,
    table: Mutex<SocketTable>,
    series: Mutex<SeriesBuilder>,
    probes: Mutex<Option<Probes>>,
    ready: AtomicBool,
    /// CLOCK_BOOTTIME ns when the last completed drain of the ring began:
    /// every event recorded before it has been read (or was lost).
    drained_ns: AtomicU64,
}

impl Shared {
    pub fn new(config: Config, clock: Box<dyn Clock>) -> Self {
        Self {
            config: RwLock::new(Arc::new(config)),
            web: RwLock::new(Arc::new(WebSecurity::default())),
            auth_cache: AuthCache::default(),
            metrics: metrics::Metrics::new(),
            clock,
            owners: owners::Handle::default(),
            table: Mutex::new(SocketTable::new()),
            series: Mutex::new(SeriesBuilder::default()),
            probes: Mutex::new(None),
            ready: AtomicBool::new(false),
            drained_ns: AtomicU64::new(0),
        }
    }

    /// The configuration now in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    /// TLS and basic auth now in force.
    pub fn web_security(&self) -> Arc<WebSecurity> {
        Arc::clone(&self.web.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_web_security(&self, web: WebSecurity) {
        *self.web.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(web);
        self.auth_cache.clear();
    }

    fn lock_series(&self) -> MutexGuard<'_, SeriesBuilder> {
        self.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The per-process and per-peer series as configured, now.
    pub fn families(&self) -> Families {
        let config = self.config();
        let now = self.clock.now_ns();
        let mut table = self.lock_table();
        self.lock_series().build(&mut table, now, &config)
    }

    /// The /metrics text; `started` is when the scrape began.
    pub fn render_metrics(&self, started: Instant) -> String {
        let config = self.config();
        let families = self.families();
        let kernel = self.kernel_counters();
        let table_len = self.lock_table().len();
        if let Some(probes) = self.lock_probes().as_ref() {
            self.metrics.own.programs(&probes.program_stats());
            self.metrics
                .own
                .map_fill("close_wait", table_len, probes.records_capacity());
        }
        let body =
            self.metrics
                .render_families(&families, &config.labels.label_names(), kernel.as_ref());
        self.metrics.own.scrape_took(started.elapsed());
        body
    }

    /// One page of `/api/v1/sockets`.
    pub fn select_sockets(&self, query: &SocketQuery) -> (Vec<ApiSocket>, Option<Cursor>) {
        let config = self.config();
        let now = self.clock.now_ns();
        let table = self.lock_table();
        let mut series = self.lock_series();
        http::api::select(&table, now, config.leak_after, query, |e| {
            series.keeps(e, &config)
        })
    }

    /// The table; a panic elsewhere while holding it does not poison it for
    /// good (the data is a cache the next reconciliation repairs).
    pub fn lock_table(&self) -> MutexGuard<'_, SocketTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_probes(&self) -> MutexGuard<'_, Option<Probes>> {
        self.probes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn drained_ns(&self) -> u64 {
        self.drained_ns.load(Ordering::Acquire)
    }

    /// Intake: a drain that began at `ns` is complete.
    pub fn set_drained(&self, ns: u64) {
        self.drained_ns.fetch_max(ns, Ordering::AcqRel);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Kernel counter totals, `None` before the probes are loaded or when the
    /// map cannot be read (logged).
    pub fn kernel_counters(&self) -> Option<KernelCounters> {
        let probes = self.lock_probes();
        match probes.as_ref()?.counter_totals() {
            Ok(totals) => Some(totals),
            Err(err) => {
                tracing::warn!("reading kernel counters: {err}");
                None
            }
        }
    }

    /// A snapshot of the kernel's CLOSE_WAIT map.
    pub fn kernel_records(&self) -> anyhow::Result<HashMap<u64, SockRecord>> {
        let probes = self.lock_probes();
        let probes = probes.as_ref().context("probes are not loaded")?;
        probes
            .records_snapshot()
            .context("reading the kernel CLOSE_WAIT map")
    }

    /// A snapshot of the kernel's LINGER map (sockets that left CLOSE_WAIT
    /// and are not destroyed yet).
    pub fn linger_records(&self) -> anyhow::Result<HashMap<u64, Event>> {
        let probes = self.lock_probes();
        let probes = probes.as_ref().context("probes are not loaded")?;
        probes
            .linger_snapshot()
            .context("reading the kernel LINGER map")
    }

    /// Inserts `add` into the kernel's CLOSE_WAIT map and deletes `remove`.
    pub fn update_kernel_records(&self, add: &[SockRecord], remove: &[u64]) -> anyhow::Result<()> {
        let mut probes = self.lock_probes();
        let probes = probes.as_mut().context("probes are not loaded")?;
        for rec in add {
            probes
                .records
                .insert(rec.cookie, *rec, 0)
                .context("re-inserting a CLOSE_WAIT record")?;
        }
        for cookie in remove {
            // Gone already (the kernel raced us) is fine.
            let _ = probes.records.remove(cookie);
        }
        Ok(())
    }

    /// Deletes `cookies` from the kernel's LINGER map.
    pub fn forget_linger(&self, cookies: &[u64]) -> anyhow::Result<()> {
        let mut probes = self.lock_probes();
        let probes = probes.as_mut().context("probes are not loaded")?;
        for cookie in cookies {
            let _ = probes.linger.remove(cookie);
        }
        Ok(())
    }
}

/// Runs the daemon until SIGINT or SIGTERM: serves HTTP at once (503 on
/// /healthz until ready), loads and attaches the probes, reconciles once,
/// then reports ready. On return every program is detached and every map
/// closed.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let web = http::webconfig::load(config.web.config_file.as_deref())?;
    run_with(config, web, None).await
}

/// [`run`] with the web config already loaded (`main` checks it before
/// anything starts), re-reading `args` (its `--config` under its flags) on
/// SIGHUP.
pub async fn run_with(
    config: Config,
    web: WebSecurity,
    args: Option<RunArgs>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let listen = listener.local_addr()?;
    let tls = web.tls.is_some();
    let auth = !web.users.is_empty();
    let shared = Arc::new(Shared::new(config, Box::new(aging::BootClock)));
    shared.set_web_security(web);
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(http::server::serve(listener, Arc::clone(&shared), stop_rx));
    info!(%listen, tls, basic_auth = auth, "serving /metrics, /healthz, /api/v1/sockets");
    let reloader = tokio::spawn(reload::run(Arc::clone(&shared), args));
    let notices = tokio::spawn(notices::run(Arc::clone(&shared)));
    let trimmer = tokio::spawn(heap::run());

    let result = start_and_wait(&shared).await;
    reloader.abort();
    notices.abort();
    trimmer.abort();
    let _ = stop_tx.send(true);
    let _ = server.await;
    // Detach everything before returning, whatever happened.
    shared.lock_probes().take();
    info!("stopped; probes detached");
    result
}

async fn start_and_wait(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let options = probe::LoadOptions {
        pin_dir: shared.config().pin_dir.clone(),
        ring_bytes: shared.config().ring_buffer_size,
    };
    let mut probes = tokio::task::spawn_blocking(move || probe::load(&options))
        .await
        .context("probe loader task")??;
    let events = probes.events.take().context("ring buffer already taken")?;
    *shared.lock_probes() = Some(probes);
    let mut intake = tokio::spawn(intake::run(events, Arc::clone(shared)));
    let pass = Arc::clone(shared);
    let suspects = tokio::task::spawn_blocking(move || {
        let mut suspects = reconcile::Suspects::default();
        reconcile::run_once(&pass, &mut suspects)?;
        owners::walk_now(&pass);
        heap::trim();
        anyhow::Ok(suspects)
    })
    .await
    .context("first reconciliation task")??;
    owners::Handle::start(shared).context("starting the attribution thread")?;
    let reconciler = tokio::spawn(reconcile::run(Arc::clone(shared), suspects));
    drop_capabilities();
    shared.ready.store(true, Ordering::Release);
    info!("ready: probes attached, first reconciliation done");
    service::ready("watching TCP sockets in CLOSE_WAIT");
    let watchdog = service::spawn_watchdog();

    let outcome = tokio::select! {
        signal = shutdown_signal() => signal,
        ended = &mut intake => intake_ended(ended),
    };
    service::stopping();
    intake.abort();
    reconciler.abort();
    shared.owners.stop();
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    outcome
}

/// Everything privileged is done (programs loaded and attached, pins
/// opened, first reconciliation): keep only [`caps::KEPT`].
fn drop_capabilities() {
    match caps::drop_to_kept() {
        Ok(mask) => info!(kept = ?caps::names(mask), "dropped every other capability"),
        Err(err) => tracing::error!("could not drop capabilities: {err}"),
    }
}

fn intake_ended(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match joined {
        Ok(Ok(())) => anyhow::bail!("event intake stopped"),
        Ok(Err(err)) => Err(err.context("event intake failed")),
        Err(err) => Err(anyhow::anyhow!("event intake task failed: {err}")),
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    Ok(())
}
