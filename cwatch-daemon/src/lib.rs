/*!
cwatch: follows TCP sockets into CLOSE_WAIT in the kernel, names their owner,
ages them and serves Prometheus metrics.

This is the one map of the crate. The daemon's stages follow the data's
path, each importing only those before it:

| module | stage |
|---|---|
| [`clock`] | where "now" comes from (CLOCK_BOOTTIME, injectable) |
| [`text`] | names as data: exact bytes for /metrics and JSON, control characters escaped for people |
| [`table`] | the sockets in CLOSE_WAIT by cookie, dead sockets held, gauges kept up to date; pure logic, no I/O |
| [`sites`] | leak provenance as data: the site and stack of each socket whose connect() was captured, counts per site |
| [`config`] | the validated configuration: defaults, TOML file, value parsers, filters and label settings |
| [`telemetry`] | what the stages count as they work |
| [`probe`] | mounts, BTF offsets, loading and attaching the eBPF object, the pin directory and its pins, the kernel maps |
| [`state`] | what the tasks share: config, clock, table, telemetry, probes, progress |
| [`intake`] | the ring buffer's events applied to the table |
| [`owners`] | fd holders from a proc root (injectable), their refresh, owner labels |
| [`kernel_view`] | the kernel's own socket table through sock_diag, in every network namespace (and `SOCK_DESTROY`, for `cwatch reap` only) |
| [`reconcile`] | the periodic diff of table and kernel maps against that view |
| [`provenance`] | connect-time stack samples of leaked sockets taken from the kernel, unwound and symbolized on a thread of their own |
| [`export`] | series, filters, series limits, /metrics rendering, self-metrics, fd gauges of leaking processes, the checked count of reaped sockets |
| [`http`] | the endpoints, the accept loop, auth and TLS; [`http::wire`] is what the client reads |
| [`daemon`] | running as a service: tasks and shutdown, SIGHUP, notices, sd_notify, capabilities per thread and where each kind of work runs, heap, logging |
| [`cli`] | the command line on top: clap types, flags into config, `ls`, `reap`, `doctor`, exit codes |

The client (`cli`) depends on the daemon's wire types, never the reverse.
Under test, `fuzz` feeds every parser of outside input hostile bytes.
*/
pub mod cli;
pub(crate) mod clock;
pub mod config;
pub mod daemon;
pub(crate) mod export;
#[cfg(test)]
mod fuzz;
pub(crate) mod http;
pub(crate) mod intake;
pub(crate) mod kernel_view;
pub(crate) mod owners;
pub(crate) mod probe;
pub(crate) mod provenance;
pub(crate) mod reconcile;
pub(crate) mod sites;
pub(crate) mod state;
pub(crate) mod table;
pub(crate) mod telemetry;
pub mod text;
