//! The framing under every message on a link: a 2-byte big-endian length,
//! then the body. `push_frame` writes one; an [`Inbox`] buffers what
//! arrives and splits it into frames.

use std::io;
use std::ops::Range;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::LinkError;

pub(super) fn push_frame(out: &mut Vec<u8>, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| io::Error::other("frame too large"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Ok(())
}

/// An inbox's first size, and its largest (several frames per read in bulk).
const FIRST_READ: usize = 16 * 1024;
const READ_BUFFER: usize = 256 * 1024;

/// Bytes received on a link's stream, buffered so that one read can bring
/// in several frames. Starts small (idle links cost little) and grows while
/// reads fill it (a bulk transfer), up to [`READ_BUFFER`].
pub struct Inbox<R> {
    io: R,
    pub(super) buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> Inbox<R> {
    pub(super) fn new(io: R) -> Inbox<R> {
        Inbox {
            io,
            buf: vec![0u8; FIRST_READ],
            start: 0,
            end: 0,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    pub(super) fn bytes(&self, r: Range<usize>) -> &[u8] {
        self.buf.get(r).unwrap_or_default()
    }

    /// Reads once more, with room for at least `want` bytes from the first
    /// unread one; `Ok(false)` at the end of the stream.
    async fn fill(&mut self, want: usize) -> io::Result<bool> {
        if self.start > 0 && (self.end == self.buf.len() || self.buf.len() - self.start < want) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() || self.buf.len() < want {
            let grown = (self.buf.len() * 2).min(READ_BUFFER).max(want);
            self.buf.resize(grown.max(self.buf.len()), 0);
        }
        let room = self.buf.get_mut(self.end..).unwrap_or_default();
        let n = self.io.read(room).await?;
        self.end += n;
        Ok(n > 0)
    }

    /// Exactly `n` bytes, read as needed.
    pub(super) async fn take(&mut self, n: usize) -> io::Result<Range<usize>> {
        while self.buffered() < n {
            if !self.fill(n).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let r = self.start..self.start + n;
        self.start += n;
        Ok(r)
    }

    /// The length of the next frame's body, if its header is buffered.
    fn next_len(&self) -> Option<usize> {
        let head = self.buf.get(self.start..self.start + 2)?;
        Some(usize::from(u16::from_be_bytes([head[0], head[1]])))
    }

    /// The next frame's body if it is wholly buffered (consumed).
    pub(super) fn ready_frame(&mut self) -> Option<Range<usize>> {
        let len = self.next_len()?;
        if self.buffered() < 2 + len {
            return None;
        }
        let r = self.start + 2..self.start + 2 + len;
        self.start += 2 + len;
        Some(r)
    }

    /// The next frame's body, reading as needed; `None` at a clean end of
    /// stream between frames.
    pub(super) async fn frame(&mut self) -> io::Result<Option<Range<usize>>> {
        loop {
            if let Some(r) = self.ready_frame() {
                return Ok(Some(r));
            }
            let want = self.next_len().map_or(2, |len| 2 + len);
            if !self.fill(want).await? {
                return if self.buffered() == 0 {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    pub(super) async fn expect_frame(&mut self) -> Result<Range<usize>, LinkError> {
        self.frame().await?.ok_or_else(|| {
            LinkError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed during the handshake",
            ))
        })
    }
}
