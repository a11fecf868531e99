//! `cargo xtask`: the commands a developer and CI type. One file per command.
mod bench;
mod build;
mod conntrack;
mod container_tools;
mod deploy_tools;
mod image;
mod lint;
mod package;
mod run;
mod setup;
mod test;
mod util;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test cwatch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the eBPF toolchain and install what is missing (as root).
    Setup(setup::Options),
    /// Build the eBPF object and the `cwatch` binary that embeds it.
    Build(build::Options),
    /// Build, then run `cwatch run` as root with the given arguments.
    Run(run::Options),
    /// cargo fmt --check and clippy -D warnings, eBPF crate included.
    Lint,
    /// The whole suite: unit tests, then the privileged kernel and deploy tests.
    Test(test::Options),
    /// Benchmarks (as root): cost per event, churn overhead, scale to 1M
    /// CLOSE_WAIT sockets, detection latency; writes bench/RESULTS.md.
    Bench(bench::Options),
    /// Build the .deb (cargo-deb): binary, unit, config, rules, dashboard.
    Package,
    /// Build the container image (buildah, FROM scratch): target/image/.
    Image,
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Setup(opts) => setup::run(&opts),
        Command::Build(opts) => build::run(&opts).map(drop),
        Command::Run(opts) => run::run(&opts),
        Command::Lint => lint::run(),
        Command::Test(opts) => test::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
        Command::Package => package::run().map(|deb| println!("{}", deb.display())),
        Command::Image => image::run().map(|i| println!("{} {}", i.archive.display(), i.digest)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
