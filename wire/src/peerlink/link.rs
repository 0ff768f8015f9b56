//! An established link: [`LinkReader`] opens and [`LinkWriter`] seals its
//! typed frames (data, rekey, close), each direction under its own key.

use std::io;
use std::ops::Range;

use aws_lc_rs::aead::Aad;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::cipher::Direction;
use super::frame::Inbox;
use super::{LinkError, MAX_PAYLOAD, TAG};

const KIND_DATA: u8 = 0;
const KIND_REKEY: u8 = 1;
const KIND_CLOSE: u8 = 2;

/// An established link: its receiving and sending halves.
pub struct Link<R, W> {
    pub reader: LinkReader<R>,
    pub writer: LinkWriter<W>,
}

impl<R, W> Link<R, W> {
    pub(super) fn new(rd: Inbox<R>, wr: W, send: Direction, recv: Direction) -> Link<R, W> {
        Link {
            reader: LinkReader {
                inbox: rd,
                dir: recv,
                closed: false,
            },
            writer: LinkWriter {
                io: wr,
                dir: send,
                out: Vec::new(),
            },
        }
    }
}

/// The receiving half of a link.
pub struct LinkReader<R> {
    inbox: Inbox<R>,
    dir: Direction,
    closed: bool,
}

impl<R: AsyncRead + Unpin> LinkReader<R> {
    /// Authenticates and decrypts the frame at `r` in place; returns its
    /// payload's range if it carries data.
    fn open(&mut self, r: Range<usize>) -> Result<Option<Range<usize>>, LinkError> {
        let nonce = self.dir.next_nonce()?;
        let body = self
            .inbox
            .buf
            .get_mut(r.clone())
            .ok_or(LinkError::Tampered)?;
        let plain = self
            .dir
            .key
            .open_in_place(nonce, Aad::empty(), body)
            .map_err(|_| LinkError::Tampered)?;
        let plain_len = plain.len();
        match plain.first().copied() {
            Some(KIND_DATA) => Ok(Some(r.start + 1..r.start + plain_len)),
            Some(KIND_REKEY) => self.dir.rekey().map(|()| None),
            Some(KIND_CLOSE) => {
                self.closed = true;
                Ok(None)
            }
            _ => Err(LinkError::Tampered),
        }
    }

    /// The next frame, reading as needed; an end of stream without the
    /// peer's close is [`LinkError::Truncated`].
    async fn next_frame(&mut self) -> Result<Range<usize>, LinkError> {
        self.inbox.frame().await?.ok_or(LinkError::Truncated)
    }

    /// The next data payload; `None` once the peer closed the link properly.
    pub async fn recv(&mut self) -> Result<Option<&[u8]>, LinkError> {
        while !self.closed {
            let frame = self.next_frame().await?;
            if let Some(data) = self.open(frame)? {
                return Ok(Some(self.inbox.bytes(data)));
            }
        }
        Ok(None)
    }

    /// Appends to `out` the payload of the next data frame and of every
    /// further one already received (up to `limit` bytes in `out`), so a
    /// bulk transfer writes out several frames at once. `false` once the
    /// peer closed the link properly.
    pub async fn recv_batch(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<bool, LinkError> {
        let mut got = false;
        while !self.closed && !got {
            let frame = self.next_frame().await?;
            if let Some(data) = self.open(frame)? {
                out.extend_from_slice(self.inbox.bytes(data));
                got = true;
            }
        }
        while !self.closed && out.len() < limit {
            let Some(frame) = self.inbox.ready_frame() else {
                break;
            };
            if let Some(data) = self.open(frame)? {
                out.extend_from_slice(self.inbox.bytes(data));
            }
        }
        Ok(got)
    }
}

/// The sending half of a link.
pub struct LinkWriter<W> {
    io: W,
    dir: Direction,
    out: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> LinkWriter<W> {
    fn seal(&mut self, kind: u8, payload: &[u8]) -> Result<(), LinkError> {
        let nonce = self.dir.next_nonce()?;
        let start = self.out.len();
        let len = u16::try_from(1 + payload.len() + TAG).map_err(|_| LinkError::Tampered)?;
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.push(kind);
        self.out.extend_from_slice(payload);
        let body = self.out.get_mut(start + 2..).ok_or(LinkError::Tampered)?;
        let tag = self
            .dir
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), body)
            .map_err(|_| LinkError::Tampered)?;
        self.out.extend_from_slice(tag.as_ref());
        if kind != KIND_REKEY && self.dir.due() {
            self.seal(KIND_REKEY, &[])?;
            self.dir.rekey()?;
        }
        Ok(())
    }

    async fn flush_out(&mut self) -> Result<(), LinkError> {
        self.io.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Encrypts and sends `data`, in as many frames as it takes, with one write.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), LinkError> {
        for chunk in data.chunks(MAX_PAYLOAD) {
            self.seal(KIND_DATA, chunk)?;
        }
        self.flush_out().await
    }

    /// Encrypts `datagram` as one frame of its own (at most [`MAX_PAYLOAD`]
    /// bytes) without sending it yet: several go out together with
    /// [`LinkWriter::flush`].
    pub fn push_datagram(&mut self, datagram: &[u8]) -> Result<(), LinkError> {
        if datagram.len() > MAX_PAYLOAD {
            return Err(LinkError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a datagram larger than a frame",
            )));
        }
        self.seal(KIND_DATA, datagram)
    }

    /// Bytes sealed and not yet sent.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Sends what [`LinkWriter::push_datagram`] sealed, with one write.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        self.flush_out().await
    }

    /// Tells the peer this side is done (authenticated), then half-closes.
    pub async fn close(&mut self) -> Result<(), LinkError> {
        self.seal(KIND_CLOSE, &[])?;
        self.flush_out().await?;
        self.io.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, DuplexStream, ReadHalf, duplex};

    use super::*;
    use crate::peerlink::testing::{Half, KEY, handshake, pair};
    use crate::peerlink::{REKEY_FRAMES, SESSION_ID_LEN};

    async fn recv_all(r: &mut LinkReader<ReadHalf<DuplexStream>>) -> Result<Vec<u8>, LinkError> {
        let mut got = Vec::new();
        while let Some(d) = r.recv().await? {
            got.extend_from_slice(d);
        }
        Ok(got)
    }

    #[tokio::test]
    async fn carries_bytes_both_ways_and_closes_cleanly() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let send = async {
            a.writer.send(&big).await?;
            a.writer.close().await
        };
        let (sent, got) = tokio::join!(send, recv_all(&mut b.reader));
        sent.unwrap();
        assert_eq!(got.unwrap(), big);
        b.writer.send(b"pong").await.unwrap();
        assert_eq!(a.reader.recv().await.unwrap().unwrap(), b"pong");
    }

    #[tokio::test]
    async fn datagrams_pushed_together_arrive_one_frame_each() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        let datagrams: Vec<Vec<u8>> = (0..50u8)
            .map(|i| vec![i; 1 + usize::from(i) * 37])
            .collect();
        for d in &datagrams {
            a.writer.push_datagram(d).unwrap();
        }
        assert!(a.writer.pending() > 0);
        a.writer.flush().await.unwrap();
        assert_eq!(a.writer.pending(), 0);
        for d in &datagrams {
            assert_eq!(b.reader.recv().await.unwrap().unwrap(), &d[..]);
        }
        assert!(a.writer.push_datagram(&vec![0; MAX_PAYLOAD + 1]).is_err());
    }

    #[tokio::test]
    async fn an_end_of_stream_without_close_is_an_error() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (a, mut b) = (a.unwrap(), b.unwrap());
        drop(a);
        assert!(matches!(b.reader.recv().await, Err(LinkError::Truncated)));
    }

    /// A link whose bytes pass through a middle the test controls.
    async fn relayed() -> (Half, Half, DuplexStream, DuplexStream) {
        let (a_io, mut mid_a) = duplex(1 << 20);
        let (mut mid_b, b_io) = duplex(1 << 20);
        let relay = async {
            let mut id = [0u8; SESSION_ID_LEN];
            mid_a.read_exact(&mut id).await.unwrap();
            mid_b.write_all(&id).await.unwrap();
            forward(&mut mid_a, &mut mid_b, None).await;
            forward(&mut mid_b, &mut mid_a, None).await;
        };
        let (links, ()) = tokio::join!(handshake_direct(a_io, b_io), relay);
        let (a, b) = links;
        (a.unwrap(), b.unwrap(), mid_a, mid_b)
    }

    async fn handshake_direct(
        a: DuplexStream,
        b: DuplexStream,
    ) -> (Result<Half, LinkError>, Result<Half, LinkError>) {
        handshake(a, b, KEY, KEY, 3, 3).await
    }

    async fn forward(
        from: &mut DuplexStream,
        to: &mut DuplexStream,
        flip: Option<usize>,
    ) -> Vec<u8> {
        let mut len = [0u8; 2];
        from.read_exact(&mut len).await.unwrap();
        let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
        from.read_exact(&mut frame).await.unwrap();
        if let Some(i) = flip {
            frame[i] ^= 1;
        }
        to.write_all(&(frame.len() as u16).to_be_bytes())
            .await
            .unwrap();
        to.write_all(&frame).await.unwrap();
        frame
    }

    #[tokio::test]
    async fn a_flipped_bit_is_refused() {
        let (mut a, mut b, mut mid_a, mut mid_b) = relayed().await;
        a.writer.send(b"hello").await.unwrap();
        forward(&mut mid_a, &mut mid_b, Some(3)).await;
        assert!(matches!(b.reader.recv().await, Err(LinkError::Tampered)));
    }

    #[tokio::test]
    async fn a_replayed_frame_is_refused() {
        let (mut a, mut b, mut mid_a, mut mid_b) = relayed().await;
        a.writer.send(b"pay 10").await.unwrap();
        let frame = forward(&mut mid_a, &mut mid_b, None).await;
        assert_eq!(b.reader.recv().await.unwrap().unwrap(), b"pay 10");
        mid_b
            .write_all(&(frame.len() as u16).to_be_bytes())
            .await
            .unwrap();
        mid_b.write_all(&frame).await.unwrap();
        assert!(matches!(b.reader.recv().await, Err(LinkError::Tampered)));
    }

    #[tokio::test]
    async fn keys_change_on_schedule_and_both_ends_follow() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        let frames = REKEY_FRAMES as usize + 10;
        let chunk = [5u8; 16];
        let send = async {
            for _ in 0..frames {
                a.writer.send(&chunk).await?;
            }
            a.writer.close().await
        };
        let (sent, got) = tokio::join!(send, recv_all(&mut b.reader));
        sent.unwrap();
        assert_eq!(got.unwrap().len(), frames * chunk.len());
        assert!(
            a.writer.dir.frames < REKEY_FRAMES,
            "the sender rekeyed ({} frames under the current key)",
            a.writer.dir.frames
        );
    }

    #[tokio::test]
    async fn a_batch_holds_every_frame_already_received() {
        let (a, b) = pair(KEY, KEY, 1, 1).await;
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        for i in 0..5u8 {
            a.writer.send(&[i; 1000]).await.unwrap();
        }
        a.writer.close().await.unwrap();
        // all five frames and the close are in the pipe before the first read
        let mut out = Vec::new();
        assert!(b.reader.recv_batch(&mut out, 1 << 20).await.unwrap());
        assert_eq!(out.len(), 5000, "one batch, five frames");
        assert_eq!(&out[4000..], &[4u8; 1000][..]);
        out.clear();
        assert!(!b.reader.recv_batch(&mut out, 1 << 20).await.unwrap());
        assert!(out.is_empty());
    }
}
