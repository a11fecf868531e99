/*!
What each subcommand does once the command line is parsed, and the exit code
for each outcome: 0 done, 1 a runtime failure, 2 bad input (flag, value,
config file, web config file) and kernel surprises (no BTF, a field or a
tracepoint missing from it, bpf() refused, probes the kernel would not
load, a kernel that cannot destroy sockets for `cwatch reap`). Input errors are checked before anything starts, and each is one
line on stderr.
*/
use std::process::ExitCode;

use super::{CheckConfigArgs, Cli, Command, DoctorArgs, RunArgs, doctor, ls, reap, resolve};
use crate::{
    config,
    daemon::{self, heap, logging},
    http::webconfig,
};

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(args) => run_daemon(args),
        Command::Ls(args) => match resolve::ls_settings(&args) {
            Ok((target, leak_after)) => outcome(ls::run(&args, target, leak_after)),
            Err(err) => usage_error(&err),
        },
        Command::Reap(args) => match resolve::reap_target(&args) {
            Ok((target, older_than)) => match reap::run(&args, older_than, target) {
                // The kernel cannot do it: told like bad input.
                Err(err) if err.is::<reap::DestroyUnsupported>() => usage_error(&err),
                result => outcome(result),
            },
            Err(err) => usage_error(&err),
        },
        Command::CheckConfig(args) => check_config(&args),
        Command::Doctor(args) => run_doctor(&args),
    }
}

fn run_daemon(args: RunArgs) -> ExitCode {
    let config = match resolve::run_config(&args) {
        Ok(c) => c,
        Err(err) => return usage_error(&err),
    };
    let web = match webconfig::load(config.web.config_file.as_deref()) {
        Ok(w) => w,
        Err(err) => return usage_error(&err),
    };
    // A kernel or permission problem that makes loading fail for certain is
    // bad input too: say it in one line before anything starts.
    if let Some(problem) = doctor::blocking_problem(&doctor::Host::real(
        config
            .pin_dir
            .as_deref()
            .unwrap_or(std::path::Path::new(config::DEFAULT_PIN_DIR)),
        &config.kernel_btf,
    )) {
        return usage_error(&format!("cannot run here: {problem} (see `cwatch doctor`)"));
    }
    logging::init(&config.log_level);
    heap::tune();
    // Another daemon on the same pin directory: refuse, naming it.
    let claim = match daemon::claim_pin_dir(&config) {
        Ok(c) => c,
        Err(err) => return usage_error(&err),
    };
    let reloader: daemon::Reloader = Box::new(move || resolve::run_config(&args));
    let result = daemon::main(config, web, claim, Some(reloader));
    // The kernel refusing the probes is a kernel surprise, told like bad
    // input: exit 2, its pins rolled back and its programs detached.
    if let Err(err) = &result
        && err.chain().any(|e| e.is::<crate::probe::ProbeError>())
    {
        return usage_error(&format!("{err:#}"));
    }
    outcome(result)
}

fn check_config(args: &CheckConfigArgs) -> ExitCode {
    let config = match config::load_file(&args.file) {
        Ok(c) => c,
        Err(err) => return usage_error(&err),
    };
    if let Err(err) = webconfig::load(config.web.config_file.as_deref()) {
        return usage_error(&err);
    }
    println!(
        "# {}: valid. Effective configuration (defaults filled in):",
        args.file.display()
    );
    print!("{}", config.to_toml());
    ExitCode::SUCCESS
}

fn run_doctor(args: &DoctorArgs) -> ExitCode {
    let checks = doctor::run_checks(&doctor::Host::real(&args.pin_dir, &args.kernel_btf));
    let (text, ok) = doctor::report(&checks);
    print!("{text}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn outcome(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", error_line(&format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}

fn usage_error(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{}", error_line(err));
    ExitCode::from(2)
}

/// What stderr shows for an error: one line, whatever the values it quotes
/// hold (a newline or an escape sequence in a flag's value, a file name or
/// a process name is shown escaped, never acted on by the terminal).
pub fn error_line(err: &dyn std::fmt::Display) -> String {
    format!("cwatch: {}", crate::text::for_terminal(&err.to_string()))
}
