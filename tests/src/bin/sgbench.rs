//! `sgbench`: the origin server and the measuring client of the shimgate
//! benchmark (`tests/bench/run.sh`, described in `docs/BENCHMARKS.md`).
//!
//! The same code measures every path (direct loopback, a plain SOCKS5 proxy,
//! `ssh -D`, shimgate), so differences between rows come from the path, not
//! from the client. Subcommands:
//!
//! * `origin --listen ADDR`: the server at the end of every path (see
//!   [`origin`] for its tiny protocol).
//! * `measure --name N --target ADDR [--socks ADDR] --out FILE`: runs every
//!   figure for one path and writes it as JSON.
//! * `load --socks ADDR --target ADDR --conns N`: opens N tunneled
//!   connections at once, checks every byte each moves, holds them at a
//!   barrier and reports memory per connection (`tests/bench/load.sh`).
//! * `soak --socks ADDR --target ADDR --secs S`: mixed traffic for a while,
//!   every byte checked (`tests/bench/soak.sh`).
//! * `report FILE...`: prints the side-by-side table and the targets.
//! * `failed`, `ports`, `wait-port`: helpers for the script.

#[path = "sgbench/client.rs"]
mod client;
#[path = "sgbench/load.rs"]
mod load;
#[path = "sgbench/measure.rs"]
mod measure;
#[path = "sgbench/origin.rs"]
mod origin;
#[path = "sgbench/report.rs"]
mod report;
#[path = "sgbench/rss.rs"]
mod rss;

use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sgbench",
    about = "shimgate benchmark: origin server and measuring client"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the origin server (bulk source and 1-byte ping responder).
    Origin {
        /// Address to listen on, e.g. 127.0.0.1:9000.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Measure one path and write its figures as JSON.
    Measure(measure::MeasureArgs),
    /// Open many tunneled connections at once, each moving checked bytes.
    Load(load::LoadArgs),
    /// Mixed checked traffic (bulk, short requests, peer sessions) for a while.
    Soak(load::SoakArgs),
    /// Print the side-by-side table and the targets from `measure` outputs.
    Report(report::ReportArgs),
    /// Write a result file for a path that could not be run.
    Failed(FailedArgs),
    /// Print N currently free TCP ports on 127.0.0.1, one per line.
    Ports {
        #[arg(default_value_t = 1)]
        n: usize,
    },
    /// Wait until a TCP port accepts connections.
    WaitPort {
        addr: SocketAddr,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        /// Give up early when this process has exited.
        #[arg(long)]
        pid: Option<u32>,
    },
}

#[derive(Args)]
struct FailedArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    label: Option<String>,
    #[arg(long)]
    reason: String,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> std::process::ExitCode {
    // Plain one-line errors, whatever RUST_BACKTRACE says.
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sgbench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Origin { listen } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(origin::serve(listen))
        }
        Cmd::Measure(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.threads.max(1))
                .enable_all()
                .build()?;
            rt.block_on(measure::run(args))
        }
        Cmd::Load(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.threads.max(1))
                .enable_all()
                .build()?;
            rt.block_on(load::run_load(args))
        }
        Cmd::Soak(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.threads.max(1))
                .enable_all()
                .build()?;
            rt.block_on(load::run_soak(args))
        }
        Cmd::Report(args) => report::run(args),
        Cmd::Failed(a) => {
            let label = a.label.unwrap_or_else(|| a.name.clone());
            let v = serde_json::json!({ "name": a.name, "label": label, "error": a.reason });
            std::fs::write(&a.out, serde_json::to_vec_pretty(&v)?)
                .with_context(|| format!("writing {}", a.out.display()))
        }
        Cmd::Ports { n } => {
            for p in free_ports(n)? {
                println!("{p}");
            }
            Ok(())
        }
        Cmd::WaitPort {
            addr,
            timeout_secs,
            pid,
        } => wait_port(addr, Duration::from_secs(timeout_secs), pid),
    }
}

/// `n` distinct ports on 127.0.0.1 that are free now and lie below the
/// kernel's ephemeral range: the connection churn of the benchmark cycles
/// through the ephemeral ports, so a listener there could find its port taken
/// by an outgoing connection, and a client could connect to itself.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(2048, 65535);
    let first = low.saturating_sub(12_000).max(1024);
    let span = low - first;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    // Hold the listeners until all are found so the ports are distinct.
    let mut held = Vec::new();
    for i in 0..span {
        if held.len() == n {
            break;
        }
        let port = (first + (seed.wrapping_add(i * 7919)) % span) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    if held.len() < n {
        bail!("found only {} free ports in {first}..{low}", held.len());
    }
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

fn wait_port(addr: SocketAddr, timeout: Duration, pid: Option<u32>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            // A connect to a free port in the ephemeral range can connect the
            // socket to itself; that is not a listener.
            if s.local_addr().ok() != s.peer_addr().ok() {
                return Ok(());
            }
        }
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            bail!("process {pid} exited before {addr} accepted connections");
        }
        if Instant::now() >= deadline {
            bail!("{addr} did not accept connections within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Parses `127.0.0.1:PORT` into an IPv4 socket address (the SOCKS client only
/// speaks the IPv4 address type).
fn parse_v4(s: &str) -> Result<SocketAddrV4> {
    s.parse::<SocketAddrV4>()
        .with_context(|| format!("{s:?} is not an IPv4 address:port"))
}
