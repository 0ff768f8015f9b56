use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = shimgate_proxy::cli::Cli::parse();
    shimgate_wire::logging::main(cli.log_format, cli.run())
}
