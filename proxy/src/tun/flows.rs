//! The TUN shim's TCP flows: the table of flows between the program's SYN
//! and the end of the flow, and the byte stream of one flow as the
//! tunnel layer carries it.
//!
//! A flow is in the table from the program's SYN on: `Opening` while the
//! far end is asked (the SYN is held, so the program's kernel keeps its
//! socket in SYN_SENT, exactly as while a real far end is dialled, and a
//! retransmitted SYN is dropped), `Ready` once the far end has answered and
//! the SYN went to the stack, `Carried` once the stack's stream is joined
//! with the way. It leaves the table when it ends, or when the far end
//! refused.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::packet::{FlowKey, Segment};
use crate::flow::Way;

/// Connection attempts held at once; past it a new SYN is answered with a
/// reset (as a host out of resources would).
pub const MAX_OPENING: usize = 4096;

enum State {
    Opening,
    Ready(Box<Way>),
    Carried,
}

struct Flow {
    state: State,
    /// The next sequence number the stack sends the program: where a reset
    /// that aborts the flow must sit for the program to take it (none
    /// before the stack's SYN-ACK).
    next_seq: Option<u32>,
    /// Fired when the program reset the flow (the stack reads that as an
    /// end of data; the tunnel must be reset, not ended).
    program_reset: CancellationToken,
}

/// What the reader does with a SYN.
pub enum Syn {
    /// A new flow: ask the far end.
    Open,
    /// A retransmission of a SYN being answered, or of a flow already open.
    Drop,
    /// Too many attempts held at once.
    Refuse,
}

#[derive(Default)]
struct Table {
    flows: HashMap<FlowKey, Flow>,
    /// Flows in `State::Opening`.
    opening: usize,
}

impl Table {
    fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Flow> {
        self.flows.get_mut(key)
    }

    /// Leaves `Opening` (for `next`, or out of the table with `None`).
    fn leave_opening(&mut self, key: &FlowKey, next: Option<State>) {
        let Some(flow) = self.flows.get_mut(key) else {
            return;
        };
        if matches!(flow.state, State::Opening) {
            self.opening -= 1;
        }
        match next {
            Some(state) => flow.state = state,
            None => {
                self.flows.remove(key);
            }
        }
    }
}

/// Every TCP flow of the TUN interface.
#[derive(Default)]
pub struct Flows {
    table: Mutex<Table>,
}

impl Flows {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic elsewhere while holding it leaves a consistent map (every
        // update is one insert or remove).
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The program sent a SYN for `key`.
    pub fn syn(&self, key: FlowKey) -> Syn {
        let mut table = self.lock();
        if table.flows.contains_key(&key) {
            return Syn::Drop;
        }
        if table.opening >= MAX_OPENING {
            return Syn::Refuse;
        }
        table.opening += 1;
        table.flows.insert(
            key,
            Flow {
                state: State::Opening,
                next_seq: None,
                program_reset: CancellationToken::new(),
            },
        );
        Syn::Open
    }

    /// The far end is connected: keep the way for the stack's stream.
    pub fn ready(&self, key: FlowKey, way: Way) {
        self.lock()
            .leave_opening(&key, Some(State::Ready(Box::new(way))));
    }

    /// The way for the stream the stack made for `key`, once; and the
    /// signal of the program resetting the flow.
    pub fn take(&self, key: FlowKey) -> Option<(Way, CancellationToken)> {
        let mut table = self.lock();
        let flow = table.get_mut(&key)?;
        match std::mem::replace(&mut flow.state, State::Carried) {
            State::Ready(way) => Some((*way, flow.program_reset.clone())),
            other => {
                flow.state = other;
                None
            }
        }
    }

    /// Ends `key` if the stack never made a stream for it (the program went
    /// away between its SYN and our SYN-ACK): its way is dropped.
    pub fn expire_unclaimed(&self, key: FlowKey) {
        let mut table = self.lock();
        if table
            .flows
            .get(&key)
            .is_some_and(|f| matches!(f.state, State::Ready(_)))
        {
            table.flows.remove(&key);
        }
    }

    /// The flow is over (or was refused).
    pub fn end(&self, key: FlowKey) {
        self.lock().leave_opening(&key, None);
    }

    /// A segment from the program: a reset is passed on to the tunnel.
    pub fn seen_from_program(&self, seg: &Segment) {
        if seg.rst
            && let Some(flow) = self.lock().flows.get(&seg.key)
        {
            flow.program_reset.cancel();
        }
    }

    /// A segment from the stack to the program (`seg.key` seen from the
    /// stack's side, so reversed).
    pub fn seen_to_program(&self, seg: &Segment) {
        let key = FlowKey {
            program: seg.key.dest,
            dest: seg.key.program,
        };
        if let Some(flow) = self.lock().get_mut(&key) {
            let end = seg.end();
            // Sequence numbers wrap: "later" is within half the space.
            if flow
                .next_seq
                .is_none_or(|next| end.wrapping_sub(next) < (1 << 31))
            {
                flow.next_seq = Some(end);
            }
        }
    }

    /// Where a reset aborting `key` must sit.
    pub fn next_seq(&self, key: FlowKey) -> Option<u32> {
        self.lock().flows.get(&key).and_then(|f| f.next_seq)
    }

    /// Flows in the table.
    pub fn len(&self) -> usize {
        self.lock().flows.len()
    }
}

/// The stack's stream for one flow as the tunnel layer uses it. Shutting
/// down the write side sends the program a FIN and returns: the stack's own
/// `poll_shutdown` waits until the whole connection has closed (through
/// TIME_WAIT), which would hold a half-closed flow's other direction.
pub struct FlowStream {
    inner: netstack_smoltcp::TcpStream,
    shut: bool,
}

impl FlowStream {
    pub fn new(inner: netstack_smoltcp::TcpStream) -> FlowStream {
        FlowStream { inner, shut: false }
    }
}

impl AsyncRead for FlowStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FlowStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            // Marks the write side closed; the FIN follows once the bytes
            // written before it have gone.
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.inner).poll_shutdown(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Shared handle to the table, for the tasks of the interface.
pub type SharedFlows = Arc<Flows>;
