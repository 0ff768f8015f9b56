use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = shimgate_gateway::cli::Cli::parse();
    shimgate_wire::logging::main(cli.log_format, async {
        cli.run().await.map(|()| std::process::ExitCode::SUCCESS)
    })
}
