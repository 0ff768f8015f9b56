//! Live links: carrying an opened session (a stream, or datagrams), the
//! counters and cut switch of each link while it lives, the totals once it
//! ended, and the report for the gateway's audit log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shimgate_host::clock;
use shimgate_wire::control::{DeviceMsg, PeerPath, SessionId};
use shimgate_wire::peerlink::{self, Link};
use shimgate_wire::splice;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::{LinkEntry, Opened, Peers, Side};

/// A UDP session with no datagram from the local side for this long ends.
pub const UDP_IDLE: Duration = Duration::from_secs(120);

impl Peers {
    /// Cuts every link with `device` (it was revoked), or every link.
    pub fn cut(&self, device: Option<&str>) {
        for link in self.links.iter() {
            if device.is_none_or(|d| d == link.peer) {
                tracing::info!(peer = %link.peer, "cutting peer link: the peer is no longer on the VPN");
                link.cancel.cancel();
            }
        }
        if let Some(d) = device {
            self.offers.retain(|_, o| o.from != d);
        }
    }

    /// Moves bytes between a local socket and an opened session until both
    /// sides are done (or the peer is cut), then reports it for the audit
    /// log when this side started it.
    pub async fn run(
        &self,
        local: TcpStream,
        opened: Opened,
        side: Side,
        port: u16,
    ) -> Result<peerlink::Moved, peerlink::LinkError> {
        let (mut rd, mut wr) = local.into_split();
        let result = self.run_halves(&mut rd, &mut wr, opened, side, port).await;
        if result.is_err() {
            splice::reset(rd, wr);
        }
        result
    }

    /// [`Peers::run`] over any byte stream's halves (a TUN flow's); on an
    /// error the caller resets its side.
    pub async fn run_halves<R, W>(
        &self,
        rd: &mut R,
        wr: &mut W,
        opened: Opened,
        side: Side,
        port: u16,
    ) -> Result<peerlink::Moved, peerlink::LinkError>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let (id, entry) = self.track(&opened.peer, port, opened.path, opened.why.clone(), side);
        let result = tokio::select! {
            r = peerlink::splice(rd, wr, opened.link, &entry.0, &entry.1) => r,
            _ = entry.2.cancelled() => Err(peerlink::LinkError::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "peer link cut: the peer is no longer on the VPN",
            ))),
        };
        self.untrack(id);
        self.report_end(side, opened.session, opened.path, opened.why, &entry);
        result
    }

    /// Carries datagrams between `sock` (a UDP socket connected to the one
    /// program socket or service it serves) and an opened UDP session, one
    /// link frame per datagram, until the peer closes the link, `until`
    /// resolves (the requester's program closed its socket), nothing moves
    /// for [`UDP_IDLE`], or the peer is cut.
    pub async fn run_datagrams(
        &self,
        sock: &UdpSocket,
        opened: Opened,
        side: Side,
        port: u16,
        until: impl std::future::Future<Output = ()>,
    ) -> Result<(), peerlink::LinkError> {
        use std::sync::atomic::Ordering::Relaxed;
        let Opened {
            link,
            session,
            peer,
            path,
            why,
            ..
        } = opened;
        let (id, entry) = self.track(&peer, port, path, why.clone(), side);
        let Link {
            mut reader,
            mut writer,
        } = link;
        let mut buf = vec![0u8; shimgate_wire::datagram::MAX_PAYLOAD];
        let (sent, received, cut) = (&entry.0, &entry.1, &entry.2);
        tokio::pin!(until);
        let result = loop {
            tokio::select! {
                got = tokio::time::timeout(UDP_IDLE, sock.recv(&mut buf)) => match got {
                    Err(_) => break writer.close().await,
                    Ok(got) => {
                        // This datagram and whatever else has arrived, in
                        // one write. ECONNREFUSED: an earlier datagram met
                        // a closed port.
                        let mut got = got;
                        let mut sealed = Ok(());
                        while writer.pending() < shimgate_wire::datagram::BATCH {
                            let Ok(n) = got else { break };
                            sealed = writer.push_datagram(buf.get(..n).unwrap_or_default());
                            if sealed.is_err() {
                                break;
                            }
                            sent.fetch_add(n as u64, Relaxed);
                            got = sock.try_recv(&mut buf);
                        }
                        if let Err(e) = sealed {
                            break Err(e);
                        }
                        if let Err(e) = writer.flush().await {
                            break Err(e);
                        }
                    }
                },
                frame = reader.recv() => match frame {
                    Ok(Some(datagram)) => {
                        if sock.send(datagram).await.is_ok() {
                            received.fetch_add(datagram.len() as u64, Relaxed);
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                },
                () = &mut until => break writer.close().await,
                () = cut.cancelled() => break Err(peerlink::LinkError::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "peer link cut: the peer is no longer on the VPN",
                ))),
            }
        };
        self.untrack(id);
        self.report_end(side, session, path, why, &entry);
        result
    }

    /// Reports an ended link for the gateway's audit log, when this side
    /// started it.
    fn report_end(
        &self,
        side: Side,
        session: SessionId,
        path: PeerPath,
        why: Option<String>,
        (sent, received, _): &(Arc<AtomicU64>, Arc<AtomicU64>, CancellationToken),
    ) {
        if side == Side::Requester {
            let _ = self.reports.try_send(DeviceMsg::Ended {
                session,
                path,
                sent: sent.load(Ordering::Relaxed),
                received: received.load(Ordering::Relaxed),
                why,
            });
        }
    }

    /// Registers a live link; returns its id, counters and cut switch.
    pub(super) fn track(
        &self,
        peer: &str,
        port: u16,
        path: PeerPath,
        why: Option<String>,
        side: Side,
    ) -> (u64, (Arc<AtomicU64>, Arc<AtomicU64>, CancellationToken)) {
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let (sent, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let cancel = CancellationToken::new();
        self.links.insert(
            id,
            LinkEntry {
                peer: peer.to_owned(),
                port,
                path,
                why,
                side,
                started: clock::now(),
                sent: Arc::clone(&sent),
                received: Arc::clone(&received),
                cancel: cancel.clone(),
            },
        );
        (id, (sent, received, cancel))
    }

    pub(super) fn untrack(&self, id: u64) {
        if let Some((_, link)) = self.links.remove(&id) {
            let mut t = self.ended.entry(link.peer).or_default();
            t.sessions += 1;
            t.sent += link.sent.load(Ordering::Relaxed);
            t.received += link.received.load(Ordering::Relaxed);
        }
    }
}
