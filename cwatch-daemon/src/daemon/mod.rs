/*!
Running as a service: [`main`] starts every task, reports ready, and stops
them all on SIGTERM/SIGINT or when one fails; [`reload`] is the SIGHUP path,
[`notices`] the leak lines in the journal, [`watch`] the kernel's watch
list, [`service`] sd_notify, [`caps`] which capabilities each thread keeps,
[`threads`] where each kind of work runs, [`heap`] what malloc is told,
[`logging`] the tracing setup.

Every task is a value that owns what it works on (the ring for intake, the
listener for the server, the suspects for reconciliation, the work queue for
attribution) and runs until one shared cancellation token fires. The async
ones live in one `JoinSet`; the ones that read other processes' `/proc` or
enter namespaces run on threads of their own that keep the capabilities
that takes (see [`caps`]), and the HTTP server on a runtime whose threads
hold none. Stopping is the same for each: cancel, then join — for at most
[`STOP_GRACE`]: a reconciliation pass or a `/proc` walk in progress is not
waited for (the process ends, and the kernel detaches the programs with
it), so SIGTERM ends the daemon within a second.
*/
pub mod caps;
pub mod heap;
pub mod logging;
pub mod notices;
pub mod reload;
pub mod service;
pub mod threads;
pub mod watch;

use std::{
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use caps::Role;
use tokio::{runtime::Handle, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    clock::BootClock,
    config::Config,
    export::Exporter,
    http::{self, server::Server, webconfig::WebSecurity},
    intake::{Intake, kernel_log, young::Young},
    owners::{Attribution, ProcRoot, labels::LabelReader},
    probe::{
        self,
        pindir::{self, Claim, InUse},
    },
    reconcile::{Reconciler, Suspects},
    state::State,
    telemetry::Source,
};

pub use reload::Reloader;

/// How long stopping waits for the tasks to end.
pub const STOP_GRACE: Duration = Duration::from_millis(500);
/// How long each runtime is then given for what is left on it.
const RUNTIME_GRACE: Duration = Duration::from_millis(100);

/// Mounts bpffs and tracefs where they are missing (logged), then claims
/// the pin directory (see [`pindir`]); `Err` when another daemon has it
/// (the caller exits 2).
pub fn claim_pin_dir(config: &Config) -> Result<Claim, InUse> {
    probe::mounts::ensure_all();
    pindir::claim(config.pin_dir.as_deref())
}

/// Runs the daemon on the calling thread until SIGINT or SIGTERM: serves
/// HTTP at once (503 on /healthz until ready), loads and attaches the
/// probes, reconciles once, then reports ready. `claim` says where to pin
/// (and holds the pin directory); `reloader` re-reads the configuration on
/// SIGHUP.
pub fn main(
    config: Config,
    web: WebSecurity,
    claim: Claim,
    reloader: Option<Reloader>,
) -> anyhow::Result<()> {
    let http = threads::runtime(Role::Http).context("starting the HTTP runtime")?;
    let rt = threads::runtime(Role::Runtime).context("starting the runtime")?;
    let result = rt.block_on(run(config, web, &claim, reloader, http.handle()));
    rt.shutdown_timeout(RUNTIME_GRACE);
    http.shutdown_timeout(RUNTIME_GRACE);
    drop(claim);
    result
}

async fn run(
    config: Config,
    web: WebSecurity,
    claim: &Claim,
    reloader: Option<Reloader>,
    http_rt: &Handle,
) -> anyhow::Result<()> {
    let listener = {
        let _on = http_rt.enter();
        http::server::listen(config.listen)
    }
    .with_context(|| format!("cannot listen on {}", config.listen))?;
    let listen = listener.local_addr()?;
    let (tls, auth) = (web.tls.is_some(), !web.users.is_empty());
    let state = Arc::new(State::new(config, Box::new(BootClock)));
    let telemetry = &state.telemetry;
    telemetry.set_reconcile_interval(state.config().reconcile_interval);
    telemetry.persistence(claim.persistent());
    let proc = ProcRoot::real().counting_failures(telemetry.source_counter(Source::Procfs));
    let cancel = CancellationToken::new();
    let mut privileged: Vec<JoinHandle<()>> = Vec::new();
    let (label_reader, labels) = LabelReader::new(proc.clone());
    let label_waker = label_reader.waker();
    let stop = cancel.clone();
    privileged.push(threads::spawn(Role::Labels, move || {
        label_reader.run(&stop)
    })?);
    let app = http::App {
        state: Arc::clone(&state),
        exporter: Arc::new(Exporter::with_label_reader(proc.clone(), labels)),
        web: Arc::new(http::Web::new(web)),
    };
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
    // The label reader blocks until a request comes: woken once to see the
    // cancel.
    let woken = cancel.clone();
    tasks.spawn(ok(async move {
        woken.cancelled().await;
        label_waker.wake();
    }));
    let server = Server {
        listener,
        app: app.clone(),
    };
    tasks.spawn_on(named("HTTP server", server.run(cancel.clone())), http_rt);
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

    let started = start(&state, &proc, claim, &cancel, &mut tasks, &mut privileged).await;
    let result = match started {
        Ok(()) => wait(&mut tasks).await,
        Err(err) => Err(err),
    };
    service::stopping();
    cancel.cancel();
    let deadline = Instant::now() + STOP_GRACE;
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    while privileged.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy: Vec<&str> = privileged
        .iter()
        .filter(|t| !t.is_finished())
        .filter_map(|t| t.thread().name())
        .collect();
    drop(state.take_probes());
    if busy.is_empty() && tasks.is_empty() {
        info!("stopped; probes detached");
    } else {
        info!(
            still_working = ?busy,
            "stopped without waiting for work in progress; the probes detach as the process exits"
        );
    }
    result
}

/// Loads and attaches the probes, reconciles once, starts intake,
/// attribution and reconciliation, gives up the main thread's capabilities
/// and reports ready. The holders of the sockets found are looked up after:
/// the first pass asks for a walk of `/proc`, which the attribution thread
/// starts with (at a million sockets it takes seconds; until it is done
/// their gauges count them under `pid=""`, `comm="[unknown]"`).
async fn start(
    state: &Arc<State>,
    proc: &ProcRoot,
    claim: &Claim,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    privileged: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<()> {
    let config = state.config();
    let options = probe::LoadOptions {
        pin_dir: claim.dir(),
        pin_dir_created: claim.created(),
        ring_bytes: config.ring_buffer_size,
        young_entries: config.young_sockets,
        sample_entries: config.stack_samples,
        btf: config.kernel_btf.clone(),
        log_level: kernel_log::kernel_level(tracing::level_filters::LevelFilter::current()),
    };
    let (probes, ring) = threads::run_on(Role::Start, move || probe::load(&options)).await??;
    let probes = Arc::new(probes);
    state.set_probes(Arc::clone(&probes));
    if let Some(log) = kernel_log::start(&probes, state.telemetry.registry()) {
        tasks.spawn(ok(log.run(cancel.clone())));
    }
    let (attribution, owners) = Attribution::new(Arc::clone(state), proc.clone());
    let intake = Intake {
        ring,
        state: Arc::clone(state),
        owners: owners.clone(),
    };
    tasks.spawn(named("event intake", intake.run(cancel.clone())));
    let young = Young {
        state: Arc::clone(state),
        probes: Arc::clone(&probes),
        owners: owners.clone(),
        ephemeral: proc.ephemeral_ports(),
        own_netns: crate::kernel_view::netns::own_inode(),
    };
    let watch = watch::Task {
        state: Arc::clone(state),
        probes: Arc::clone(&probes),
        proc: proc.clone(),
    };
    let mut reconciler = Reconciler {
        state: Arc::clone(state),
        probes,
        owners,
        proc: proc.clone(),
        suspects: Suspects::default(),
        deferred: None,
    };
    // Attribution runs already: the walk the first pass asks for overlaps
    // the rest of that pass.
    let stop = cancel.clone();
    privileged.push(threads::spawn(Role::Owners, move || attribution.run(stop))?);
    let reconciler = threads::run_on(Role::Start, move || {
        reconciler.pass()?;
        reconciler.state.telemetry.reconciled(true);
        heap::trim();
        anyhow::Ok(reconciler)
    })
    .await??;
    privileged.push(threads::spawn_runtime(
        Role::Reconcile,
        reconciler.run(cancel.clone()),
    )?);
    // Dropped at the cancel: the thread's wait between passes ends at once.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let dropped = cancel.clone();
    tasks.spawn(ok(async move {
        dropped.cancelled().await;
        drop(stop_tx);
    }));
    let provenance = crate::provenance::Task {
        state: Arc::clone(state),
        probes: Arc::clone(&watch.probes),
        proc: proc.path(""),
        stop: stop_rx,
    };
    let stop = cancel.clone();
    privileged.push(threads::spawn(Role::Owners, move || provenance.run(stop))?);
    tasks.spawn(ok(young.run(cancel.clone())));
    tasks.spawn(ok(watch.run(cancel.clone())));
    give_up_capabilities();
    state.set_ready();
    info!("ready: probes attached, first reconciliation done");
    service::ready("watching TCP sockets in CLOSE_WAIT");
    if let Some(watchdog) = service::watchdog(cancel.clone()) {
        tasks.spawn(ok(watchdog));
    }
    Ok(())
}

/// Every thread that needs a capability exists: the main thread drops all
/// of its own, and the daemon checks that no thread holds more than its
/// role allows.
fn give_up_capabilities() {
    if let Err(err) = caps::limit_this_thread(Role::Main.keeps()) {
        tracing::error!("could not drop the main thread's capabilities: {err}");
    }
    let over = caps::over_their_role();
    if over.is_empty() {
        let kept: Vec<String> = [Role::Owners, Role::Labels, Role::Reconcile]
            .iter()
            .map(|r| {
                format!(
                    "{} {:?}",
                    r.thread_name(),
                    caps::names(caps::mask(r.keeps()))
                )
            })
            .collect();
        info!(
            kept = kept.join(", "),
            "dropped every capability but these, on these threads only (HTTP and runtime threads hold none)"
        );
    } else {
        for line in over {
            tracing::error!("capabilities: {line}");
        }
    }
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
