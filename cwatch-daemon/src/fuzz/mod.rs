/*!
Hostile input, by property: every parser that takes bytes from outside the
daemon is fed generated input — random bytes, near-valid documents with
random values, and valid ones mutated — and must never panic; what it
refuses gets one line that names the problem, and what it accepts must mean
what it says (round trips, invariants). `cargo fuzz` needs a nightly
toolchain; these are proptest loops in the unit suite instead.

| target | parser |
|---|---|
| [`config`] | the TOML config file, every flag through the real command line, filter rules, labels, sizes, durations |
| [`http`] | the web config YAML, the API query, cursors, peer filters, the `Authorization` header |
| [`kernel`] | ring buffer records decoded and applied to the table, sock_diag netlink replies |
| [`procfs`] | `/proc/<pid>/fd` links, `comm`, `stat` (procfs-core, through a fixture proc root), `cgroup`, the port range |

BTF lookups are fuzzed beside their hand-built blobs (`probe::tests`).

Each target runs proptest's default 256 cases (seconds in CI). For a long
run: `PROPTEST_CASES=100000 cargo test -p cwatch-daemon fuzz`; a failing
input is shrunk and printed, and is kept as a regression test beside the
target once fixed.
*/
mod config;
mod http;
mod kernel;
mod procfs;

use proptest::prelude::*;

/// Text an attacker (or a typo) might send: anything, printable ASCII,
/// control characters and the separators the parsers split on.
pub fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,40}",
        "[\\x00-\\x1f\\x7f:=,./\\-\\[\\]{}\"'\\\\ a-z0-9\u{80}-\u{10ffff}]{0,24}",
        proptest::collection::vec(
            prop_oneof![
                Just(":"),
                Just("-"),
                Just("/"),
                Just("."),
                Just("["),
                Just("]"),
                Just("\n"),
                Just("\u{1b}[31m"),
                Just("\u{0}"),
                Just("0"),
                Just("65535"),
                Just("65536"),
                Just("18446744073709551616"),
                Just("-1"),
                Just("ms"),
                Just("KiB"),
                Just("MiB"),
                Just("::1"),
                Just("127.0.0.1"),
                Just("ffff"),
                Just("é"),
                Just(" "),
            ],
            0..12
        )
        .prop_map(|parts| parts.concat()),
    ]
}

/// Asserts that an error, as stderr shows it, is one line with no control
/// character in it.
pub fn one_line(what: &str, err: &str) {
    let shown = crate::cli::commands::error_line(&err);
    assert!(
        !shown.chars().any(char::is_control),
        "{what}: error is not one clean line: {shown:?}"
    );
}
