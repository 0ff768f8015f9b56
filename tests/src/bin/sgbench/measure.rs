//! `sgbench measure`: every figure for one path, written as JSON.
//!
//! Order: idle memory first (the servers are fresh, so the allocator can't
//! hide per-connection cost in memory freed by earlier phases), then setup
//! latency, connections per second, and bulk throughput.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::client::{self, Path};
use crate::origin::Pattern;
use crate::rss::ProcSpec;

/// Time limit for one connection setup + ping.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct MeasureArgs {
    /// Short name of the path (direct, microsocks, ssh, shadowsocks, shimgate, peer-direct,
    /// peer-relay).
    #[arg(long)]
    name: String,
    /// Human-readable label for the table.
    #[arg(long)]
    label: Option<String>,
    /// The origin server (IPv4 address:port).
    #[arg(long, value_parser = crate::parse_v4)]
    target: std::net::SocketAddrV4,
    /// SOCKS5 proxy to go through; without it, connect to the origin directly.
    #[arg(long)]
    socks: Option<SocketAddr>,
    /// HOST:PORT the SOCKS CONNECT names instead of --target (domain name
    /// address type), e.g. bob.vpn.internal:9000 for a peer path.
    #[arg(long, requires = "socks", value_parser = parse_host_port)]
    socks_dest: Option<(String, u16)>,
    /// Bytes per bulk transfer (suffixes K, M, G are binary: 1G = 1 GiB).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    bulk_bytes: u64,
    /// Timed bulk transfers; the median is reported (0: skip bulk).
    #[arg(long, default_value_t = 5)]
    bulk_runs: usize,
    /// Bytes of an untimed bulk transfer whose content is checked first.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    verify_bytes: u64,
    /// Sequential connection setup samples (0: skip).
    #[arg(long, default_value_t = 1000)]
    setup_samples: usize,
    /// Concurrent clients for connections per second.
    #[arg(long, default_value_t = 8)]
    cps_clients: usize,
    /// Measured seconds for connections per second, after a warm-up (0: skip).
    #[arg(long, default_value_t = 3.0)]
    cps_secs: f64,
    /// Connections made (and checked) before anything is measured.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Idle tunneled connections held open for the memory figure (0: skip).
    #[arg(long, default_value_t = 1000)]
    idle_conns: usize,
    /// A process whose VmRSS is reported, as NAME=PID.
    #[arg(long = "rss", value_name = "NAME=PID")]
    rss: Vec<String>,
    /// Like --rss, summing the process and all its descendants.
    #[arg(long = "rss-tree", value_name = "NAME=PID")]
    rss_tree: Vec<String>,
    /// Client runtime worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Where to write the JSON result.
    #[arg(long)]
    out: PathBuf,
}

pub fn parse_host_port(s: &str) -> Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("{s:?} is not HOST:PORT"))?;
    if host.is_empty() || host.len() > 255 {
        bail!("{s:?}: the host name must be 1 to 255 bytes");
    }
    let port = port
        .parse::<u16>()
        .with_context(|| format!("{s:?}: bad port"))?;
    Ok((host.to_owned(), port))
}

pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} too large"))
}

pub async fn run(args: MeasureArgs) -> Result<()> {
    let label = args.label.clone().unwrap_or_else(|| args.name.clone());
    let mut procs = Vec::new();
    for s in &args.rss {
        procs.push(ProcSpec::parse(s, false)?);
    }
    for s in &args.rss_tree {
        procs.push(ProcSpec::parse(s, true)?);
    }
    // Path is Copy (every task gets its own); the name lives for the run.
    let dest_name = args
        .socks_dest
        .as_ref()
        .map(|(h, p)| (&*Box::leak(h.clone().into_boxed_str()), *p));
    let path = Path {
        socks: args.socks,
        dest: args.target,
        dest_name,
    };
    let mut out = json!({
        "name": args.name,
        "label": label,
        "via_socks": args.socks.is_some(),
    });
    if let Some((h, p)) = dest_name {
        out["socks_dest"] = json!(format!("{h}:{p}"));
    }
    let result = measure_all(&args, &label, path, &procs, &mut out).await;
    if let Err(e) = &result {
        out["error"] = json!(format!("{e:#}"));
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&out)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    result
}

async fn measure_all(
    args: &MeasureArgs,
    label: &str,
    path: Path,
    procs: &[ProcSpec],
    out: &mut Value,
) -> Result<()> {
    // Warm-up: proves the path works and lets lazily created state (pools,
    // TLS sessions) exist before anything is measured.
    for _ in 0..args.warmup {
        timeout(OP_TIMEOUT, one_shot(path))
            .await
            .context("warm-up connection timed out")?
            .context("warm-up connection")?;
    }

    if args.idle_conns > 0 && !procs.is_empty() {
        eprintln!("[{label}] memory with {} idle connections", args.idle_conns);
        out["idle"] = idle(path, args.idle_conns, procs).await?;
    }

    if args.setup_samples > 0 {
        eprintln!("[{label}] setup latency, {} samples", args.setup_samples);
        out["setup"] = setup(path, args.setup_samples).await?;
        eprintln!(
            "[{label}]   p50 {:.1} us, p99 {:.1} us",
            out["setup"]["p50_us"].as_f64().unwrap_or(0.0),
            out["setup"]["p99_us"].as_f64().unwrap_or(0.0)
        );
    }

    if args.cps_secs > 0.0 {
        eprintln!(
            "[{label}] connections/s, {} clients, {} s",
            args.cps_clients, args.cps_secs
        );
        out["cps"] = cps(path, args.cps_clients, args.cps_secs).await?;
        eprintln!(
            "[{label}]   {:.0} connections/s",
            out["cps"]["per_sec"].as_f64().unwrap_or(0.0)
        );
    }

    if args.bulk_runs == 0 {
        return Ok(());
    }
    eprintln!(
        "[{label}] bulk, {} x {} MiB",
        args.bulk_runs,
        args.bulk_bytes >> 20
    );
    out["bulk"] = bulk(
        path,
        args.bulk_bytes,
        args.bulk_runs,
        args.verify_bytes,
        procs,
    )
    .await?;
    eprintln!(
        "[{label}]   {:.2} GB/s (median)",
        out["bulk"]["gbps_median"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}

/// Connect (through the proxy), one 1-byte request/response, close. Returns
/// the time from the start of the TCP connect to the response byte.
async fn one_shot(path: Path) -> Result<Duration> {
    let t0 = Instant::now();
    let mut s = path.open().await?;
    client::ping(&mut s).await?;
    Ok(t0.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn setup(path: Path, samples: usize) -> Result<Value> {
    let mut us = Vec::with_capacity(samples);
    for i in 0..samples {
        let d = timeout(OP_TIMEOUT, one_shot(path))
            .await
            .with_context(|| format!("setup sample {i} timed out"))?
            .with_context(|| format!("setup sample {i}"))?;
        us.push(d.as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    let mean = us.iter().sum::<f64>() / us.len().max(1) as f64;
    Ok(json!({
        "samples": samples,
        "p50_us": percentile(&us, 0.50),
        "p90_us": percentile(&us, 0.90),
        "p99_us": percentile(&us, 0.99),
        "min_us": us.first().copied().unwrap_or(0.0),
        "max_us": us.last().copied().unwrap_or(0.0),
        "mean_us": mean,
    }))
}

async fn cps(path: Path, clients: usize, secs: f64) -> Result<Value> {
    let warmup = Duration::from_millis(500);
    let measured = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let from = start + warmup;
    let until = from + measured;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let (done, errors, first_error) = (done.clone(), errors.clone(), first_error.clone());
        tasks.spawn(async move {
            while Instant::now() < until {
                let r = match timeout(OP_TIMEOUT, one_shot(path)).await {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!("connection timed out")),
                };
                let now = Instant::now();
                match r {
                    Ok(_) if now >= from && now < until => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().await.get_or_insert(format!("{e:#}"));
                        // Don't spin on a persistent failure.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("connections/s client task")?;
    }
    let done = done.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    let first_error = first_error.lock().await.clone();
    if let Some(e) = &first_error {
        eprintln!("  {errors} failed connections, first: {e}");
    }
    if done == 0 {
        bail!(
            "no connection completed: {}",
            first_error.unwrap_or_default()
        );
    }
    Ok(json!({
        "clients": clients,
        "secs": secs,
        "connections": done,
        "errors": errors,
        "first_error": first_error,
        "per_sec": done as f64 / secs,
    }))
}

async fn bulk(
    path: Path,
    bytes: u64,
    runs: usize,
    verify_bytes: u64,
    procs: &[ProcSpec],
) -> Result<Value> {
    let bulk_timeout = Duration::from_secs(120);
    if verify_bytes > 0 {
        let pattern = Pattern::new();
        let mut s = path.open().await?;
        timeout(
            bulk_timeout,
            client::bulk(&mut s, verify_bytes, Some(&pattern)),
        )
        .await
        .context("verified bulk transfer timed out")?
        .context("verified bulk transfer")?;
    }
    // CPU time the server processes spend per GB moved: on a machine where
    // every process shares a few CPUs, this is what bounds throughput.
    let cpu_before = procs
        .iter()
        .map(|p| p.cpu_secs())
        .collect::<Result<Vec<_>>>()?;
    let mut gbps = Vec::with_capacity(runs);
    for i in 0..runs {
        let mut s: TcpStream = path.open().await?;
        client::ping(&mut s).await?;
        let secs = timeout(bulk_timeout, client::bulk(&mut s, bytes, None))
            .await
            .with_context(|| format!("bulk run {i} timed out"))?
            .with_context(|| format!("bulk run {i}"))?;
        gbps.push(bytes as f64 / secs / 1e9);
    }
    let gb = (bytes as f64 * runs as f64 / 1e9).max(1e-9);
    let mut cpu = Vec::new();
    let mut cpu_total = 0.0;
    for (p, before) in procs.iter().zip(cpu_before) {
        let per_gb = (p.cpu_secs()? - before) / gb;
        cpu_total += per_gb;
        cpu.push(json!({
            "name": p.name,
            "tree": p.tree,
            "cpu_s_per_gb": per_gb,
        }));
    }
    let mut sorted = gbps.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(json!({
        "bytes": bytes,
        "server_cpu": cpu,
        "cpu_s_per_gb_total": cpu_total,
        "runs_gbps": gbps,
        "gbps_median": percentile(&sorted, 0.5),
        "gbps_best": sorted.last().copied().unwrap_or(0.0),
    }))
}

fn read_procs(procs: &[ProcSpec]) -> Result<Vec<(u64, usize)>> {
    procs.iter().map(|p| p.rss_kib()).collect()
}

async fn idle(path: Path, n: usize, procs: &[ProcSpec]) -> Result<Value> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = read_procs(procs)?;

    // Open the connections, 50 at a time; each is only counted once a ping
    // went all the way to the origin and back.
    let sem = Arc::new(Semaphore::new(50));
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let mut s = timeout(OP_TIMEOUT, path.open())
                .await
                .context("idle connection setup timed out")??;
            timeout(OP_TIMEOUT, client::ping(&mut s))
                .await
                .context("idle connection ping timed out")??;
            anyhow::Ok(s)
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        conns.push(
            r.context("idle connection task")?
                .context("opening idle connections")?,
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with = read_procs(procs)?;

    // The tunnels must still work, or the figure means nothing.
    let mut tasks = JoinSet::new();
    for mut s in conns {
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            timeout(OP_TIMEOUT, client::ping(&mut s))
                .await
                .context("ping on idle connection timed out")??;
            anyhow::Ok(s)
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        conns.push(
            r.context("idle connection task")?
                .context("idle connection died")?,
        );
    }
    drop(conns);
    // Let the servers tear the connections down before the next phase.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut rows = Vec::new();
    let mut total = 0.0;
    for (p, ((b, bn), (w, wn))) in procs.iter().zip(before.into_iter().zip(with)) {
        total += (w as f64 - b as f64) / n as f64;
        rows.push(json!({
            "name": p.name,
            "pid": p.pid,
            "tree": p.tree,
            "processes_before": bn,
            "processes_with": wn,
            "before_kib": b,
            "with_kib": w,
            "kib_per_conn": (w as f64 - b as f64) / n as f64,
        }));
    }
    Ok(json!({ "conns": n, "processes": rows, "kib_per_conn_total": total }))
}
