use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = shimgate_gateway::cli::Cli::parse();
    shimgate_wire::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", shimgate_wire::logging::report(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}
