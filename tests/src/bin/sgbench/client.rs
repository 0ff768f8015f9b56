//! The measuring client: a minimal SOCKS5 client (no authentication, CONNECT,
//! IPv4 or domain name address type) and the origin protocol operations.

use std::net::{SocketAddr, SocketAddrV4};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::origin::{CMD_BULK, CMD_PING, PONG, Pattern};

/// Where a measured connection goes: straight to the origin, or through a
/// SOCKS5 proxy that connects to the origin.
#[derive(Clone, Copy, Debug)]
pub struct Path {
    pub socks: Option<SocketAddr>,
    /// The origin, for a direct connection.
    pub dest: SocketAddrV4,
    /// The name the SOCKS CONNECT asks for instead of `dest` (address type
    /// 3, e.g. `bob.vpn.internal:PORT` for a peer path), when given.
    pub dest_name: Option<(&'static str, u16)>,
}

impl Path {
    /// Opens a connection to the origin along this path. For a proxy this is
    /// TCP connect + method negotiation + CONNECT, waiting for each reply like
    /// a well-behaved client (no pipelining).
    pub async fn open(&self) -> Result<TcpStream> {
        match self.socks {
            None => {
                let s = TcpStream::connect(self.dest)
                    .await
                    .with_context(|| format!("connecting to {}", self.dest))?;
                s.set_nodelay(true)?;
                Ok(s)
            }
            Some(proxy) => socks_connect(proxy, self.dest, self.dest_name).await,
        }
    }
}

/// SOCKS5 CONNECT through `proxy` to `dest`, or to the host name and port
/// `name` when given.
pub async fn socks_connect(
    proxy: SocketAddr,
    dest: SocketAddrV4,
    name: Option<(&'static str, u16)>,
) -> Result<TcpStream> {
    let mut s = TcpStream::connect(proxy)
        .await
        .with_context(|| format!("connecting to SOCKS proxy {proxy}"))?;
    s.set_nodelay(true)?;
    s.write_all(&[5, 1, 0]).await?;
    let mut method = [0u8; 2];
    s.read_exact(&mut method)
        .await
        .context("reading SOCKS method selection")?;
    if method[0] != 5 {
        bail!("SOCKS method reply has version {:#04x}, not 5", method[0]);
    }
    if method[1] != 0 {
        bail!(
            "SOCKS proxy refused the no-authentication method (chose {:#04x})",
            method[1]
        );
    }
    let mut req = Vec::with_capacity(7 + 255);
    match name {
        None => {
            req.extend_from_slice(&[5, 1, 0, 1]);
            req.extend_from_slice(&dest.ip().octets());
            req.extend_from_slice(&dest.port().to_be_bytes());
        }
        Some((host, port)) => {
            let len = u8::try_from(host.len()).context("SOCKS host name longer than 255 bytes")?;
            req.extend_from_slice(&[5, 1, 0, 3, len]);
            req.extend_from_slice(host.as_bytes());
            req.extend_from_slice(&port.to_be_bytes());
        }
    }
    s.write_all(&req).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head)
        .await
        .context("reading SOCKS CONNECT reply")?;
    if head[0] != 5 {
        bail!("SOCKS CONNECT reply has version {:#04x}, not 5", head[0]);
    }
    if head[1] != 0 {
        bail!(
            "SOCKS CONNECT to {} failed: reply {:#04x} ({})",
            name.map_or_else(|| dest.to_string(), |(h, p)| format!("{h}:{p}")),
            head[1],
            shimgate_wire::tunnel::socks_reply_name(head[1])
        );
    }
    // Skip BND.ADDR and BND.PORT.
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await?;
            usize::from(len[0]) + 2
        }
        other => bail!("SOCKS CONNECT reply has unknown address type {other:#04x}"),
    };
    let mut skip = [0u8; 258];
    s.read_exact(&mut skip[..rest])
        .await
        .context("reading SOCKS CONNECT reply address")?;
    Ok(s)
}

/// One 1-byte request / 1-byte response exchange with the origin.
pub async fn ping(s: &mut TcpStream) -> Result<()> {
    s.write_all(&[CMD_PING]).await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
        .await
        .context("reading ping response")?;
    if b[0] != PONG {
        bail!("origin answered ping with {:#04x}", b[0]);
    }
    Ok(())
}

/// Asks the origin for `bytes` bytes and reads them all. With `verify`, every
/// byte is compared with the origin's pattern. Returns the seconds from the
/// request to the last byte.
pub async fn bulk(s: &mut TcpStream, bytes: u64, verify: Option<&Pattern>) -> Result<f64> {
    let mut cmd = [0u8; 9];
    cmd[0] = CMD_BULK;
    cmd[1..].copy_from_slice(&bytes.to_be_bytes());
    let mut buf = vec![0u8; 512 * 1024];
    let t0 = std::time::Instant::now();
    s.write_all(&cmd).await?;
    let mut got = 0u64;
    while got < bytes {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            bail!("connection closed after {got} of {bytes} bytes");
        }
        if got + n as u64 > bytes {
            bail!("origin sent more than the {bytes} bytes asked for");
        }
        if let Some(p) = verify
            && !p.matches(got, &buf[..n])
        {
            bail!("bulk data corrupted in the {n} bytes at offset {got}");
        }
        got += n as u64;
    }
    Ok(t0.elapsed().as_secs_f64())
}
