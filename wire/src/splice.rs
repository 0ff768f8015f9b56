//! Moves bytes between a byte stream (a SOCKS client's socket on the device,
//! the destination's socket on the gateway) and one HTTP/2 stream.
//!
//! Both directions run at once and end independently, so a half-close
//! travels end to end: EOF on the socket becomes END_STREAM, END_STREAM
//! becomes `shutdown()` of the socket's write side. Received bytes are
//! released to the peer's flow-control window only after they were written
//! to the socket, which is what gives backpressure.

use std::io;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::h2tuning::CHUNK;

/// First read size of a tunnel.
const MIN_READ: usize = 4096;

/// Bytes moved by [`splice`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// From the socket into the HTTP/2 stream.
    pub up: u64,
    /// From the HTTP/2 stream into the socket.
    pub down: u64,
}

/// Copies until both directions are finished. An error in either direction
/// ends both: the stream is reset and the socket closed with a reset
/// ([`reset`]), so neither end waits on a peer that is gone, nor takes a
/// cut-short stream for a whole one.
pub async fn splice(
    sock: TcpStream,
    send: SendStream<Bytes>,
    recv: RecvStream,
) -> io::Result<Moved> {
    // Owned halves: no lock between the two directions.
    let (mut rd, mut wr) = sock.into_split();
    let moved = splice_halves(&mut rd, &mut wr, send, recv).await;
    if moved.is_err() {
        reset(rd, wr);
    }
    moved
}

/// Closes a socket with a TCP reset (SO_LINGER 0) instead of a FIN: for a
/// connection whose other half failed, so that the program on this socket
/// sees an error rather than what looks like a clean end of data.
pub fn reset(rd: OwnedReadHalf, wr: OwnedWriteHalf) {
    if let Ok(sock) = rd.reunite(wr) {
        let _ = sock.set_zero_linger();
    }
}

/// [`splice`] over any byte stream's halves (a TUN flow's); on an error the
/// stream is reset and the caller closes its side as it can.
pub async fn splice_halves<R: AsyncRead, W: AsyncWrite>(
    rd: R,
    wr: W,
    send: SendStream<Bytes>,
    recv: RecvStream,
) -> io::Result<Moved> {
    // Both directions until both end; an error in either ends both.
    let (up, down) = tokio::try_join!(socket_to_h2(rd, send), h2_to_socket(recv, wr))?;
    Ok(Moved { up, down })
}

async fn socket_to_h2<R: AsyncRead>(rd: R, mut send: SendStream<Bytes>) -> io::Result<u64> {
    tokio::pin!(rd);
    let mut total = 0u64;
    // Start small so that idle tunnels cost little memory; grow while reads
    // fill the buffer (a bulk transfer), up to CHUNK.
    let mut want = MIN_READ;
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(want);
        // Also watch for the stream being reset (or its connection cut)
        // while the socket is quiet, so the socket is not held open for a
        // peer that is gone.
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            reset = std::future::poll_fn(|cx| send.poll_reset(cx)) => {
                let why = match reset {
                    Ok(reason) => format!("stream reset by the peer ({reason})"),
                    Err(e) => e.to_string(),
                };
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, why));
            }
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                send.send_reset(Reason::CANCEL);
                return Err(e);
            }
        };
        if n == 0 {
            // Our side is done writing: tell the other end, keep reading its way.
            return match send.send_data(Bytes::new(), true) {
                Ok(()) => Ok(total),
                Err(e) => Err(h2_to_io(e)),
            };
        }
        total += n as u64;
        if n >= want {
            want = (want * 2).min(CHUNK);
        }
        send_all(&mut send, buf.split().freeze()).await?;
    }
}

/// Sends all of `data` on `send` as flow control allows it, waiting for the
/// peer's window (backpressure) rather than buffering without limit.
pub async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> io::Result<()> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(granted)) => granted,
            Some(Err(e)) => return Err(h2_to_io(e)),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the stream was closed",
                ));
            }
        };
        let chunk = data.split_to(granted.min(data.len()));
        send.send_data(chunk, false).map_err(h2_to_io)?;
    }
    Ok(())
}

async fn h2_to_socket<W: AsyncWrite>(mut recv: RecvStream, wr: W) -> io::Result<u64> {
    tokio::pin!(wr);
    let mut total = 0u64;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(h2_to_io)?;
        let len = chunk.len();
        wr.write_all(&chunk).await?;
        total += len as u64;
        // Ignoring the error is right: it only fails once the stream is gone,
        // and the next `data()` reports that.
        let _ = recv.flow_control().release_capacity(len);
    }
    // Clean END_STREAM: pass the half-close on.
    wr.shutdown().await?;
    Ok(total)
}

/// Joins two HTTP/2 streams (the gateway's peer relay): what arrives on
/// one is sent on the other, with each side's flow control, until both
/// directions end. `a_to_b`/`b_to_a` count bytes as they pass.
pub async fn join(
    a: (SendStream<Bytes>, RecvStream),
    b: (SendStream<Bytes>, RecvStream),
    a_to_b: &std::sync::atomic::AtomicU64,
    b_to_a: &std::sync::atomic::AtomicU64,
) -> io::Result<()> {
    let ((a_send, a_recv), (b_send, b_recv)) = (a, b);
    tokio::try_join!(
        h2_to_h2(a_recv, b_send, a_to_b),
        h2_to_h2(b_recv, a_send, b_to_a)
    )?;
    Ok(())
}

async fn h2_to_h2(
    mut recv: RecvStream,
    mut send: SendStream<Bytes>,
    counter: &std::sync::atomic::AtomicU64,
) -> io::Result<()> {
    while let Some(chunk) = recv.data().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                send.send_reset(Reason::CANCEL);
                return Err(h2_to_io(e));
            }
        };
        let len = chunk.len();
        send_all(&mut send, chunk).await?;
        counter.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
        // Released only once passed on: the sender can't outrun the receiver.
        let _ = recv.flow_control().release_capacity(len);
    }
    send.send_data(Bytes::new(), true).map_err(h2_to_io)
}

/// One HTTP/2 stream as a byte stream (`AsyncRead` + `AsyncWrite`), for
/// code that speaks a protocol over it (a peer link through the relay)
/// without a copy through an in-memory pipe. Received bytes are released to
/// the sender's flow-control window as they are read; writes wait for
/// window; shutdown sends END_STREAM.
pub struct H2Io {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    ended: bool,
}

impl H2Io {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> H2Io {
        H2Io {
            send,
            recv,
            pending: Bytes::new(),
            ended: false,
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        if self.pending.is_empty() {
            match self.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_to_io(e))),
                Poll::Ready(Some(Ok(data))) => self.pending = data,
            }
        }
        let n = buf.remaining().min(self.pending.len());
        let chunk = self.pending.split_to(n);
        buf.put_slice(&chunk);
        // Only what was consumed: the sender can't run ahead of the reader.
        let _ = self.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut granted = self.send.capacity();
        if granted == 0 {
            self.send.reserve_capacity(buf.len().min(CHUNK));
            granted = match self.send.poll_capacity(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(n))) => n,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(h2_to_io(e))),
                Poll::Ready(None) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "stream closed",
                    )));
                }
            };
            if granted == 0 {
                // Woken without window after all: ask again later.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        let n = granted.min(buf.len());
        let data = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        self.send.send_data(data, false).map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.ended {
            self.ended = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_to_io)?;
        }
        std::task::Poll::Ready(Ok(()))
    }
}

/// Turns an HTTP/2 stream error into the I/O error a socket user expects.
pub fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("http/2 i/o error"));
    }
    let kind = match e.reason() {
        Some(Reason::CANCEL) | Some(Reason::NO_ERROR) => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, e)
}
