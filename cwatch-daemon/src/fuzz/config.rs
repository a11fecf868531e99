//! The TOML config file and every flag: never a panic, errors on one line,
//! and whatever is accepted prints (`check-config`) as a file that reads
//! back to the same configuration.
use clap::Parser as _;
use proptest::prelude::*;

use super::{hostile_text, one_line};
use crate::{
    cli::{Cli, Command, resolve},
    config::{self, filters::FilterRule, labels::OwnerLabel, values},
};

const KEYS: &[&str] = &[
    "listen",
    "leak_after",
    "reconcile_interval",
    "reconcile_budget",
    "holders_refresh",
    "pin_dir",
    "ring_buffer_size",
    "log_level",
    "labels",
    "process_key",
    "max_process_series",
    "max_peer_series",
    "include",
    "exclude",
    "nonsense",
];

const WEB_KEYS: &[&str] = &["config_file", "request_timeout", "max_connections", "tls"];

/// Values that are near what each key takes.
fn value() -> impl Strategy<Value = String> {
    let good = prop_oneof![
        Just("\"127.0.0.1:9478\"".to_string()),
        Just("\"[::1]:0\"".to_string()),
        Just("\"5m\"".to_string()),
        Just("\"100ms\"".to_string()),
        Just("\"99ms\"".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"4KiB\"".to_string()),
        Just("\"1024MiB\"".to_string()),
        Just("\"2048MiB\"".to_string()),
        Just("\"info,cwatch_daemon=debug\"".to_string()),
        Just("[\"unit\", \"exe\", \"container\"]".to_string()),
        Just("[\"comm:sshd\", \"port:22\", \"peer_cidr:10.0.0.0/8\"]".to_string()),
        Just("\"comm\"".to_string()),
        Just("\"\"".to_string()),
        Just("\"none\"".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("9223372036854775807".to_string()),
        Just("1.5".to_string()),
        Just("true".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("{ a = 1 }".to_string()),
    ];
    prop_oneof![
        good,
        hostile_text().prop_map(|t| format!("{t:?}")),
        hostile_text().prop_map(|t| format!("'{t}'")),
        hostile_text().prop_map(|t| format!("[{t:?}, {t:?}]")),
        any::<i64>().prop_map(|n| n.to_string()),
        hostile_text(),
    ]
}

/// A document of known (and unknown) keys with near-valid values, a `[web]`
/// table sometimes, and now and then a raw hostile line.
fn document() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        8 => (proptest::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => hostile_text(),
    ];
    let web = proptest::collection::vec(
        (proptest::sample::select(WEB_KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        0..4,
    );
    (
        proptest::collection::vec(line, 0..8),
        proptest::option::of(web),
    )
        .prop_map(|(lines, web)| {
            let mut text = lines.join("\n");
            if let Some(web) = web {
                text += "\n[web]\n";
                text += &web.join("\n");
            }
            text
        })
}

/// What `check-config` would print reads back as the same configuration.
fn round_trips(c: &config::Config) {
    let printed = c.to_toml();
    let again = config::parse_file("printed", &printed)
        .unwrap_or_else(|e| panic!("check-config's output does not parse: {e}\n{printed}"));
    assert_eq!(
        &again, c,
        "check-config's output means another config:\n{printed}"
    );
}

proptest! {
    #[test]
    fn config_files_never_panic_and_accepted_ones_round_trip(text in prop_oneof![document(), hostile_text()]) {
        match config::parse_file("fuzz.toml", &text) {
            Ok(c) => round_trips(&c),
            Err(e) => {
                let e = e.to_string();
                one_line("config file", &e);
                prop_assert!(e.starts_with("config file fuzz.toml"), "{}", e);
            }
        }
    }

    #[test]
    fn every_flag_through_the_command_line(
        flags in proptest::collection::vec(
            (proptest::sample::select(&[
                "--listen", "--leak-after", "--reconcile-interval", "--holders-refresh",
                "--pin-dir", "--ring-buffer-size", "--log-level", "--label", "--process-key",
                "--max-process-series", "--max-peer-series", "--include", "--exclude",
                "--web.request-timeout", "--web.max-connections",
            ][..]), hostile_text()),
            0..6,
        )
    ) {
        let mut argv = vec!["cwatch".to_string(), "run".to_string()];
        for (flag, value) in &flags {
            argv.push(format!("{flag}={value}"));
        }
        match Cli::try_parse_from(&argv) {
            Ok(cli) => {
                let Command::Run(args) = cli.command else { panic!("not run") };
                match resolve::run_config(&args) {
                    Ok(c) => round_trips(&config::Config { source: None, ..c }),
                    Err(e) => one_line("run flags", &e.to_string()),
                }
            }
            // clap's usage errors span lines by design (usage, hint); its
            // first line names the flag and the value.
            Err(e) => prop_assert!(e.to_string().starts_with("error: "), "{}", e),
        }
    }

    #[test]
    fn value_parsers_refuse_in_one_line_and_mean_what_they_print(text in hostile_text()) {
        for (what, result) in [
            ("duration", values::parse_positive_duration(&text).map(|_| ())),
            ("min 100ms", values::parse_min_100ms(&text).map(|_| ())),
            ("log level", values::parse_log_level(&text).map(|_| ())),
            ("max connections", values::parse_max_connections(&text).map(|_| ())),
            ("process key", values::parse_process_key(&text).map(|_| ())),
        ] {
            if let Err(e) = result {
                one_line(what, &e);
            }
        }
        match values::parse_size(&text) {
            Ok(n) => prop_assert_eq!(values::parse_size(&values::format_size(n)), Ok(n)),
            Err(e) => one_line("size", &e),
        }
        match text.parse::<FilterRule>() {
            Ok(rule) => prop_assert_eq!(rule.to_string().parse::<FilterRule>(), Ok(rule)),
            Err(e) => one_line("filter rule", &e),
        }
        match text.parse::<OwnerLabel>() {
            Ok(label) => prop_assert_eq!(label.to_string().parse::<OwnerLabel>(), Ok(label)),
            Err(e) => one_line("label", &e),
        }
        if let Ok(d) = values::parse_duration(&text) {
            let printed = humantime::format_duration(d).to_string();
            prop_assert_eq!(values::parse_duration(&printed), Ok(d), "{}", printed);
        }
    }
}
