/*!
Running as a service: [`run`] starts every task, reports ready, and stops
them all on SIGTERM/SIGINT or when one fails; [`reload`] is the SIGHUP path,
[`notices`] the leak lines in the journal, [`service`] sd_notify, [`caps`]
the capability sets and the drop once ready, [`heap`] what malloc is told,
[`logging`] the tracing setup.

Every task is a value that owns what it works on (the ring for intake, the
listener for the server, the suspects for reconciliation, the work queue for
attribution) and runs until one shared cancellation token fires; they all
live in one `JoinSet`, so stopping is the same for each: cancel, then join.
*/
pub mod caps;
pub mod heap;
pub mod logging;
pub mod notices;
pub mod reload;
pub mod service;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    clock::BootClock,
    config::Config,
    export::Exporter,
    http::{self, server::Server, webconfig::WebSecurity},
    intake::Intake,
    owners::{self, Attribution, ProcRoot},
    probe,
    reconcile::{Reconciler, Suspects},
    state::State,
    telemetry::Source,
};

pub use reload::Reloader;

/// Runs the daemon until SIGINT or SIGTERM: serves HTTP at once (503 on
/// /healthz until ready), loads and attaches the probes, reconciles once,
/// then reports ready. On return every program is detached and every map
/// closed. `reloader` re-reads the configuration on SIGHUP.
pub async fn run(
    config: Config,
    web: WebSecurity,
    reloader: Option<Reloader>,
) -> anyhow::Result<()> {
    let listener = http::server::listen(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let listen = listener.local_addr()?;
    let (tls, auth) = (web.tls.is_some(), !web.users.is_empty());
    let state = Arc::new(State::new(config, Box::new(BootClock)));
    let telemetry = &state.telemetry;
    telemetry.set_reconcile_interval(state.config().reconcile_interval);
    let proc = ProcRoot::real().counting_failures(telemetry.source_counter(Source::Procfs));
    let app = http::App {
        state: Arc::clone(&state),
        exporter: Arc::new(Exporter::new(proc.clone())),
        web: Arc::new(http::Web::new(web)),
    };
    let cancel = CancellationToken::new();
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let server = Server {
        listener,
        app: app.clone(),
    };
    tasks.spawn(named("HTTP server", server.run(cancel.clone())));
    info!(%listen, tls, basic_auth = auth, "serving /metrics, /healthz, /api/v1/sockets");
    let reload = reload::Task {
        state: Arc::clone(&state),
        web: Arc::clone(&app.web),
        reloader,
    };
    tasks.spawn(ok(reload.run(cancel.clone())));
    let notices = notices::Task {
        state: Arc::clone(&state),
        exporter: Arc::clone(&app.exporter),
    };
    tasks.spawn(ok(notices.run(cancel.clone())));
    tasks.spawn(ok(heap::run(cancel.clone())));

    let result = match start(&state, &proc, &cancel, &mut tasks).await {
        Ok(()) => wait(&mut tasks).await,
        Err(err) => Err(err),
    };
    service::stopping();
    cancel.cancel();
    while tasks.join_next().await.is_some() {}
    // Detach everything before returning, whatever happened.
    drop(state.take_probes());
    info!("stopped; probes detached");
    result
}

/// Loads and attaches the probes, reconciles once, starts intake,
/// attribution and reconciliation, drops capabilities and reports ready.
async fn start(
    state: &Arc<State>,
    proc: &ProcRoot,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let options = probe::LoadOptions {
        pin_dir: state.config().pin_dir.clone(),
        ring_bytes: state.config().ring_buffer_size,
        btf: state.config().kernel_btf.clone(),
    };
    let (probes, ring) = tokio::task::spawn_blocking(move || probe::load(&options))
        .await
        .context("probe loader task")??;
    let probes = Arc::new(probes);
    state.set_probes(Arc::clone(&probes));
    let intake = Intake {
        ring,
        state: Arc::clone(state),
    };
    tasks.spawn(named("event intake", intake.run(cancel.clone())));
    let (attribution, owners) = Attribution::new(Arc::clone(state), proc.clone());
    let mut reconciler = Reconciler {
        state: Arc::clone(state),
        probes,
        owners,
        proc: proc.clone(),
        suspects: Suspects::default(),
    };
    let (reconciler, attribution) = tokio::task::spawn_blocking(move || {
        reconciler.pass()?;
        reconciler.state.telemetry.reconciled(true);
        owners::walk_now(&reconciler.state, &reconciler.proc);
        // The walk just done answers the walk the first pass asked for.
        attribution.discard_queued();
        heap::trim();
        anyhow::Ok((reconciler, attribution))
    })
    .await
    .context("first reconciliation task")??;
    let worker_cancel = cancel.clone();
    tasks.spawn_blocking(move || {
        attribution.run(worker_cancel);
        Ok(())
    });
    tasks.spawn(ok(reconciler.run(cancel.clone())));
    drop_capabilities();
    state.set_ready();
    info!("ready: probes attached, first reconciliation done");
    service::ready("watching TCP sockets in CLOSE_WAIT");
    if let Some(watchdog) = service::watchdog(cancel.clone()) {
        tasks.spawn(ok(watchdog));
    }
    Ok(())
}

/// Until a signal (Ok) or a task that ends on its own (intake failing, the
/// server's socket erroring): that is an error.
async fn wait(tasks: &mut JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::select! {
        signal = shutdown_signal() => signal,
        ended = tasks.join_next() => match ended {
            Some(Ok(Ok(()))) => anyhow::bail!("a task stopped on its own"),
            Some(Ok(Err(err))) => Err(err),
            Some(Err(err)) => Err(anyhow::anyhow!("a task failed: {err}")),
            None => anyhow::bail!("no task left"),
        },
    }
}

/// A task that cannot fail, as one of the set.
async fn ok(task: impl Future<Output = ()>) -> anyhow::Result<()> {
    task.await;
    Ok(())
}

/// A task whose error names it.
async fn named<E>(
    what: &'static str,
    task: impl Future<Output = Result<(), E>>,
) -> anyhow::Result<()>
where
    E: Into<anyhow::Error>,
{
    task.await
        .map_err(|e| e.into().context(format!("{what} failed")))
}

/// Everything privileged is done (programs loaded and attached, pins
/// opened, first reconciliation): keep only [`caps::KEPT`].
fn drop_capabilities() {
    match caps::drop_to_kept() {
        Ok(mask) => info!(kept = ?caps::names(mask), "dropped every other capability"),
        Err(err) => tracing::error!("could not drop capabilities: {err}"),
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
