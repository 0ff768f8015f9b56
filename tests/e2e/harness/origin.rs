//! Origin servers inside the test process (tokio, on their own runtime, so
//! the test body can block freely). Each counts accepted connections.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const CHUNK: usize = 1 << 20;

#[derive(Clone, Debug)]
pub enum Mode {
    /// Answers any request with `200 OK` and `body`, then closes.
    Http { body: String },
    /// Echoes bytes back until EOF, then closes.
    Echo,
    /// Reads until EOF (the client's half-close), then answers
    /// `received N sha256 HEX\n` followed by `extra` pattern bytes, then closes.
    ReadThenReply { extra: usize },
    /// Sends `len` pattern bytes, records their SHA-256, then closes.
    Source { len: u64 },
    /// Reads until EOF, records the SHA-256 of what it got, answers `HEX\n`.
    Sink,
    /// Sends `chunk` bytes every `every`, forever, until the peer goes away.
    Stream { chunk: usize, every: Duration },
}

pub struct Origin {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    hashes: Arc<Mutex<Vec<(u64, String)>>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Origin {
    /// An origin on `ip`, port chosen by the kernel.
    pub fn start(ip: IpAddr, mode: Mode) -> Origin {
        let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("bind origin on {ip}: {e}"));
        Origin::from_listener(l, mode)
    }

    pub fn http(ip: IpAddr, body: &str) -> Origin {
        Origin::start(
            ip,
            Mode::Http {
                body: body.to_owned(),
            },
        )
    }

    /// Serves on an already bound listener (e.g. one bound inside a network
    /// namespace).
    pub fn from_listener(l: std::net::TcpListener, mode: Mode) -> Origin {
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("origin runtime");
        let accepted = Arc::new(AtomicUsize::new(0));
        let hashes = Arc::new(Mutex::new(Vec::new()));
        let (acc, hs) = (accepted.clone(), hashes.clone());
        rt.spawn(async move {
            let listener = TcpListener::from_std(l).expect("tokio listener");
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                acc.fetch_add(1, Ordering::SeqCst);
                let _ = sock.set_nodelay(true);
                let mode = mode.clone();
                let hs = hs.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, mode, hs).await;
                });
            }
        });
        Origin {
            addr,
            accepted,
            hashes,
            rt: Some(rt),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many TCP connections this origin has accepted so far. A tunnel
    /// reported as open may still sit in the listen backlog: to count it,
    /// use [`Origin::expect_accepted`].
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Asserts that exactly `n` connections were accepted, waiting (up to
    /// 5 s) for ones still in the listen backlog.
    #[track_caller]
    pub fn expect_accepted(&self, n: usize, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.accepted() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            self.accepted(),
            n,
            "{what}: connections accepted by the origin"
        );
    }

    /// Waits for the next recorded `(byte count, sha256 hex)` (Source/Sink;
    /// a Sink connection cut by a reset records its count and `(cut: ...)`).
    pub fn wait_hash(&self, limit: Duration) -> (u64, String) {
        super::proc::poll(
            "the origin to record a SHA-256",
            limit,
            Duration::from_millis(20),
            || self.hashes.lock().unwrap().first().cloned(),
        )
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve(
    mut sock: TcpStream,
    mode: Mode,
    hashes: Arc<Mutex<Vec<(u64, String)>>>,
) -> std::io::Result<()> {
    match mode {
        Mode::Http { body } => {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                let n = sock.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            sock.write_all(resp.as_bytes()).await?;
            sock.shutdown().await?;
        }
        Mode::Echo => {
            let (mut r, mut w) = sock.split();
            tokio::io::copy(&mut r, &mut w).await?;
            w.shutdown().await?;
        }
        Mode::ReadThenReply { extra } => {
            let mut h = Hasher::new();
            let mut n = 0;
            read_all_hashing(&mut sock, &mut h, &mut n).await?;
            let head = format!("received {n} sha256 {}\n", h.hex());
            sock.write_all(head.as_bytes()).await?;
            write_pattern(&mut sock, extra as u64, &mut Hasher::new()).await?;
            sock.shutdown().await?;
        }
        Mode::Source { len } => {
            let mut h = Hasher::new();
            write_pattern(&mut sock, len, &mut h).await?;
            sock.shutdown().await?;
            hashes.lock().unwrap().push((len, h.hex()));
        }
        Mode::Sink => {
            let mut h = Hasher::new();
            let mut n = 0;
            let read = read_all_hashing(&mut sock, &mut h, &mut n).await;
            // A connection cut by a reset is recorded too, with what arrived
            // before it and no hash: "nothing arrived" stays checkable.
            let hex = match &read {
                Ok(()) => h.hex(),
                Err(e) => format!("(cut: {e})"),
            };
            hashes.lock().unwrap().push((n, hex.clone()));
            read?;
            sock.write_all(format!("{hex}\n").as_bytes()).await?;
            sock.shutdown().await?;
        }
        Mode::Stream { chunk, every } => {
            let data = vec![b'x'; chunk];
            loop {
                sock.write_all(&data).await?;
                tokio::time::sleep(every).await;
            }
        }
    }
    Ok(())
}

/// Reads to EOF, hashing; `total` counts what arrived, also when it fails.
async fn read_all_hashing(
    sock: &mut TcpStream,
    h: &mut Hasher,
    total: &mut u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
        *total += n as u64;
    }
}

async fn write_pattern(sock: &mut TcpStream, len: u64, h: &mut Hasher) -> std::io::Result<()> {
    let mut chunk = vec![0u8; CHUNK];
    let mut sent = 0u64;
    let mut i = 0u64;
    while sent < len {
        let n = ((len - sent) as usize).min(CHUNK);
        pattern_chunk(i, &mut chunk);
        h.update(&chunk[..n]);
        sock.write_all(&chunk[..n]).await?;
        sent += n as u64;
        i += 1;
    }
    Ok(())
}

/// Chunk `i` of the deterministic test pattern: a pseudo-random 1 MiB block
/// whose first 8 bytes are `i`, so that lost, repeated or reordered chunks
/// change the hash.
pub fn pattern_chunk(i: u64, out: &mut [u8]) {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut v = vec![0u8; CHUNK];
        for c in v.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        v
    });
    out.copy_from_slice(&base[..out.len()]);
    let k = out.len().min(8);
    out[..k].copy_from_slice(&i.to_le_bytes()[..k]);
}

/// SHA-256 (aws-lc: fast even in debug builds).
pub struct Hasher(aws_lc_rs::digest::Context);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn hex(self) -> String {
        hex::encode(self.0.finish().as_ref())
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::new()
    }
}
