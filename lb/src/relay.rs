//! The byte relay, the last stage of a connection: copies both ways until both sides are done, handles
//! half-close (a side's EOF shuts down the other side's write half), and enforces the idle timeout.
//!
//! Memory is the point: most connections are idle MQTT sessions that exchange a PINGREQ a minute, so a relay
//! must not pin buffers while waiting. `tokio::io::copy_bidirectional` keeps two 8 KiB buffers per connection
//! forever; here each direction waits for *readiness* with no buffer, allocates an uninitialised buffer (no
//! memset) only once the socket is readable, and frees it as soon as a read would block again. The buffer starts at
//! [`RELAY_BUFFER_MIN`] (a PINGREQ costs a 4 KiB allocation, not 16) and grows to [`RELAY_BUFFER`] for a
//! direction whose reads fill it. The writer is flushed once per burst, when the reader has nothing more (one TLS
//! record flush / syscall per burst instead of one per read).
//!
//! TLS: rustls may hold decrypted bytes the socket no longer signals. The invariant that makes waiting on the
//! TCP socket's readiness correct is: the buffer is only dropped after a read returned `Pending`, at which point
//! tokio-rustls has drained every complete record into our buffer. The first poll of each direction therefore
//! *reads* (with a buffer) instead of waiting, because the handshake and the CONNECT peek may have left
//! plaintext inside rustls. rustls' own buffers (record deframer, pending ciphertext) are its business: they
//! shrink when empty in rustls 0.23, and the per-connection `ServerConnection` remains the bulk of an idle TLS
//! connection's footprint.
//!
//! Budget: every buffer's bytes are claimed before the read that fills it, and given back when the buffer is freed.
//! Client → backend claims from the LB-wide [`BufferBudget`]: at its bound a direction without a buffer waits,
//! reading nothing from its client, until bytes come back, and one with a buffer grows it only if the budget
//! allows. Backend → client is only counted (see [`crate::buffers`] for why).
//!
//! Draining: both directions feed what they forward through a [`PacketTracker`]. When the connection's drain
//! switch flips, each direction reads only up to the end of the packet in flight and then parks; once both are
//! parked the LB sends a v5 client DISCONNECT 0x8B ("server shutting down"), sends the backend a normal
//! DISCONNECT (see [`crate::frames`] for why) and closes both sides. A direction that cannot reach a boundary
//! within [`DRAIN_BOUNDARY_TIMEOUT`] (a half-sent packet from a stalled peer) is closed without a DISCONNECT.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::buffers::{BufferBudget, Claim, Toward};
use crate::frames::{DISCONNECT_NORMAL, DISCONNECT_V5_SERVER_SHUTTING_DOWN, PacketTracker};
use crate::stream::{ClientStream, ReadReady};

/// How long a draining relay waits for the packets in flight to complete before it closes anyway: a whole MQTT
/// packet arrives within a few round trips from any live peer.
const DRAIN_BOUNDARY_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline for writing the DISCONNECTs of a drained relay: a peer that does not take four bytes is gone.
const DRAIN_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest buffer a direction uses while its source is readable: large enough to move a burst of publishes in a
/// few syscalls, and only held while bytes are flowing.
const RELAY_BUFFER: usize = 16 * 1024;

/// First buffer of a direction: a PINGREQ, a PUBACK or a small PUBLISH fits many times over; a direction whose
/// read fills it doubles up to [`RELAY_BUFFER`] (and keeps that size).
const RELAY_BUFFER_MIN: usize = 4 * 1024;

/// Which side of a connection: the one that closed it, or the one a failure is put down to (pingora's
/// `ErrorSource`: downstream, upstream, internal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The MQTT client.
    Client,
    /// The broker node.
    Backend,
    /// Neither: the LB itself (its limits, idle timeout, drain, shutdown).
    Internal,
}

impl Side {
    /// Label for logs (`closed_by`): `client`, `backend`, or `lb` for the LB itself.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
            Side::Internal => "lb",
        }
    }
}

/// How a relay ended: the `reason` label of `fleetgate_lb_relays_ended_total` and the side that ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayEnd {
    /// Both directions reached EOF; the side that closed first.
    Eof(Side),
    /// A read or write failed on this side's socket.
    Error(Side),
    /// Nothing flowed for the idle timeout.
    IdleTimeout,
    /// The grace period of a shutdown ran out: cut at once.
    Shutdown,
    /// The drain switch flipped: both directions stopped at packet boundaries, DISCONNECTs sent.
    Drained,
    /// The drain switch flipped, but a direction did not reach a packet boundary in time.
    DrainTimeout,
}

impl RelayEnd {
    /// `eof`, `error`, `idle_timeout`, `shutdown`, `drained` or `drain_timeout`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            RelayEnd::Eof(_) => "eof",
            RelayEnd::Error(_) => "error",
            RelayEnd::IdleTimeout => "idle_timeout",
            RelayEnd::Shutdown => "shutdown",
            RelayEnd::Drained => "drained",
            RelayEnd::DrainTimeout => "drain_timeout",
        }
    }

    /// Who closed (or failed) first.
    pub(crate) fn side(self) -> Side {
        match self {
            RelayEnd::Eof(side) | RelayEnd::Error(side) => side,
            RelayEnd::IdleTimeout
            | RelayEnd::Shutdown
            | RelayEnd::Drained
            | RelayEnd::DrainTimeout => Side::Internal,
        }
    }
}

/// What a relay moved and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayOutcome {
    /// Bytes copied client → backend.
    pub(crate) to_backend: u64,
    /// Bytes copied backend → client.
    pub(crate) to_client: u64,
    /// How it ended, and who ended it.
    pub(crate) end: RelayEnd,
}

/// What a relay obeys besides its two streams.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayControl<'a> {
    /// Idle timeout (`None` = never).
    pub(crate) idle: Option<Duration>,
    /// Cancelled when the grace period is over: end at once.
    pub(crate) abort: &'a CancellationToken,
    /// This connection's drain switch: end at packet boundaries with DISCONNECTs.
    pub(crate) drain: &'a CancellationToken,
    /// The client's MQTT protocol level (5 gets the DISCONNECT 0x8B).
    pub(crate) protocol_level: u8,
    /// Bytes the client pipelined behind its CONNECT, already sent to the backend (they start the
    /// client → backend packet tracking).
    pub(crate) sent_after_connect: &'a [u8],
    /// The LB-wide budget of buffered bytes both directions claim their buffers from.
    pub(crate) buffers: &'a Arc<BufferBudget>,
}

/// How a relay ended and — for a drain — where both directions stopped (up, down).
type Ending = (RelayEnd, Option<(Flow, Flow)>);

/// Where a direction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// EOF passed on; nothing more will flow.
    Done,
    /// Draining and stopped exactly at a packet boundary.
    Parked,
}

/// A failure in one direction, attributed to the side whose socket failed.
struct Fault {
    side: Side,
}

/// One direction's state: a buffer only while bytes are in flight.
struct Direction {
    /// `None` while idle; bytes read and not yet written otherwise.
    buf: Option<BytesMut>,
    /// Capacity of the next buffer ([`RELAY_BUFFER_MIN`] growing to [`RELAY_BUFFER`]).
    size: usize,
    /// The buffer's bytes in the budget: held from before the read that fills it until it is freed.
    claim: Claim,
    /// Bytes were written since the last flush.
    needs_flush: bool,
    eof: bool,
    done: bool,
    bytes: u64,
    /// Read before waiting for readiness (see the module docs on TLS).
    read_first: bool,
    /// Packet boundaries of what was read.
    tracker: PacketTracker,
}

impl Direction {
    fn new(claim: Claim) -> Self {
        Self {
            buf: None,
            size: RELAY_BUFFER_MIN,
            claim,
            needs_flush: false,
            eof: false,
            done: false,
            bytes: 0,
            read_first: true,
            tracker: PacketTracker::default(),
        }
    }

    /// Frees the buffer and gives its bytes back to the budget.
    fn free(&mut self) {
        self.buf = None;
        self.claim.release();
    }

    /// Flushes what was written since the last flush. `Ready(Ok)` once nothing is pending.
    fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<io::Result<()>> {
        if self.needs_flush {
            ready!(Pin::new(writer).poll_flush(cx))?;
            self.needs_flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// The reader has nothing now: release the buffer, flush the burst written, and wait (for the reader, or for
    /// the writer when the flush itself is pending).
    fn idle<T, W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
        writer_side: Side,
    ) -> Poll<Result<T, Fault>> {
        self.free();
        match self.poll_flush(cx, writer) {
            Poll::Ready(Err(_)) => Poll::Ready(Err(Fault { side: writer_side })),
            _ => Poll::Pending,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        (reader, reader_side): (&mut R, Side),
        (writer, writer_side): (&mut W, Side),
        last_activity: &mut Instant,
        draining: bool,
    ) -> Poll<Result<Flow, Fault>>
    where
        R: AsyncRead + ReadReady + Unpin,
        W: AsyncWrite + Unpin,
    {
        let read_fault = Fault { side: reader_side };
        let write_fault = || Fault { side: writer_side };
        loop {
            if self.done {
                return Poll::Ready(Ok(Flow::Done));
            }
            if let Some(buf) = self.buf.as_mut() {
                while !buf.is_empty() {
                    let n = ready!(Pin::new(&mut *writer).poll_write(cx, buf))
                        .map_err(|_| write_fault())?;
                    if n == 0 {
                        return Poll::Ready(Err(write_fault()));
                    }
                    buf.advance(n);
                    self.bytes += n as u64;
                    self.needs_flush = true;
                }
            }
            if self.eof {
                // Half-close: the reader is done sending; pass that on. A peer that already left is not an error.
                let _ = ready!(self.poll_flush(cx, writer));
                let _ = ready!(Pin::new(&mut *writer).poll_shutdown(cx));
                self.done = true;
                return Poll::Ready(Ok(Flow::Done));
            }
            // Draining: read no further than the end of the packet in flight (a broken framing never parks;
            // the drain deadline ends it).
            let limit = match (draining, self.tracker.until_boundary()) {
                (true, Some(0)) => {
                    self.free();
                    ready!(self.poll_flush(cx, writer)).map_err(|_| write_fault())?;
                    return Poll::Ready(Ok(Flow::Parked));
                }
                (true, Some(n)) => n.min(self.size),
                _ => self.size,
            };
            let buf = match self.buf.as_mut() {
                Some(buf) => buf,
                None => {
                    if !self.read_first {
                        match reader.poll_read_ready(cx) {
                            Poll::Pending => return self.idle(cx, writer, writer_side),
                            Poll::Ready(Err(_)) => return Poll::Ready(Err(read_fault)),
                            Poll::Ready(Ok(())) => {}
                        }
                    }
                    // The budget's bytes before the read: at the bound, read nothing until they come back.
                    if self.claim.poll_hold(cx, self.size).is_pending() {
                        return self.idle(cx, writer, writer_side);
                    }
                    self.buf.insert(BytesMut::new())
                }
            };
            // A direction that outgrew its buffer grows it only if the budget has the bytes now (the budget is
            // never closed, so a buffer in use always holds its bytes).
            if !self.claim.try_grow(self.size) && self.claim.held() > 0 {
                self.size = self.claim.held();
            }
            self.read_first = false;
            // Empty here (everything read was written): this reuses the allocation, or makes the first one.
            buf.clear();
            buf.reserve(self.size);
            // `read_buf` reads into the spare capacity through `ReadBuf::uninit` (no zeroing); polled once here and
            // dropped, which is cancel-safe.
            let mut spare = (&mut *buf).limit(limit);
            let read = std::pin::pin!(reader.read_buf(&mut spare)).poll(cx);
            match read {
                // Nothing buffered anywhere: idle without memory until the socket is readable again.
                Poll::Pending => return self.idle(cx, writer, writer_side),
                Poll::Ready(Err(_)) => return Poll::Ready(Err(read_fault)),
                Poll::Ready(Ok(0)) => {
                    self.eof = true;
                    self.free();
                }
                Poll::Ready(Ok(n)) => {
                    self.tracker.feed(&buf[..n]);
                    *last_activity = Instant::now();
                    if n >= self.size {
                        self.size = (self.size * 2).min(RELAY_BUFFER);
                    }
                }
            }
        }
    }
}

/// Relays between `client` and `backend` until both directions reach EOF, one fails, the connection is idle
/// for `ctl.idle`, `ctl.abort` is cancelled, or `ctl.drain` is cancelled (then it ends at packet boundaries with
/// DISCONNECTs, see the module docs). Any bytes already forwarded (the CONNECT) are not counted here.
pub(crate) async fn relay<B>(
    client: &mut ClientStream,
    backend: &mut B,
    ctl: RelayControl<'_>,
) -> RelayOutcome
where
    B: AsyncRead + AsyncWrite + ReadReady + Unpin,
{
    let mut up = Direction::new(ctl.buffers.claim(Toward::Backend));
    up.tracker.feed(ctl.sent_after_connect);
    let mut down = Direction::new(ctl.buffers.claim(Toward::Client));
    let mut first_eof: Option<Side> = None;
    let mut last_activity = Instant::now();
    let idle = ctl.idle;
    let sleep = tokio::time::sleep(idle.unwrap_or(Duration::MAX / 4));
    tokio::pin!(sleep);
    let cancelled = ctl.abort.cancelled();
    tokio::pin!(cancelled);
    let drain = ctl.drain.cancelled();
    tokio::pin!(drain);
    let drain_deadline = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(drain_deadline);
    let mut draining = false;

    let ended: Result<Ending, Fault> = poll_fn(|cx| {
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok((RelayEnd::Shutdown, None)));
        }
        if !draining && drain.as_mut().poll(cx).is_ready() {
            draining = true;
            drain_deadline
                .as_mut()
                .reset((Instant::now() + DRAIN_BOUNDARY_TIMEOUT).into());
        }
        let up_flow = up.poll_copy(
            cx,
            (&mut *client, Side::Client),
            (&mut *backend, Side::Backend),
            &mut last_activity,
            draining,
        )?;
        if up_flow == Poll::Ready(Flow::Done) && first_eof.is_none() {
            first_eof = Some(Side::Client);
        }
        let down_flow = down.poll_copy(
            cx,
            (&mut *backend, Side::Backend),
            (&mut *client, Side::Client),
            &mut last_activity,
            draining,
        )?;
        if down_flow == Poll::Ready(Flow::Done) && first_eof.is_none() {
            first_eof = Some(Side::Backend);
        }
        if let (Poll::Ready(u), Poll::Ready(d)) = (up_flow, down_flow) {
            if u == Flow::Done && d == Flow::Done {
                return Poll::Ready(Ok((RelayEnd::Eof(first_eof.unwrap_or(Side::Client)), None)));
            }
            return Poll::Ready(Ok((RelayEnd::Drained, Some((u, d)))));
        }
        if draining && drain_deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok((RelayEnd::DrainTimeout, None)));
        }
        if let Some(idle) = idle {
            // The timer is only re-armed when it fires, not on every packet: cheap for chatty connections.
            while sleep.as_mut().poll(cx).is_ready() {
                // A client whose reads wait for the buffer budget is not idle: we are the ones not reading.
                if up.claim.is_waiting() {
                    last_activity = Instant::now();
                }
                let deadline = last_activity + idle;
                if Instant::now() >= deadline {
                    return Poll::Ready(Ok((RelayEnd::IdleTimeout, None)));
                }
                sleep.as_mut().reset(deadline.into());
            }
        }
        Poll::Pending
    })
    .await;

    let end = match ended {
        Ok((end, parked)) => {
            if let Some((u, d)) = parked {
                finish_drain(client, backend, ctl.protocol_level, u, d).await;
            }
            end
        }
        Err(fault) => RelayEnd::Error(fault.side),
    };
    RelayOutcome {
        to_backend: up.bytes,
        to_client: down.bytes,
        end,
    }
}

/// Both directions stopped at packet boundaries: a v5 client gets DISCONNECT 0x8B, the backend a normal
/// DISCONNECT, then both sides are closed. A side whose direction already ended gets nothing more.
async fn finish_drain<B>(
    client: &mut ClientStream,
    backend: &mut B,
    level: u8,
    up: Flow,
    down: Flow,
) where
    B: AsyncWrite + Unpin,
{
    let to_client = async {
        if level == 5 && down == Flow::Parked {
            client
                .write_all(&DISCONNECT_V5_SERVER_SHUTTING_DOWN)
                .await?;
        }
        client.shutdown().await
    };
    let to_backend = async {
        if up == Flow::Parked {
            backend.write_all(&DISCONNECT_NORMAL).await?;
        }
        backend.shutdown().await
    };
    let _ = tokio::time::timeout(DRAIN_WRITE_TIMEOUT, async {
        let _ = tokio::join!(to_client, to_backend);
    })
    .await;
}

/// The idle timeout for a client keep-alive: 1.5 × keep-alive (what MQTT allows a server) plus `grace`.
/// Keep-alive 0 (the client asked for none) gets `max_idle`: a silent client must not hold a slot forever (a dead
/// peer is caught sooner by TCP keep-alive and `TCP_USER_TIMEOUT`, see [`crate::sockopt`]).
pub(crate) fn idle_timeout(keep_alive: u16, grace: Duration, max_idle: Duration) -> Duration {
    match keep_alive {
        0 => max_idle,
        k => Duration::from_millis(u64::from(k) * 1500) + grace,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn ctl<'a>(
        idle: Option<Duration>,
        abort: &'a CancellationToken,
        drain: &'a CancellationToken,
        protocol_level: u8,
    ) -> RelayControl<'a> {
        RelayControl {
            idle,
            abort,
            drain,
            protocol_level,
            sent_after_connect: &[],
            buffers: budget(),
        }
    }

    /// A budget for the tests, larger than any test needs.
    fn budget() -> &'static Arc<BufferBudget> {
        static BUDGET: std::sync::OnceLock<Arc<BufferBudget>> = std::sync::OnceLock::new();
        BUDGET.get_or_init(|| BufferBudget::new(1 << 30))
    }

    #[tokio::test]
    async fn drain_waits_for_packet_boundaries_then_disconnects_both_sides() {
        let (mut client_end, lb_client) = pair().await;
        let (lb_backend, mut backend_end) = pair().await;
        let abort = CancellationToken::new();
        let drain = CancellationToken::new();
        let task = tokio::spawn({
            let drain = drain.clone();
            async move {
                let mut client = ClientStream::Plain(lb_client);
                let mut backend = lb_backend;
                relay(&mut client, &mut backend, ctl(None, &abort, &drain, 5)).await
            }
        });
        // Half a PUBLISH each way (the body is 10 bytes; 4 are sent), then the drain.
        let publish: Vec<u8> = [vec![0x30, 0x0A], vec![0u8; 10]].concat();
        client_end.write_all(&publish[..6]).await.unwrap();
        backend_end.write_all(&publish[..6]).await.unwrap();
        let mut got = [0u8; 6];
        backend_end.read_exact(&mut got).await.unwrap();
        client_end.read_exact(&mut got).await.unwrap();
        drain.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished(), "must wait for the packets in flight");
        // The rest of each packet, plus the start of another one that must not be forwarded.
        let mut rest = publish[6..].to_vec();
        rest.extend_from_slice(&[0x30, 0x02, 0, 0]);
        client_end.write_all(&rest).await.unwrap();
        backend_end.write_all(&rest).await.unwrap();
        let out = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(out.end, RelayEnd::Drained);
        let mut to_backend = Vec::new();
        backend_end.read_to_end(&mut to_backend).await.unwrap();
        assert_eq!(to_backend, [&publish[6..], &DISCONNECT_NORMAL[..]].concat());
        let mut to_client = Vec::new();
        client_end.read_to_end(&mut to_client).await.unwrap();
        assert_eq!(
            to_client,
            [&publish[6..], &DISCONNECT_V5_SERVER_SHUTTING_DOWN[..]].concat()
        );
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[test]
    fn idle_timeout_rule() {
        let (grace, max_idle) = (Duration::from_secs(30), Duration::from_secs(1800));
        assert_eq!(idle_timeout(0, grace, max_idle), max_idle);
        assert_eq!(idle_timeout(60, grace, max_idle), Duration::from_secs(120));
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let (mut client_end, lb_client) = pair().await;
        let (lb_backend, mut backend_end) = pair().await;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(async move {
            let mut client = ClientStream::Plain(lb_client);
            let mut backend = lb_backend;
            relay(
                &mut client,
                &mut backend,
                ctl(None, &shutdown, &CancellationToken::new(), 4),
            )
            .await
        });
        let big = vec![7u8; 100_000];
        client_end.write_all(&big).await.unwrap();
        client_end.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend_end.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), big.len());
        backend_end
            .write_all(b"reply after the client's half-close")
            .await
            .unwrap();
        backend_end.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client_end.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after the client's half-close");
        let out = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((out.to_backend, out.to_client), (100_000, 35));
        assert_eq!(out.end, RelayEnd::Eof(Side::Client));
    }

    #[tokio::test]
    async fn idle_connection_times_out() {
        let (_client_end, lb_client) = pair().await;
        let (lb_backend, _backend_end) = pair().await;
        let shutdown = CancellationToken::new();
        let mut client = ClientStream::Plain(lb_client);
        let mut backend = lb_backend;
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            relay(
                &mut client,
                &mut backend,
                ctl(
                    Some(Duration::from_millis(100)),
                    &shutdown,
                    &CancellationToken::new(),
                    4,
                ),
            ),
        )
        .await
        .unwrap();
        assert_eq!(out.end, RelayEnd::IdleTimeout);
    }
}
