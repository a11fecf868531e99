/*!
Talking to the service manager (`Type=notify` in systemd): `READY=1` once the
probes are attached and the first reconciliation is done (the moment
`/healthz` turns 200), `WATCHDOG=1` every half watchdog period while the
daemon runs when the manager asks for it (`WATCHDOG_USEC`, `WatchdogSec=` in
the unit), and `STOPPING=1` when a shutdown begins.

Without `NOTIFY_SOCKET` every call does nothing. A failure to notify is
logged and never stops the daemon: the manager's timeouts then say the rest.
*/
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Tells the manager the daemon is ready, with a one-line status.
pub fn ready(status: &str) {
    send(
        &[NotifyState::Ready, NotifyState::Status(status)],
        "READY=1",
    );
}

/// Tells the manager a shutdown has begun.
pub fn stopping() {
    send(
        &[NotifyState::Stopping, NotifyState::Status("stopping")],
        "STOPPING=1",
    );
}

/// The interval between watchdog pings: half the manager's watchdog period
/// (`WATCHDOG_USEC`, only when `WATCHDOG_PID` is unset or ours), as
/// sd_watchdog_enabled(3) recommends. `None` when no watchdog is asked for.
pub fn watchdog_interval() -> Option<Duration> {
    let period = sd_notify::watchdog_enabled()?;
    Some((period / 2).max(Duration::from_millis(1)))
}

/// The watchdog task, if the manager asked for one: it pings until
/// `cancel`.
pub fn watchdog(cancel: CancellationToken) -> Option<impl Future<Output = ()>> {
    let interval = watchdog_interval()?;
    info!(?interval, "systemd watchdog enabled: pinging");
    Some(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => send(&[NotifyState::Watchdog], "WATCHDOG=1"),
                () = cancel.cancelled() => return,
            }
        }
    })
}

fn send(states: &[NotifyState], what: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match sd_notify::notify(states) {
        Ok(()) => debug!("sd_notify: {what}"),
        Err(err) => warn!("sd_notify {what} failed: {err}"),
    }
}
