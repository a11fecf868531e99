use clap::Parser as _;

use super::*;

fn run_args(argv: &[&str]) -> Result<RunArgs, clap::Error> {
    let mut full = vec!["cwatch", "run"];
    full.extend_from_slice(argv);
    match Cli::try_parse_from(full)?.command {
        Command::Run(args) => Ok(args),
        Command::Ls(_) => unreachable!("asked for run"),
    }
}

#[test]
fn defaults_match_the_contract() {
    let config = Config::from_run_args(&run_args(&[]).unwrap()).unwrap();
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
    let config = Config::from_run_args(&args).unwrap();
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
    let err = Config::from_run_args(&run_args(&["--leak-after", "0s"]).unwrap()).unwrap_err();
    assert!(err.to_string().starts_with("--leak-after 0s"), "{err}");
    let err =
        Config::from_run_args(&run_args(&["--reconcile-interval", "10ms"]).unwrap()).unwrap_err();
    assert!(err.to_string().contains("at least 100ms"), "{err}");
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
    let merged = Config::from_run_args(&args).unwrap();
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

    let missing = Config::from_run_args(&RunArgs {
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
    assert_eq!(ls_target(&args).unwrap(), "127.0.0.3:1234".parse().unwrap());
    assert_eq!(
        ls_target(&LsArgs::default()).unwrap(),
        Config::default().listen
    );
}

#[test]
fn pin_dir_ring_size_and_holders_refresh() {
    let config = Config::from_run_args(&run_args(&[]).unwrap()).unwrap();
    assert_eq!(config.pin_dir, Some(PathBuf::from("/sys/fs/bpf/cwatch")));
    assert_eq!(config.ring_buffer_size, 8 << 20);
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
    let config = Config::from_run_args(&args).unwrap();
    assert_eq!((config.pin_dir, config.ring_buffer_size), (None, 64 << 10));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("2MiB"), Ok(2 << 20));
    for bad in ["1000", "2KiB", "lots", "-4096", "2048MiB"] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
    assert!(run_args(&["--ring-buffer-size", "3000"]).is_err());
    let relative = run_args(&["--pin-dir", "pins"]).unwrap();
    assert_eq!(
        Config::from_run_args(&relative).unwrap_err().to_string(),
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
