//! The command line over the config file over the defaults: every key and
//! flag, errors that name the file and the value, `cwatch ls`'s and
//! `cwatch reap`'s settings and flags.
use std::{path::PathBuf, time::Duration};

use clap::Parser as _;

use super::{
    Cli, Command, LsArgs, RunArgs,
    resolve::{ls_settings, run_config},
};
use crate::config::{
    Config,
    labels::ProcessKeyMode,
    parse_file,
    values::{format_cpu_share, parse_cpu_share, parse_size},
};

fn run_args(argv: &[&str]) -> Result<RunArgs, clap::Error> {
    let mut full = vec!["cwatch", "run"];
    full.extend_from_slice(argv);
    match Cli::try_parse_from(full)?.command {
        Command::Run(args) => Ok(args),
        other => panic!("asked for run, got {other:?}"),
    }
}

const FULL_FILE: &str = r#"
listen = "127.0.0.2:9000"
leak_after = "2m"
reconcile_interval = "5s"
log_level = "debug"
labels = ["unit", "exe"]
process_key = "comm"
max_process_series = 50
max_peer_series = 60
include = ["peer_cidr:10.0.0.0/8", "port:7000-7010"]
exclude = ["comm:sshd"]

[web]
config_file = "/etc/cwatch/web.yml"
request_timeout = "3s"
max_connections = 8
"#;

#[test]
fn every_setting_is_a_flag() {
    let args = run_args(&[
        "--log-level",
        "warn",
        "--label",
        "unit,container",
        "--label",
        "exe",
        "--process-key",
        "unit",
        "--max-process-series",
        "7",
        "--max-peer-series",
        "0",
        "--include",
        "peer_port:7000",
        "--exclude",
        "unit:sshd.service",
        "--exclude",
        "local_cidr:127.0.0.0/8",
        "--web.config.file",
        "/tmp/web.yml",
        "--web.request-timeout",
        "2s",
        "--web.max-connections",
        "3",
    ])
    .unwrap();
    let c = run_config(&args).unwrap();
    assert_eq!(c.log_level, "warn");
    assert!(c.labels.unit && c.labels.container && c.labels.exe);
    assert_eq!(c.labels.process_key, ProcessKeyMode::Unit);
    assert_eq!((c.max_process_series, c.max_peer_series), (7, 0));
    assert_eq!(c.filters.include.len(), 1);
    assert_eq!(c.filters.exclude.len(), 2);
    assert_eq!(
        c.web.config_file.as_deref(),
        Some(std::path::Path::new("/tmp/web.yml"))
    );
    assert_eq!(c.web.request_timeout, Duration::from_secs(2));
    assert_eq!(c.web.max_connections, 3);
}

#[test]
fn every_setting_is_a_file_key_and_check_config_round_trips() {
    let c = parse_file("full.toml", FULL_FILE).unwrap();
    assert_eq!(c.listen, "127.0.0.2:9000".parse().unwrap());
    assert_eq!(c.log_level, "debug");
    assert!(c.labels.unit && c.labels.exe && !c.labels.container);
    assert_eq!(c.labels.process_key, ProcessKeyMode::Comm);
    assert_eq!((c.max_process_series, c.max_peer_series), (50, 60));
    assert_eq!(c.filters.include[1].to_string(), "port:7000-7010");
    assert_eq!(c.web.max_connections, 8);
    let printed = c.to_toml();
    assert_eq!(
        parse_file("printed.toml", &printed).unwrap(),
        c,
        "{printed}"
    );
    let defaults = Config::default().to_toml();
    assert!(defaults.contains("leak_after = \"5m\""), "{defaults}");
    assert_eq!(parse_file("d.toml", &defaults).unwrap(), Config::default());
}

#[test]
fn bad_new_values_name_flag_or_key() {
    for (argv, needle) in [
        (&["--label", "cgroup"][..], "cgroup"),
        (&["--process-key", "tid"][..], "tid"),
        (&["--include", "host:x"][..], "host:x"),
        (&["--exclude", "peer_port:99999"][..], "99999"),
        (&["--web.max-connections", "0"][..], "--web.max-connections"),
        (
            &["--web.request-timeout", "0s"][..],
            "--web.request-timeout",
        ),
        (&["--log-level", "loud=="][..], "loud=="),
        (&["--max-peer-series", "-1"][..], "-1"),
    ] {
        let err = run_args(argv).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{argv:?}");
        let first = err.to_string().lines().next().unwrap().to_string();
        assert!(first.contains(needle), "{argv:?}: {first}");
    }
    for (text, needle) in [
        ("[web]\nmax_conections = 3\n", "max_conections"),
        ("labels = [\"pid\"]\n", "labels = \"pid\""),
        ("include = [\"port:x\"]\n", "include = \"port:x\""),
        ("process_key = \"tid\"\n", "process_key"),
        (
            "[web]\nrequest_timeout = \"never\"\n",
            "web.request_timeout",
        ),
        ("max_process_series = -3\n", "line 1"),
    ] {
        let err = parse_file("c.toml", text).unwrap_err().to_string();
        assert!(err.starts_with("config file c.toml: "), "{err}");
        assert!(err.contains(needle), "{text}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

#[test]
fn help_and_version_read_like_a_tool() {
    let err = Cli::try_parse_from(["cwatch", "--version"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
    assert!(err.to_string().contains(env!("CARGO_PKG_VERSION")));
    let help = Cli::try_parse_from(["cwatch", "run", "--help"])
        .unwrap_err()
        .to_string();
    for needle in [
        "--leak-after",
        "--web.config.file",
        "--include",
        "Examples:",
        "cwatch ls --leaked",
        "SIGHUP",
    ] {
        assert!(help.contains(needle), "{needle} missing from run --help");
    }
    let ls = Cli::try_parse_from(["cwatch", "ls", "--peer", "nohost"]).unwrap_err();
    assert_eq!(ls.exit_code(), 2);
    assert!(ls.to_string().lines().next().unwrap().contains("nohost"));
    let Command::CheckConfig(a) = Cli::try_parse_from(["cwatch", "check-config", "x.toml"])
        .unwrap()
        .command
    else {
        panic!("check-config");
    };
    assert_eq!(a.file, std::path::Path::new("x.toml"));
}

#[test]
fn defaults_match_the_contract() {
    let config = run_config(&run_args(&[]).unwrap()).unwrap();
    assert_eq!(config.listen, "127.0.0.1:9478".parse().unwrap());
    assert_eq!(config.leak_after, Duration::from_secs(300));
    assert_eq!(config.reconcile_interval, Duration::from_secs(60));
}

#[test]
fn human_durations_and_addresses_parse() {
    let args = run_args(&[
        "--leak-after",
        "500ms",
        "--reconcile-interval",
        "2s",
        "--listen",
        "[::1]:9000",
    ])
    .unwrap();
    let config = run_config(&args).unwrap();
    assert_eq!(config.leak_after, Duration::from_millis(500));
    assert_eq!(config.reconcile_interval, Duration::from_secs(2));
    assert_eq!(config.listen, "[::1]:9000".parse().unwrap());
}

#[test]
fn bad_flags_are_usage_errors_naming_the_value() {
    for (argv, needle) in [
        (&["--leak-after", "5 parsecs"][..], "5 parsecs"),
        (&["--listen", "localhost"][..], "localhost"),
        (&["--reconcile-interval=-1s"][..], "-1s"),
        (&["--frobnicate"][..], "--frobnicate"),
    ] {
        let err = run_args(argv).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{argv:?}");
        let first = err.to_string().lines().next().unwrap().to_string();
        assert!(first.contains(needle), "{argv:?}: {first}");
    }
}

#[test]
fn zero_or_tiny_durations_are_rejected() {
    let err = run_args(&["--leak-after", "0s"]).unwrap_err().to_string();
    assert!(
        err.contains("'0s'") && err.contains("--leak-after"),
        "{err}"
    );
    assert!(err.contains("longer than zero"), "{err}");
    let err = run_args(&["--reconcile-interval", "10ms"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 100ms"), "{err}");
    let err = parse_file("c.toml", "leak_after = \"0s\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("longer than zero"), "{err}");
}

#[test]
fn file_values_apply_and_flags_override_them() {
    let text = "listen = \"127.0.0.2:9000\"\nleak_after = \"2m\"\nreconcile_interval = \"5s\"\n";
    let file = parse_file("cwatch.toml", text).unwrap();
    assert_eq!(file.listen, "127.0.0.2:9000".parse().unwrap());
    assert_eq!(file.leak_after, Duration::from_secs(120));
    assert_eq!(file.reconcile_interval, Duration::from_secs(5));

    let dir = std::env::temp_dir().join(format!("cwatch-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cwatch.toml");
    std::fs::write(&path, text).unwrap();
    let args = run_args(&["--config", path.to_str().unwrap(), "--leak-after", "9s"]).unwrap();
    let merged = run_config(&args).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(merged.leak_after, Duration::from_secs(9), "flag wins");
    assert_eq!(merged.listen, file.listen, "file value kept");
}

#[test]
fn file_errors_are_one_line_with_the_file_and_line() {
    let err = parse_file(
        "/etc/cwatch.toml",
        "listen = \"127.0.0.1:1\"\nleak_afterr = \"5m\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("config file /etc/cwatch.toml: line 2:"),
        "{err}"
    );
    assert!(err.contains("leak_afterr"), "{err}");
    assert!(!err.contains('\n'), "{err}");

    let err = parse_file("c.toml", "leak_after = \"soon\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("config file c.toml: leak_after = \"soon\""),
        "{err}"
    );

    let err = parse_file("c.toml", "listen = 9478")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("config file c.toml: line 1:"), "{err}");

    let missing = run_config(&RunArgs {
        config: Some("/nonexistent/cwatch.toml".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        missing.starts_with("config file /nonexistent/cwatch.toml: "),
        "{missing}"
    );
}

#[test]
fn ls_asks_the_configured_daemon() {
    let args = LsArgs {
        listen: Some("127.0.0.3:1234".parse().unwrap()),
        ..Default::default()
    };
    assert_eq!(
        ls_settings(&args).unwrap().0,
        "127.0.0.3:1234".parse().unwrap()
    );
    assert_eq!(
        ls_settings(&LsArgs::default()).unwrap().0,
        Config::default().listen
    );
}

#[test]
fn pin_dir_ring_size_and_holders_refresh() {
    let config = run_config(&run_args(&[]).unwrap()).unwrap();
    assert_eq!(config.pin_dir, Some(PathBuf::from("/sys/fs/bpf/cwatch")));
    assert_eq!(config.ring_buffer_size, 4 << 20);
    assert_eq!(config.holders_refresh, Duration::from_secs(5));
    let args = run_args(&[
        "--pin-dir",
        "none",
        "--ring-buffer-size",
        "64KiB",
        "--holders-refresh",
        "1s",
    ])
    .unwrap();
    let config = run_config(&args).unwrap();
    assert_eq!((config.pin_dir, config.ring_buffer_size), (None, 64 << 10));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("2MiB"), Ok(2 << 20));
    for bad in ["1000", "2KiB", "lots", "-4096", "2048MiB"] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
    assert!(run_args(&["--ring-buffer-size", "3000"]).is_err());
    let relative = run_args(&["--pin-dir", "pins"]).unwrap();
    assert_eq!(
        run_config(&relative).unwrap_err().to_string(),
        "--pin-dir pins: must be an absolute path on a bpf filesystem"
    );
    let file = parse_file(
        "f.toml",
        "pin_dir = \"none\"\nring_buffer_size = \"1MiB\"\n",
    )
    .unwrap();
    assert_eq!((file.pin_dir, file.ring_buffer_size), (None, 1 << 20));
    let bad = parse_file("f.toml", "ring_buffer_size = \"5KiB\"\n").unwrap_err();
    assert!(
        bad.to_string()
            .starts_with("config file f.toml: ring_buffer_size = \"5KiB\""),
        "{bad}"
    );
}

fn reap_args(argv: &[&str]) -> Result<super::ReapArgs, clap::Error> {
    let mut full = vec!["cwatch", "reap"];
    full.extend_from_slice(argv);
    match Cli::try_parse_from(full)?.command {
        Command::Reap(args) => Ok(args),
        other => panic!("asked for reap, got {other:?}"),
    }
}

#[test]
fn reap_is_a_dry_run_unless_yes_and_asks_the_configured_daemon() {
    let args = reap_args(&["--older-than", "1h", "--pid", "42", "--peer", "[::1]:7000"]).unwrap();
    assert_eq!(args.older_than, Some(Duration::from_secs(3600)));
    assert_eq!(
        (args.pid, args.peer.as_deref()),
        (Some(42), Some("[::1]:7000"))
    );
    assert!(!args.yes, "a dry run by default");
    assert!(reap_args(&["--older-than", "30m", "--yes"]).unwrap().yes);
    let file = std::env::temp_dir().join(format!("cwatch-reap-{}.toml", std::process::id()));
    std::fs::write(&file, "listen = \"127.0.0.3:9999\"\n").unwrap();
    let args = reap_args(&["--older-than", "1m", "--config", file.to_str().unwrap()]).unwrap();
    let target = super::resolve::reap_target(&args);
    std::fs::remove_file(&file).unwrap();
    let minute = Duration::from_secs(60);
    assert_eq!(target.unwrap(), ("127.0.0.3:9999".parse().unwrap(), minute));
    let args = reap_args(&["--older-than", "1m", "--listen", "127.0.0.4:1"]).unwrap();
    assert_eq!(
        super::resolve::reap_target(&args).unwrap(),
        ("127.0.0.4:1".parse().unwrap(), minute)
    );
    // Without --older-than: one line naming it (checked before anything runs).
    let missing = super::resolve::reap_target(&reap_args(&["--yes"]).unwrap()).unwrap_err();
    assert!(
        missing.contains("--older-than") && !missing.contains('\n'),
        "{missing}"
    );
}

#[test]
fn bad_reap_flags_are_one_line_and_exit_2() {
    for (argv, needle) in [
        (&["--older-than", "soon"][..], "soon"),
        (&["--older-than", "0s"][..], "0s"),
        (&["--older-than", "1h", "--peer", "nohost"][..], "nohost"),
        (&["--older-than", "1h", "--pid", "-3"][..], "-3"),
        (
            &["--older-than", "1h", "--listen", "localhost"][..],
            "localhost",
        ),
        (&["--older-than", "1h", "--force"][..], "--force"),
    ] {
        let err = reap_args(argv).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{argv:?}");
        let first = err.to_string().lines().next().unwrap().to_string();
        assert!(first.contains(needle), "{argv:?}: {first}");
    }
}

#[test]
fn reconcile_budget_is_a_share_of_a_core_from_flag_or_file() {
    assert_eq!(Config::default().reconcile_budget_ppm, 5_000);
    let args = run_args(&["--reconcile-budget", "2%"]).unwrap();
    assert_eq!(run_config(&args).unwrap().reconcile_budget_ppm, 20_000);
    let file = parse_file("cwatch.toml", "reconcile_budget = \"0.25%\"\n").unwrap();
    assert_eq!(file.reconcile_budget_ppm, 2_500);
    for (text, ppm) in [("100%", 1_000_000), ("0.5", 5_000), ("0.0001%", 1)] {
        assert_eq!(parse_cpu_share(text), Ok(ppm), "{text}");
    }
    for ppm in [1, 2_500, 5_000, 1_000_000] {
        assert_eq!(parse_cpu_share(&format_cpu_share(ppm)), Ok(ppm));
    }
    assert_eq!(format_cpu_share(5_000), "0.5%");
    for bad in ["0%", "-1%", "101%", "lots", "NaN", "inf%", "0.00001%", ""] {
        assert!(parse_cpu_share(bad).is_err(), "{bad}");
    }
    assert!(run_args(&["--reconcile-budget", "200%"]).is_err());
}
