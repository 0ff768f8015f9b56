//! Every argument and subcommand of both binaries says what it is in
//! `--help`: a test that walks both clap command trees, so it stays true.

use clap::CommandFactory;

/// `path: what` for every argument or subcommand under `cmd` without help text.
fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        let builtin = matches!(arg.get_id().as_str(), "help" | "version");
        if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
            out.push(format!("{path}: argument {}", arg.get_id()));
        }
    }
    for sub in cmd.get_subcommands() {
        let sub_path = format!("{path} {}", sub.get_name());
        if sub.get_name() != "help" && sub.get_about().is_none() && sub.get_long_about().is_none() {
            out.push(format!("{sub_path}: subcommand"));
        }
        undocumented(sub, &sub_path, out);
    }
}

#[test]
fn every_argument_and_subcommand_has_help() {
    let mut missing = Vec::new();
    for mut cmd in [
        shimgate_cli::device::Cli::command(),
        shimgate_cli::gateway::Cli::command(),
    ] {
        cmd.build();
        let name = cmd.get_name().to_owned();
        undocumented(&cmd, &name, &mut missing);
    }
    assert!(
        missing.is_empty(),
        "without help text:\n  {}",
        missing.join("\n  ")
    );
}
