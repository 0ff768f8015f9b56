//! Carrying a local socket over a link: [`splice`], and the bytes it
//! moved.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::LinkError;
use super::link::Link;

/// Plaintext read from the local socket at once, sealed into frames and
/// written with one syscall: starts at [`FIRST_CHUNK`] and doubles while
/// reads fill it (a bulk transfer), up to this.
const SEND_CHUNK: usize = 256 * 1024;
const FIRST_CHUNK: usize = 16 * 1024;

/// Bytes moved by [`splice`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// From the local socket into the link.
    pub sent: u64,
    /// From the link into the local socket.
    pub received: u64,
}

/// Moves bytes between a local socket (`plain_rd`/`plain_wr`) and a link
/// until both directions are done; a half-close travels through. An error
/// in either direction ends both. `sent`/`received` count as bytes move,
/// so a live view (`shimgate peers`) can read them.
pub async fn splice<PR, PW, R, W>(
    plain_rd: PR,
    plain_wr: PW,
    link: Link<R, W>,
    sent: &std::sync::atomic::AtomicU64,
    received: &std::sync::atomic::AtomicU64,
) -> Result<Moved, LinkError>
where
    PR: AsyncRead + Unpin,
    PW: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use std::sync::atomic::Ordering::Relaxed;
    let Link {
        mut reader,
        mut writer,
    } = link;
    let up = async {
        let mut plain_rd = plain_rd;
        let mut buf = vec![0u8; FIRST_CHUNK];
        let mut total = 0u64;
        loop {
            let n = plain_rd.read(&mut buf).await?;
            if n == 0 {
                writer.close().await?;
                return Ok::<u64, LinkError>(total);
            }
            writer.send(buf.get(..n).unwrap_or_default()).await?;
            if n == buf.len() && buf.len() < SEND_CHUNK {
                buf.resize(buf.len() * 2, 0);
            }
            total += n as u64;
            sent.fetch_add(n as u64, Relaxed);
        }
    };
    let down = async {
        let mut plain_wr = plain_wr;
        let mut total = 0u64;
        let mut out = Vec::new();
        while reader.recv_batch(&mut out, SEND_CHUNK).await? {
            plain_wr.write_all(&out).await?;
            total += out.len() as u64;
            received.fetch_add(out.len() as u64, Relaxed);
            out.clear();
        }
        plain_wr.shutdown().await?;
        Ok::<u64, LinkError>(total)
    };
    // Both directions until both end; an error in either ends both.
    let (sent, received) = tokio::try_join!(up, down)?;
    Ok(Moved { sent, received })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use tokio::io::{duplex, split};

    use super::*;
    use crate::peerlink::testing::{KEY, pair};

    #[tokio::test]
    async fn splice_carries_a_stream_and_counts_it() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (a, b) = (a.unwrap(), b.unwrap());
        let (mut app_a, sock_a) = duplex(1 << 16);
        let (mut app_b, sock_b) = duplex(1 << 16);
        let (ra, wa) = split(sock_a);
        let (rb, wb) = split(sock_b);
        let counters = [
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
        ];
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let client = async {
            app_a.write_all(&data).await.unwrap();
            app_a.shutdown().await.unwrap();
            let mut back = Vec::new();
            app_a.read_to_end(&mut back).await.unwrap();
            back
        };
        let server = async {
            let mut got = Vec::new();
            app_b.read_to_end(&mut got).await.unwrap();
            app_b.write_all(&got[..10]).await.unwrap();
            app_b.shutdown().await.unwrap();
            got
        };
        let (back, got, ma, mb) = tokio::join!(
            client,
            server,
            splice(ra, wa, a, &counters[0], &counters[1]),
            splice(rb, wb, b, &counters[2], &counters[3]),
        );
        assert_eq!(got, data);
        assert_eq!(back, data[..10]);
        let (ma, mb) = (ma.unwrap(), mb.unwrap());
        assert_eq!((ma.sent, ma.received), (1_000_000, 10));
        assert_eq!((mb.sent, mb.received), (10, 1_000_000));
        assert_eq!(
            counters[0].load(std::sync::atomic::Ordering::Relaxed),
            1_000_000
        );
    }
}
