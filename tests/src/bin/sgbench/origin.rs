//! The origin server. Per connection it reads 1-byte commands until EOF:
//!
//! * `B` + 8-byte big-endian length: sends that many bytes of a fixed
//!   pseudo-random pattern (from one reused buffer, so the origin costs little
//!   CPU), then waits for the next command.
//! * `P`: replies with the single byte `p` (a 1-byte request/response; idle
//!   connections send one and then stay open).
//! * `E` + 8-byte big-endian length: echoes that many bytes back as they
//!   arrive (the load and soak tests check them), then waits for the next
//!   command.
//!
//! Anything else closes the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const CMD_BULK: u8 = b'B';
pub const CMD_PING: u8 = b'P';
pub const PONG: u8 = b'p';
pub const CMD_ECHO: u8 = b'E';

/// The bulk byte stream: byte `i` is `data[i % data.len()]`.
pub struct Pattern {
    data: Vec<u8>,
}

impl Pattern {
    const LEN: usize = 256 * 1024;

    pub fn new() -> Self {
        // xorshift64: incompressible enough that no path can cheat by
        // compressing, and the same on both sides.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut data = Vec::with_capacity(Self::LEN);
        while data.len() < Self::LEN {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        Self { data }
    }

    /// Fills `out` with the stream content starting at `offset`.
    pub fn fill(&self, offset: u64, out: &mut [u8]) {
        let mut pos = (offset % self.data.len() as u64) as usize;
        let mut out = out;
        while !out.is_empty() {
            let n = out.len().min(self.data.len() - pos);
            out[..n].copy_from_slice(&self.data[pos..pos + n]);
            out = &mut out[n..];
            pos = 0;
        }
    }

    /// Whether `chunk` is the stream content starting at `offset`.
    pub fn matches(&self, offset: u64, mut chunk: &[u8]) -> bool {
        let mut pos = (offset % self.data.len() as u64) as usize;
        while !chunk.is_empty() {
            let n = chunk.len().min(self.data.len() - pos);
            if chunk[..n] != self.data[pos..pos + n] {
                return false;
            }
            chunk = &chunk[n..];
            pos = 0;
        }
        true
    }
}

pub async fn serve(listen: SocketAddr) -> Result<()> {
    let sock = if listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(listen)
        .with_context(|| format!("binding origin to {listen}"))?;
    let listener = sock.listen(4096)?;
    eprintln!("origin listening addr={}", listener.local_addr()?);
    let pattern = Arc::new(Pattern::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: keep serving the connections we have.
                eprintln!("origin accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let pattern = pattern.clone();
        tokio::spawn(async move {
            // Errors here are the client's business (e.g. it closed mid-bulk).
            let _ = handle(stream, &pattern).await;
        });
    }
}

async fn handle(mut s: TcpStream, pattern: &Pattern) -> Result<()> {
    s.set_nodelay(true)?;
    let mut cmd = [0u8; 1];
    loop {
        if s.read(&mut cmd).await? == 0 {
            return Ok(());
        }
        match cmd[0] {
            CMD_PING => s.write_all(&[PONG]).await?,
            CMD_BULK => {
                let mut len = [0u8; 8];
                s.read_exact(&mut len).await?;
                let mut left = u64::from_be_bytes(len);
                while left > 0 {
                    let n = left.min(pattern.data.len() as u64) as usize;
                    s.write_all(&pattern.data[..n]).await?;
                    left -= n as u64;
                }
            }
            CMD_ECHO => {
                let mut len = [0u8; 8];
                s.read_exact(&mut len).await?;
                let mut left = u64::from_be_bytes(len);
                let mut buf = vec![0u8; 64 * 1024];
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    let n = s.read(&mut buf[..want]).await?;
                    if n == 0 {
                        return Ok(());
                    }
                    s.write_all(&buf[..n]).await?;
                    left -= n as u64;
                }
            }
            _ => return Ok(()),
        }
    }
}
