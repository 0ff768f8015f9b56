//! `sgbench load` and `sgbench soak`: many tunneled connections, each moving
//! a payload whose every byte is checked (`tests/bench/load.sh`,
//! `tests/bench/soak.sh`, figures in `docs/RELIABILITY.md`).
//!
//! A transfer is an echo (the client sends the origin's pattern from a
//! per-connection offset, the origin's `E` command sends it back, and the
//! client compares what returns) followed by a bulk download (`B`) compared
//! with the pattern. A mismatch is *corruption*; a connection that fails
//! or closes early is a *failure*; the two are counted apart.

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{ping, socks_connect};
use crate::origin::{CMD_BULK, CMD_ECHO, Pattern};
use crate::rss::{ProcSpec, vm_rss_kib};

/// Time limit for a SOCKS connect.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Client buffer per direction of a transfer (small: 10,000 run at once).
const BUF: usize = 16 * 1024;

/// Data that came back different from what was sent or expected.
#[derive(Debug)]
struct Corrupt(String);

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CORRUPTION: {}", self.0)
    }
}

impl std::error::Error for Corrupt {}

fn is_corrupt(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Corrupt>())
}

/// Bytes checked so far, shared by all connections.
#[derive(Default)]
struct Counters {
    /// Bytes the client sent that came back intact.
    echoed: AtomicU64,
    /// Bulk bytes received and checked.
    downloaded: AtomicU64,
}

/// Sends `bytes` of the pattern from `offset` and checks the echo.
async fn echo(
    s: &mut TcpStream,
    pattern: &Pattern,
    offset: u64,
    bytes: u64,
    c: &Counters,
) -> Result<()> {
    let (mut r, mut w) = s.split();
    let writer = async {
        let mut cmd = [0u8; 9];
        cmd[0] = CMD_ECHO;
        cmd[1..].copy_from_slice(&bytes.to_be_bytes());
        w.write_all(&cmd).await?;
        let mut buf = vec![0u8; BUF];
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(BUF as u64) as usize;
            pattern.fill(offset + sent, &mut buf[..n]);
            w.write_all(&buf[..n]).await.context("sending echo data")?;
            sent += n as u64;
        }
        anyhow::Ok(())
    };
    let reader = async {
        let mut buf = vec![0u8; BUF];
        let mut got = 0u64;
        while got < bytes {
            let want = (bytes - got).min(BUF as u64) as usize;
            let n = r.read(&mut buf[..want]).await.context("reading echo")?;
            if n == 0 {
                bail!("connection closed after {got} of {bytes} echoed bytes");
            }
            if !pattern.matches(offset + got, &buf[..n]) {
                return Err(Corrupt(format!("echo: {n} bytes at offset {got}")).into());
            }
            got += n as u64;
            c.echoed.fetch_add(n as u64, Ordering::Relaxed);
        }
        anyhow::Ok(())
    };
    tokio::try_join!(writer, reader)?;
    Ok(())
}

/// Downloads `bytes` of the pattern and checks them.
async fn download(s: &mut TcpStream, pattern: &Pattern, bytes: u64, c: &Counters) -> Result<()> {
    let mut cmd = [0u8; 9];
    cmd[0] = CMD_BULK;
    cmd[1..].copy_from_slice(&bytes.to_be_bytes());
    s.write_all(&cmd).await?;
    let mut buf = vec![0u8; BUF];
    let mut got = 0u64;
    while got < bytes {
        let want = (bytes - got).min(BUF as u64) as usize;
        let n = s.read(&mut buf[..want]).await.context("reading bulk")?;
        if n == 0 {
            bail!("connection closed after {got} of {bytes} bulk bytes");
        }
        if !pattern.matches(got, &buf[..n]) {
            return Err(Corrupt(format!("bulk: {n} bytes at offset {got}")).into());
        }
        got += n as u64;
        c.downloaded.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// Where connections go: through one of the SOCKS proxies (round robin) to
/// the origin, or to a name (e.g. `bob.vpn.internal:PORT`).
#[derive(Clone)]
struct Route {
    socks: Vec<SocketAddr>,
    dest: SocketAddrV4,
    name: Option<(&'static str, u16)>,
}

impl Route {
    async fn open(&self, i: usize) -> Result<TcpStream> {
        let proxy = self.socks[i % self.socks.len()];
        tokio::time::timeout(OPEN_TIMEOUT, socks_connect(proxy, self.dest, self.name))
            .await
            .with_context(|| format!("SOCKS connect via {proxy} took over {OPEN_TIMEOUT:?}"))?
    }
}

fn leak_name(n: Option<(String, u16)>) -> Option<(&'static str, u16)> {
    n.map(|(h, p)| (&*Box::leak(h.into_boxed_str()), p))
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Error messages and how often each was seen (digits folded, so the same
/// error on different connections counts once).
#[derive(Default)]
struct Errors(Mutex<BTreeMap<String, u64>>);

impl Errors {
    fn add(&self, e: &anyhow::Error) {
        let msg: String = format!("{e:#}")
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        *self.0.lock().unwrap().entry(msg).or_default() += 1;
    }

    fn json(&self) -> serde_json::Value {
        let m = self.0.lock().unwrap();
        serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                .collect(),
        )
    }
}

#[derive(Args)]
pub struct LoadArgs {
    /// SOCKS5 proxy to go through; repeat to spread connections over several.
    #[arg(long, required = true)]
    socks: Vec<SocketAddr>,
    /// The origin (IPv4 address:port), running `sgbench origin`.
    #[arg(long, value_parser = crate::parse_v4)]
    target: SocketAddrV4,
    /// Concurrent connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Bytes each connection sends (echoed back) and then downloads.
    #[arg(long, default_value = "64K", value_parser = crate::measure::parse_size)]
    bytes: u64,
    /// Connections opening or transferring at once while ramping up (those
    /// done wait at the barrier and do not count).
    #[arg(long, default_value_t = 256)]
    ramp: usize,
    /// Seconds to hold every connection open at the barrier.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// Give up waiting for the barrier after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// A process whose VmRSS, open fds and CPU time are reported, NAME=PID.
    #[arg(long = "rss", value_name = "NAME=PID")]
    rss: Vec<String>,
    /// Like --rss for one of the --socks proxies, in the same order: its
    /// memory per connection counts only the connections it carried.
    #[arg(long = "rss-proxy", value_name = "NAME=PID")]
    rss_proxy: Vec<String>,
    /// Client runtime worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Where to write the JSON result.
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Sample {
    rss_kib: u64,
    fds: usize,
    cpu: f64,
}

fn sample(p: &ProcSpec) -> Result<Sample> {
    Ok(Sample {
        rss_kib: vm_rss_kib(p.pid)?,
        fds: fd_count(p.pid).unwrap_or(0),
        cpu: p.cpu_secs()?,
    })
}

pub async fn run_load(a: LoadArgs) -> Result<()> {
    let mut procs = a
        .rss
        .iter()
        .map(|s| ProcSpec::parse(s, false))
        .collect::<Result<Vec<_>>>()?;
    let n_shared = procs.len();
    for s in &a.rss_proxy {
        procs.push(ProcSpec::parse(s, false)?);
    }
    let route = Route {
        socks: a.socks.clone(),
        dest: a.target,
        name: None,
    };
    let pattern = Arc::new(Pattern::new());
    let counters = Arc::new(Counters::default());
    let errors = Arc::new(Errors::default());
    let before = procs.iter().map(sample).collect::<Result<Vec<_>>>()?;
    let ramp = Arc::new(tokio::sync::Semaphore::new(a.ramp.max(1)));
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let corrupt = Arc::new(AtomicUsize::new(0));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let t0 = Instant::now();
    eprintln!(
        "load: opening {} connections ({} at a time), {} bytes each way",
        a.conns, a.ramp, a.bytes
    );
    let mut tasks = Vec::with_capacity(a.conns);
    for i in 0..a.conns {
        let (route, pattern, counters, errors) = (
            route.clone(),
            pattern.clone(),
            counters.clone(),
            errors.clone(),
        );
        let (ramp, ready, failed, corrupt) =
            (ramp.clone(), ready.clone(), failed.clone(), corrupt.clone());
        let mut release = release_rx.clone();
        let bytes = a.bytes;
        tasks.push(tokio::spawn(async move {
            let fail = |e: anyhow::Error| {
                if is_corrupt(&e) {
                    corrupt.fetch_add(1, Ordering::Relaxed);
                }
                errors.add(&e);
                failed.fetch_add(1, Ordering::Relaxed);
                false
            };
            let permit = ramp.acquire_owned().await.expect("semaphore open");
            let mut s = match route.open(i).await {
                Ok(s) => s,
                Err(e) => return (false, fail(e.context("open"))),
            };
            let offset = (i as u64).wrapping_mul(7919 * 1024 + 13);
            let r = async {
                echo(&mut s, &pattern, offset, bytes, &counters).await?;
                download(&mut s, &pattern, bytes, &counters).await
            }
            .await;
            drop(permit);
            if let Err(e) = r {
                return (true, fail(e));
            }
            ready.fetch_add(1, Ordering::Relaxed);
            // Hold the connection open at the barrier.
            let _ = release.wait_for(|r| *r).await;
            // Still alive after the barrier?
            match tokio::time::timeout(Duration::from_secs(60), ping(&mut s)).await {
                Ok(Ok(())) => (true, true),
                Ok(Err(e)) => (true, fail(e.context("ping after the barrier"))),
                Err(_) => (
                    true,
                    fail(anyhow::anyhow!("ping after the barrier timed out")),
                ),
            }
        }));
    }
    let deadline = t0 + Duration::from_secs(a.timeout_secs);
    let mut last = Instant::now();
    loop {
        let (r, f) = (
            ready.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        );
        if r + f >= a.conns {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("load: gave up waiting for the barrier: {r} ready, {f} failed");
            break;
        }
        if last.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "load: {:.0} s: {r} open and verified, {f} failed",
                t0.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ramp_secs = t0.elapsed().as_secs_f64();
    let at_barrier = ready.load(Ordering::Relaxed);
    eprintln!("load: barrier: {at_barrier} connections open at once after {ramp_secs:.1} s");
    // Let the last replies settle before sampling memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at = procs.iter().map(sample).collect::<Result<Vec<_>>>()?;
    tokio::time::sleep(Duration::from_secs(a.hold_secs)).await;
    let _ = release_tx.send(true);
    let mut opened = 0;
    let mut alive = 0;
    for t in tasks {
        let (o, ok) = t.await.context("connection task panicked")?;
        opened += usize::from(o);
        alive += usize::from(ok);
    }
    let total_secs = t0.elapsed().as_secs_f64();
    let after = procs.iter().map(sample).collect::<Result<Vec<_>>>()?;
    let echoed = counters.echoed.load(Ordering::Relaxed);
    let downloaded = counters.downloaded.load(Ordering::Relaxed);
    let n_failed = failed.load(Ordering::Relaxed);
    let n_corrupt = corrupt.load(Ordering::Relaxed);
    let mut proc_json = Vec::new();
    println!(
        "connections: {} asked, {opened} opened, {at_barrier} open at once at the barrier, \
         {alive} answered a ping after it, {n_failed} failed, {n_corrupt} corrupted",
        a.conns
    );
    println!(
        "bytes verified: {echoed} echoed (sent and returned intact), {downloaded} downloaded; \
         expected {} each",
        a.bytes * a.conns as u64
    );
    println!("ramp to the barrier {ramp_secs:.1} s, total {total_secs:.1} s");
    for (k, ((p, b), (m, e))) in procs
        .iter()
        .zip(&before)
        .zip(at.iter().zip(&after))
        .enumerate()
    {
        // A proxy carried every len(socks)-th connection.
        let carried = if k < n_shared {
            at_barrier as f64
        } else {
            at_barrier as f64 / a.socks.len() as f64
        };
        let per_conn = if at_barrier > 0 {
            (m.rss_kib as f64 - b.rss_kib as f64) / carried
        } else {
            0.0
        };
        let cpu = e.cpu - b.cpu;
        println!(
            "{}: VmRSS {} KiB before, {} KiB at the barrier ({per_conn:.1} KiB per open connection, {carried:.0} connections); \
             fds {} -> {}; CPU {cpu:.2} s",
            p.name, b.rss_kib, m.rss_kib, b.fds, m.fds
        );
        proc_json.push(serde_json::json!({
            "name": p.name, "pid": p.pid,
            "rss_kib_before": b.rss_kib, "rss_kib_barrier": m.rss_kib, "rss_kib_after": e.rss_kib,
            "rss_kib_per_conn": per_conn, "fds_before": b.fds, "fds_barrier": m.fds,
            "cpu_secs": cpu,
        }));
    }
    let errs = errors.json();
    if n_failed > 0 {
        println!("errors: {errs}");
    }
    if let Some(out) = &a.out {
        let v = serde_json::json!({
            "conns": a.conns, "bytes_each_way": a.bytes, "opened": opened,
            "open_at_barrier": at_barrier, "alive_after_barrier": alive,
            "failed": n_failed, "corrupted": n_corrupt,
            "bytes_echoed_verified": echoed, "bytes_downloaded_verified": downloaded,
            "ramp_secs": ramp_secs, "total_secs": total_secs,
            "procs": proc_json, "errors": errs,
        });
        std::fs::write(out, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if n_failed > 0 || n_corrupt > 0 || alive != a.conns {
        bail!(
            "{n_failed} of {} connections failed ({n_corrupt} corrupted)",
            a.conns
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct SoakArgs {
    /// The device proxy for the gateway path (bulk and short requests).
    #[arg(long)]
    socks: SocketAddr,
    /// The origin (IPv4 address:port).
    #[arg(long, value_parser = crate::parse_v4)]
    target: SocketAddrV4,
    /// The proxy of the device that opens peer sessions.
    #[arg(long)]
    peer_socks: Option<SocketAddr>,
    /// HOST:PORT the peer sessions ask for, e.g. bob.vpn.internal:9000.
    #[arg(long, value_parser = crate::measure::parse_host_port)]
    peer_dest: Option<(String, u16)>,
    /// How long to run.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Bulk workers: 32 MiB down + 4 MiB echoed per connection, 0.5 s apart.
    #[arg(long, default_value_t = 2)]
    bulk: usize,
    /// Short-request workers: connect, ping, 1 KiB echo, close.
    #[arg(long, default_value_t = 4)]
    short: usize,
    /// Peer workers: 256 KiB echoed + 1 MiB down per session.
    #[arg(long, default_value_t = 2)]
    peer: usize,
    /// Client runtime worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Where to write the JSON result.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Default)]
struct KindStats {
    ok: AtomicU64,
    failed: AtomicU64,
    corrupt: AtomicU64,
    counters: Counters,
    errors: Errors,
    /// Completed transfers per minute.
    per_minute: Mutex<BTreeMap<u64, (u64, u64)>>,
}

async fn soak_worker(
    kind: &'static str,
    stats: Arc<KindStats>,
    route: Route,
    pattern: Arc<Pattern>,
    t0: Instant,
    end: Instant,
    id: usize,
) {
    let (echo_bytes, bulk_bytes, pause) = match kind {
        // Paused, so that two workers leave CPU for the rest.
        "bulk" => (4 << 20, 32 << 20, 500),
        "short" => (1024, 0, 20),
        _ => (256 << 10, 1 << 20, 50),
    };
    let mut n = 0u64;
    while Instant::now() < end {
        n += 1;
        let offset = (id as u64) << 40 | n.wrapping_mul(4099);
        let r = async {
            let mut s = route.open(id).await.context("open")?;
            if kind == "short" {
                ping(&mut s).await?;
            }
            echo(&mut s, &pattern, offset, echo_bytes, &stats.counters).await?;
            if bulk_bytes > 0 {
                download(&mut s, &pattern, bulk_bytes, &stats.counters).await?;
            }
            anyhow::Ok(())
        };
        let r = tokio::time::timeout(Duration::from_secs(120), r)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("transfer took over 120 s")));
        let minute = t0.elapsed().as_secs() / 60;
        let ok = r.is_ok();
        {
            let mut m = stats.per_minute.lock().unwrap();
            let e = m.entry(minute).or_default();
            if ok {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        match r {
            Ok(()) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if is_corrupt(&e) {
                    stats.corrupt.fetch_add(1, Ordering::Relaxed);
                }
                stats.failed.fetch_add(1, Ordering::Relaxed);
                stats.errors.add(&e);
                // A gateway restart: don't spin.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}

pub async fn run_soak(a: SoakArgs) -> Result<()> {
    let pattern = Arc::new(Pattern::new());
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(a.secs);
    let gw_route = Route {
        socks: vec![a.socks],
        dest: a.target,
        name: None,
    };
    let mut kinds: Vec<(&'static str, usize, Route)> = vec![
        ("bulk", a.bulk, gw_route.clone()),
        ("short", a.short, gw_route),
    ];
    if let (Some(ps), Some(pd)) = (a.peer_socks, a.peer_dest.clone()) {
        kinds.push((
            "peer",
            a.peer,
            Route {
                socks: vec![ps],
                dest: a.target,
                name: leak_name(Some(pd)),
            },
        ));
    }
    let mut stats = Vec::new();
    let mut tasks = Vec::new();
    for (kind, n, route) in kinds {
        let st = Arc::new(KindStats::default());
        for id in 0..n {
            tasks.push(tokio::spawn(soak_worker(
                kind,
                st.clone(),
                route.clone(),
                pattern.clone(),
                t0,
                end,
                id,
            )));
        }
        stats.push((kind, st));
    }
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    while Instant::now() < end {
        tick.tick().await;
        let line: Vec<String> = stats
            .iter()
            .map(|(k, s)| {
                format!(
                    "{k} {} ok {} failed {} corrupt",
                    s.ok.load(Ordering::Relaxed),
                    s.failed.load(Ordering::Relaxed),
                    s.corrupt.load(Ordering::Relaxed)
                )
            })
            .collect();
        eprintln!(
            "soak: {:.0} s: {}",
            t0.elapsed().as_secs_f64(),
            line.join("; ")
        );
    }
    for t in tasks {
        t.await.context("soak worker panicked")?;
    }
    let mut out = serde_json::Map::new();
    let mut total_corrupt = 0;
    let mut total_ok = 0;
    for (k, s) in &stats {
        let ok = s.ok.load(Ordering::Relaxed);
        let failed = s.failed.load(Ordering::Relaxed);
        let corrupt = s.corrupt.load(Ordering::Relaxed);
        let echoed = s.counters.echoed.load(Ordering::Relaxed);
        let down = s.counters.downloaded.load(Ordering::Relaxed);
        total_corrupt += corrupt;
        total_ok += ok;
        let pm: Vec<String> = s
            .per_minute
            .lock()
            .unwrap()
            .iter()
            .map(|(m, (o, f))| format!("m{m}:{o}/{f}"))
            .collect();
        println!(
            "{k}: {ok} transfers complete, {failed} interrupted, {corrupt} corrupted; \
             {echoed} bytes echoed and {down} downloaded, every one checked; \
             per minute ok/failed: {}",
            pm.join(" ")
        );
        let errs = s.errors.json();
        if failed > 0 {
            println!("{k} errors: {errs}");
        }
        out.insert(
            (*k).to_string(),
            serde_json::json!({
                "ok": ok, "failed": failed, "corrupted": corrupt,
                "bytes_echoed_verified": echoed, "bytes_downloaded_verified": down,
                "per_minute_ok_failed": pm, "errors": errs,
            }),
        );
    }
    if let Some(p) = &a.out {
        std::fs::write(
            p,
            serde_json::to_vec_pretty(&serde_json::Value::Object(out))?,
        )
        .with_context(|| format!("writing {}", p.display()))?;
    }
    if total_corrupt > 0 {
        bail!("{total_corrupt} transfers came back corrupted");
    }
    if total_ok == 0 {
        bail!("no transfer completed");
    }
    Ok(())
}
