//! `shimgate-gateway`: the gateway, its admin commands and the demo (see
//! `shimgate-gateway --help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = shimgate_cli::gateway::Cli::parse();
    shimgate_cli::process::main(cli.log_format, async {
        cli.run().await.map(|()| std::process::ExitCode::SUCCESS)
    })
}
