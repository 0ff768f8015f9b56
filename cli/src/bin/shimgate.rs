//! `shimgate`: the device side (see `shimgate --help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = shimgate_cli::device::Cli::parse();
    shimgate_cli::process::main(cli.log_format, cli.run())
}
