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
//! * `udp-rtt`, `udp-flood --target ADDR [--socks ADDR]`: UDP round trips
//!   and datagrams/s against a UDP echo, directly or through a SOCKS5 UDP
//!   ASSOCIATE (`tests/bench/shim.sh`; see [`udp`]).
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
    /// Sequential UDP round trips to a UDP echo, directly or via SOCKS5 UDP ASSOCIATE.
    UdpRtt(udp::RttArgs),
    /// UDP datagrams/s and loss to a UDP echo with a window in flight.
    UdpFlood(udp::FloodArgs),
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
        Cmd::UdpRtt(args) => udp::rtt(args),
        Cmd::UdpFlood(args) => udp::flood(args),
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

/// `sgbench udp-rtt` and `udp-flood`: one UDP client, the same code for every
/// path, so a direct path, shimgate's SOCKS port and another SOCKS5 proxy
/// (shadowsocks-rust's `sslocal`) compare like for like. It mirrors the
/// Python client of `tests/bench/shim.sh` (which runs under `shimgate run`):
/// one unconnected socket, blocking `send_to`/`recv_from` on one thread,
/// every payload starting with its 8-byte big-endian sequence number, and
/// the same output lines. An answer that is not the one awaited (late, from
/// another address, or naming another source in its SOCKS header) is not
/// counted as an answer.
///
/// Through a proxy: TCP connect, no-authentication method, UDP ASSOCIATE
/// naming `0.0.0.0:<our UDP port>`, then every datagram goes to the relay
/// address of the reply (the proxy's address when the reply says 0.0.0.0)
/// with a 10-byte SOCKS header (IPv4 target), and the association's TCP
/// connection stays open until the end.
mod udp {
    use std::collections::HashMap;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result, bail};
    use clap::Args;

    /// Warm-up round trips before the timed ones.
    const WARMUP: u64 = 20;
    /// A round trip unanswered this long is lost.
    const RTT_TIMEOUT: Duration = Duration::from_secs(1);
    /// In a flood: warm-up before the measured window, how long a datagram
    /// may stay unanswered, how often that is checked, the receive timeout,
    /// and how long to wait for the stragglers after the window.
    const FLOOD_WARMUP: Duration = Duration::from_millis(500);
    const FLOOD_LOST_AFTER: Duration = Duration::from_millis(500);
    const FLOOD_EXPIRY_EVERY: Duration = Duration::from_millis(100);
    const FLOOD_RECV_TIMEOUT: Duration = Duration::from_millis(50);
    const FLOOD_DRAIN: Duration = Duration::from_secs(1);

    #[derive(Args)]
    pub struct PathArgs {
        /// The UDP echo (IPv4 address:port).
        #[arg(long)]
        target: SocketAddrV4,
        /// SOCKS5 proxy whose UDP ASSOCIATE to use; without it, send to the
        /// echo directly.
        #[arg(long)]
        socks: Option<SocketAddr>,
        /// Payload bytes per datagram (at least 8: the sequence number).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(8..=1472))]
        size: u16,
    }

    #[derive(Args)]
    pub struct RttArgs {
        #[command(flatten)]
        path: PathArgs,
        /// Timed sequential round trips (after 20 warm-up ones).
        #[arg(long, default_value_t = 2000)]
        count: u64,
    }

    #[derive(Args)]
    pub struct FloodArgs {
        #[command(flatten)]
        path: PathArgs,
        /// Measured seconds (after 0.5 s of warm-up).
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Datagrams kept outstanding.
        #[arg(long, default_value_t = 64)]
        inflight: usize,
    }

    enum Recv {
        /// An answer from the echo, with its sequence number.
        Answer(u64),
        /// A datagram that is not an answer from the echo.
        Other,
        /// Nothing within the socket's read timeout.
        Timeout,
    }

    struct Path {
        sock: UdpSocket,
        /// Where datagrams go and answers come from: the echo, or the relay.
        to: SocketAddr,
        target: SocketAddrV4,
        socks: bool,
        /// The association's TCP connection (SOCKS only): its end would end
        /// the association.
        _control: Option<TcpStream>,
        /// Seconds from the TCP connect to the ASSOCIATE reply (SOCKS only).
        associate_secs: Option<f64>,
        /// The datagram sent, sequence number at `seq_at`.
        packet: Vec<u8>,
        seq_at: usize,
        buf: Vec<u8>,
    }

    impl Path {
        fn open(a: &PathArgs) -> Result<Path> {
            let sock =
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding a UDP socket")?;
            let (to, control, associate_secs) = match a.socks {
                None => (SocketAddr::V4(a.target), None, None),
                Some(proxy) => {
                    let t0 = Instant::now();
                    let (control, relay) = associate(proxy, sock.local_addr()?.port())?;
                    (relay, Some(control), Some(t0.elapsed().as_secs_f64()))
                }
            };
            let mut packet = Vec::new();
            if a.socks.is_some() {
                // RSV RSV FRAG ATYP=IPv4 ADDR PORT
                packet.extend_from_slice(&[0, 0, 0, 1]);
                packet.extend_from_slice(&a.target.ip().octets());
                packet.extend_from_slice(&a.target.port().to_be_bytes());
            }
            let seq_at = packet.len();
            packet.resize(seq_at + usize::from(a.size), 0);
            Ok(Path {
                sock,
                to,
                target: a.target,
                socks: a.socks.is_some(),
                _control: control,
                associate_secs,
                packet,
                seq_at,
                buf: vec![0u8; 65536],
            })
        }

        fn send(&mut self, seq: u64) -> Result<()> {
            self.packet[self.seq_at..self.seq_at + 8].copy_from_slice(&seq.to_be_bytes());
            self.sock
                .send_to(&self.packet, self.to)
                .with_context(|| format!("sending to {}", self.to))?;
            Ok(())
        }

        fn recv(&mut self) -> Result<Recv> {
            let (n, from) = match self.sock.recv_from(&mut self.buf) {
                Ok(got) => got,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    return Ok(Recv::Timeout);
                }
                Err(e) => return Err(e).context("receiving"),
            };
            if from != self.to {
                return Ok(Recv::Other);
            }
            let d = &self.buf[..n];
            let payload = if self.socks {
                match socks_source(d) {
                    Some((src, at)) if src == SocketAddr::V4(self.target) => &d[at..],
                    _ => return Ok(Recv::Other),
                }
            } else {
                d
            };
            match payload.first_chunk::<8>() {
                Some(seq) => Ok(Recv::Answer(u64::from_be_bytes(*seq))),
                None => Ok(Recv::Other),
            }
        }

        /// Seconds for one answered datagram, or None when lost.
        fn round_trip(&mut self, seq: u64) -> Result<Option<f64>> {
            let t0 = Instant::now();
            self.send(seq)?;
            loop {
                match self.recv()? {
                    Recv::Answer(s) if s == seq => return Ok(Some(t0.elapsed().as_secs_f64())),
                    Recv::Timeout => return Ok(None),
                    _ if t0.elapsed() >= RTT_TIMEOUT => return Ok(None),
                    _ => {}
                }
            }
        }
    }

    /// SOCKS5 UDP ASSOCIATE through `proxy` for a client sending from
    /// `udp_port`; returns the held TCP connection and the relay's address.
    fn associate(proxy: SocketAddr, udp_port: u16) -> Result<(TcpStream, SocketAddr)> {
        let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5))
            .with_context(|| format!("connecting to SOCKS proxy {proxy}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&[5, 1, 0])?;
        let mut method = [0u8; 2];
        s.read_exact(&mut method)
            .context("reading SOCKS method selection")?;
        if method != [5, 0] {
            bail!("SOCKS proxy answered the no-authentication offer with {method:02x?}");
        }
        let mut req = vec![5, 3, 0, 1, 0, 0, 0, 0];
        req.extend_from_slice(&udp_port.to_be_bytes());
        s.write_all(&req)?;
        let mut head = [0u8; 4];
        s.read_exact(&mut head)
            .context("reading SOCKS UDP ASSOCIATE reply")?;
        if head[0] != 5 {
            bail!(
                "SOCKS UDP ASSOCIATE reply has version {:#04x}, not 5",
                head[0]
            );
        }
        if head[1] != 0 {
            bail!(
                "SOCKS UDP ASSOCIATE refused: reply {:#04x} ({})",
                head[1],
                shimgate_wire::tunnel::socks_reply_name(head[1])
            );
        }
        let ip = match head[3] {
            1 => {
                let mut a = [0u8; 4];
                s.read_exact(&mut a)?;
                IpAddr::from(a)
            }
            4 => {
                let mut a = [0u8; 16];
                s.read_exact(&mut a)?;
                IpAddr::from(Ipv6Addr::from(a))
            }
            other => {
                bail!("SOCKS UDP ASSOCIATE reply has address type {other:#04x}, not an IP address")
            }
        };
        let mut port = [0u8; 2];
        s.read_exact(&mut port)?;
        let mut relay = SocketAddr::new(ip.to_canonical(), u16::from_be_bytes(port));
        if relay.ip().is_unspecified() {
            relay.set_ip(proxy.ip());
        }
        s.set_read_timeout(None)?;
        Ok((s, relay))
    }

    /// The source address in a SOCKS UDP header and where the payload
    /// starts; None for a fragment, a host name or a short datagram.
    fn socks_source(d: &[u8]) -> Option<(SocketAddr, usize)> {
        if d.len() < 4 || d[2] != 0 {
            return None;
        }
        let (ip, at) = match d[3] {
            1 => (IpAddr::from(<[u8; 4]>::try_from(d.get(4..8)?).ok()?), 8),
            4 => (IpAddr::from(<[u8; 16]>::try_from(d.get(4..20)?).ok()?), 20),
            _ => return None,
        };
        let port = u16::from_be_bytes(d.get(at..at + 2)?.try_into().ok()?);
        Some((SocketAddr::new(ip.to_canonical(), port), at + 2))
    }

    fn us(secs: Option<f64>) -> String {
        secs.map_or_else(|| "nan".to_owned(), |s| format!("{:.0}", s * 1e6))
    }

    /// Nearest-rank percentile of sorted values.
    fn rank(sorted: &[f64], p: f64) -> Option<f64> {
        if sorted.is_empty() {
            return None;
        }
        let r = (p / 100.0 * sorted.len() as f64).ceil() as usize;
        Some(sorted[r.clamp(1, sorted.len()) - 1])
    }

    /// `count` sequential round trips after 20 warm-up ones (the first of
    /// which includes any relay setup: reported). Prints:
    /// `first_us answered lost p50_us p99_us mean_us associate_us`
    /// (associate_us: TCP connect to ASSOCIATE reply; "nan" when direct).
    pub fn rtt(a: RttArgs) -> Result<()> {
        let mut p = Path::open(&a.path)?;
        p.sock.set_read_timeout(Some(RTT_TIMEOUT))?;
        let first = p.round_trip(0)?;
        for seq in 1..WARMUP {
            p.round_trip(seq)?;
        }
        let mut ok = Vec::with_capacity(usize::try_from(a.count).unwrap_or(0));
        for i in 0..a.count {
            if let Some(t) = p.round_trip(WARMUP + i)? {
                ok.push(t);
            }
        }
        ok.sort_by(f64::total_cmp);
        let mean = (!ok.is_empty()).then(|| ok.iter().sum::<f64>() / ok.len() as f64);
        println!(
            "{} {} {} {} {} {} {}",
            us(first),
            ok.len(),
            a.count - ok.len() as u64,
            us(rank(&ok, 50.0)),
            us(rank(&ok, 99.0)),
            us(mean),
            us(p.associate_secs)
        );
        Ok(())
    }

    /// Keeps `inflight` datagrams outstanding for `secs` after 0.5 s of
    /// warm-up; one unanswered for 0.5 s is lost (and frees its place).
    /// Prints: `sent answered lost late answered_per_s`, for the datagrams
    /// sent in the measured window.
    pub fn flood(a: FloodArgs) -> Result<()> {
        if !a.secs.is_finite() || a.secs <= 0.0 || a.inflight == 0 {
            bail!("--secs and --inflight must be positive");
        }
        let mut p = Path::open(&a.path)?;
        p.sock.set_read_timeout(Some(FLOOD_RECV_TIMEOUT))?;
        let mut out: HashMap<u64, Instant> = HashMap::with_capacity(a.inflight * 2);
        let (mut seq, mut sent, mut lost, mut late, mut answered_in_window) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        let start = Instant::now();
        let measure_from = start + FLOOD_WARMUP;
        let end = measure_from + Duration::from_secs_f64(a.secs);
        let mut next_expiry = start + FLOOD_EXPIRY_EVERY;
        loop {
            let t = Instant::now();
            if t < end {
                while out.len() < a.inflight {
                    p.send(seq)?;
                    out.insert(seq, t);
                    sent += u64::from(t >= measure_from);
                    seq += 1;
                }
            } else if out.is_empty() || t > end + FLOOD_DRAIN {
                break;
            }
            if t >= next_expiry {
                next_expiry = t + FLOOD_EXPIRY_EVERY;
                out.retain(|_, ts| {
                    let keep = t.duration_since(*ts) <= FLOOD_LOST_AFTER;
                    if !keep && *ts >= measure_from {
                        lost += 1;
                    }
                    keep
                });
            }
            match p.recv()? {
                Recv::Timeout => {}
                Recv::Other => late += 1,
                Recv::Answer(s) => {
                    let got = Instant::now();
                    match out.remove(&s) {
                        None => late += 1,
                        Some(_) if got >= measure_from && got <= end => answered_in_window += 1,
                        Some(_) => {}
                    }
                }
            }
        }
        lost += out.values().filter(|ts| **ts >= measure_from).count() as u64;
        println!(
            "{sent} {} {lost} {late} {:.0}",
            sent.saturating_sub(lost),
            answered_in_window as f64 / a.secs
        );
        Ok(())
    }
}
