//! The per-connection load loops of `throughput`: the subscriber (decode, latency, PUBACK), the publisher (paced or
//! unbounded batches, QoS 1 window), its PUBACK reader, and the end-to-end flow control of unbounded runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Semaphore, watch};

use crate::mqtt::{self, Packet, Version};
use crate::net::{self, Session, Stream};
use crate::stats::{self, Latency};

/// Messages a publisher encodes into one write: large enough to amortise syscalls when unbounded, small enough that
/// a paced publisher's burst stays well under a millisecond of traffic.
pub(crate) const MAX_BATCH: u64 = 64;
/// Payload bytes the generator needs: 8 of send timestamp + 8 of sequence number.
pub(crate) const STAMP_LEN: usize = 16;
/// How often the drain wait checks the received count.
pub(crate) const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Unbounded mode: how often a publisher held back by `--outstanding` looks again.
pub(crate) const FLOW_POLL: Duration = Duration::from_millis(1);
/// Unbounded mode: deliveries that stay outstanding this long with nothing arriving are written off as lost, so a
/// lossy server slows the publishers down without stalling them for the rest of the run.
pub(crate) const STALL_WRITE_OFF: Duration = Duration::from_millis(100);
/// Read buffer refill threshold and growth step of a subscriber.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// Bits of a payload's sequence number that count a publisher's messages; the publisher's index is above them.
pub(crate) const SEQ_BITS: u32 = 40;

/// What the subscribers have seen so far, summed over all of them (shared with the flow control).
#[derive(Default)]
pub(crate) struct Tally {
    /// Deliveries received.
    pub(crate) received: AtomicU64,
    /// Deliveries known lost: skipped in a publisher's sequence (the server keeps one publisher's messages in order
    /// to a subscriber, so a jump means what lies between was dropped, e.g. a QoS 0 queue overflowing).
    pub(crate) skipped: AtomicU64,
}

/// End-to-end flow control of unbounded runs, shared by all publishers.
pub(crate) struct Flow {
    /// Deliveries published so far (messages × subscribers they fan out to).
    pub(crate) expected: AtomicU64,
    /// Deliveries received or known lost so far. Lost ones count as done: a server that drops QoS 0 messages
    /// under load must not shrink the window for the rest of the run (each drop would hold a slot forever, and
    /// a window worn down that way measured the publishers' pauses instead of the server).
    tally: Arc<Tally>,
    /// Deliveries published before the latest stall: counted as done whether or not they arrive later. A mark, not
    /// a count added to `received`: a written-off delivery that does arrive late must not be credited twice (that
    /// let publishers overshoot the window by the written-off amount for the rest of the run, and a slow server
    /// was then flooded past its queues).
    written_off_to: AtomicU64,
    /// Deliveries still outstanding when a stall was declared, summed over the stalls.
    written_off: AtomicU64,
    /// Stalls declared.
    stalls: AtomicU64,
    /// Most deliveries allowed in flight.
    pub(crate) limit: u64,
}

impl Flow {
    /// Flow control with at most `limit` deliveries in flight, fed by the subscribers' tally.
    pub(crate) fn new(tally: Arc<Tally>, limit: u64) -> Self {
        Self {
            expected: AtomicU64::new(0),
            tally,
            written_off_to: AtomicU64::new(0),
            written_off: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            limit,
        }
    }

    /// Deliveries received or seen skipped.
    fn accounted(&self) -> u64 {
        self.tally.received.load(Ordering::Relaxed) + self.tally.skipped.load(Ordering::Relaxed)
    }

    /// Deliveries neither received, seen lost nor written off.
    fn in_flight(&self) -> u64 {
        let done = self
            .accounted()
            .max(self.written_off_to.load(Ordering::Relaxed));
        self.expected.load(Ordering::Relaxed).saturating_sub(done)
    }

    /// Declares a stall: everything published so far counts as done.
    fn write_off(&self) {
        let expected = self.expected.load(Ordering::Relaxed);
        // fetch_max: publishers that see the same stall write the same deliveries off once.
        let before = self.written_off_to.fetch_max(expected, Ordering::Relaxed);
        if expected > before {
            let done = before.max(self.accounted());
            self.written_off
                .fetch_add(expected.saturating_sub(done), Ordering::Relaxed);
            self.stalls.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(written_off, stalls)` for the report.
    pub(crate) fn write_offs(&self) -> (u64, u64) {
        (
            self.written_off.load(Ordering::Relaxed),
            self.stalls.load(Ordering::Relaxed),
        )
    }

    /// Waits until the deliveries in flight drop to the limit, writing them off after a stall; gives up at `end`.
    pub(crate) async fn wait_for_room(&self, end: Instant) {
        let mut last = self.accounted();
        let mut since = Instant::now();
        loop {
            let received = self.accounted();
            let now = Instant::now();
            if self.in_flight() <= self.limit || now >= end {
                return;
            }
            if received != last {
                (last, since) = (received, now);
            } else if now - since >= STALL_WRITE_OFF {
                self.write_off();
                return;
            }
            tokio::time::sleep(FLOW_POLL).await;
        }
    }
}

pub(crate) struct SubResult {
    pub(crate) received: u64,
    /// Deliveries skipped in a publisher's sequence (dropped by the server).
    pub(crate) skipped: u64,
    pub(crate) foreign: u64,
    pub(crate) last_rx_ns: u64,
    pub(crate) latency: Latency,
    pub(crate) error: Option<String>,
}

pub(crate) struct PubResult {
    pub(crate) sent: u64,
    pub(crate) error: Option<String>,
    pub(crate) writer: WriteHalf<Stream>,
    pub(crate) reader: tokio::task::JoinHandle<()>,
}

pub(crate) async fn subscriber(
    session: Session,
    version: Version,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) -> SubResult {
    let Session {
        mut stream,
        mut read_buf,
    } = session;
    let mut result = SubResult {
        received: 0,
        skipped: 0,
        foreign: 0,
        last_rx_ns: 0,
        latency: Latency::new(),
        error: None,
    };
    let mut acks = BytesMut::with_capacity(4096);
    let mut sequences = Sequences::default();
    loop {
        // Decode everything buffered (including bytes read with the SUBACK) before reading more.
        let mut used = 0;
        let mut batch = 0u64;
        let mut skipped = 0u64;
        loop {
            match mqtt::decode(&read_buf[used..], version) {
                Ok(Some((packet, len))) => {
                    used += len;
                    if let Packet::Publish {
                        qos,
                        packet_id,
                        payload,
                    } = packet
                    {
                        batch += 1;
                        if payload.len() >= STAMP_LEN {
                            let mut stamp = [0u8; 8];
                            stamp.copy_from_slice(&payload[..8]);
                            let sent_ns = u64::from_be_bytes(stamp);
                            stamp.copy_from_slice(&payload[8..16]);
                            skipped += sequences.skipped_before(u64::from_be_bytes(stamp));
                            let now = stats::now_ns();
                            result.latency.record_ns(now.saturating_sub(sent_ns));
                            result.last_rx_ns = now;
                        } else {
                            result.foreign += 1;
                        }
                        if let (1, Some(id)) = (qos, packet_id) {
                            mqtt::encode_puback(&mut acks, id);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    result.error = Some(e.to_string());
                    return result;
                }
            }
        }
        read_buf.advance(used);
        result.received += batch;
        tally.received.fetch_add(batch, Ordering::Relaxed);
        if skipped > 0 {
            result.skipped += skipped;
            tally.skipped.fetch_add(skipped, Ordering::Relaxed);
        }
        if !acks.is_empty() {
            if let Err(e) = stream.write_all(&acks).await {
                result.error = Some(format!("writing PUBACK: {e}"));
                return result;
            }
            acks.clear();
        }
        if read_buf.capacity() - read_buf.len() < READ_CHUNK / 4 {
            read_buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            read = stream.read_buf(&mut read_buf) => match read {
                Ok(0) => {
                    result.error = Some("server closed the connection".into());
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    result.error = Some(format!("read: {e}"));
                    break;
                }
            },
        }
    }
    net::disconnect(&mut stream).await;
    result
}

/// The next sequence number a subscriber expects from each publisher.
#[derive(Default)]
struct Sequences {
    next: HashMap<u64, u64>,
}

impl Sequences {
    /// Records `seq` (publisher index above [`SEQ_BITS`], its message count below) and returns how many of that
    /// publisher's messages it jumped over. A number already passed (a QoS 1 redelivery) skips nothing.
    fn skipped_before(&mut self, seq: u64) -> u64 {
        let (publisher, n) = (seq >> SEQ_BITS, seq & ((1 << SEQ_BITS) - 1));
        let next = self.next.entry(publisher).or_insert(0);
        if n < *next {
            return 0;
        }
        let skipped = n - *next;
        *next = n + 1;
        skipped
    }
}

pub(crate) struct PubConfig {
    pub(crate) index: u64,
    pub(crate) topic: String,
    pub(crate) version: Version,
    pub(crate) qos: u8,
    pub(crate) payload: usize,
    pub(crate) inflight: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) flow: Option<Arc<Flow>>,
    pub(crate) fanout: u64,
    pub(crate) phase: Duration,
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) drain_deadline: Instant,
}

pub(crate) async fn publisher(session: Session, cfg: PubConfig) -> PubResult {
    let (reader_half, mut writer) = tokio::io::split(session.stream);
    let window = Arc::new(Semaphore::new(cfg.inflight));
    let acked = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(ack_reader(
        reader_half,
        session.read_buf,
        cfg.version,
        Arc::clone(&window),
        Arc::clone(&acked),
    ));
    let mut sent = 0u64;
    let mut packet_id: u16 = 0;
    let mut buf =
        BytesMut::with_capacity(MAX_BATCH as usize * (cfg.payload + cfg.topic.len() + 16));
    let error = loop {
        let now = Instant::now();
        if now >= cfg.end {
            break None;
        }
        let mut n = match cfg.rate {
            None => {
                if let Some(flow) = &cfg.flow {
                    flow.wait_for_room(cfg.end).await;
                    flow.expected
                        .fetch_add(MAX_BATCH * cfg.fanout, Ordering::Relaxed);
                }
                MAX_BATCH
            }
            Some(rate) => {
                let from = cfg.start + cfg.phase;
                let due = if now < from {
                    0
                } else {
                    ((now - from).as_secs_f64() * rate) as u64 + 1
                };
                let n = due.saturating_sub(sent).min(MAX_BATCH);
                if n == 0 {
                    let next = from + Duration::from_secs_f64(sent as f64 / rate);
                    tokio::time::sleep_until(next.min(cfg.end).into()).await;
                    continue;
                }
                n
            }
        };
        let mut failed = None;
        while n > 0 {
            if cfg.qos > 0 {
                match window.try_acquire() {
                    Ok(permit) => permit.forget(),
                    Err(_) => {
                        // Window full: send what is encoded, then wait for a PUBACK.
                        if let Err(e) = writer.write_all(&buf).await {
                            failed = Some(format!("write: {e}"));
                            break;
                        }
                        buf.clear();
                        match tokio::time::timeout_at(cfg.drain_deadline.into(), window.acquire())
                            .await
                        {
                            Ok(Ok(permit)) => permit.forget(),
                            _ => {
                                failed = Some("no PUBACK before the drain deadline".into());
                                break;
                            }
                        }
                    }
                }
                packet_id = packet_id.wrapping_add(1).max(1);
            }
            let seq = (cfg.index << SEQ_BITS) | sent;
            mqtt::encode_publish(
                &mut buf,
                cfg.version,
                &cfg.topic,
                cfg.qos,
                packet_id,
                cfg.payload,
                |b| {
                    b.put_u64(stats::now_ns());
                    b.put_u64(seq);
                    b.put_bytes(0x5A, cfg.payload - STAMP_LEN);
                },
            );
            sent += 1;
            n -= 1;
        }
        if failed.is_some() {
            break failed;
        }
        if let Err(e) = writer.write_all(&buf).await {
            break Some(format!("write: {e}"));
        }
        buf.clear();
    };
    if cfg.qos > 0 && error.is_none() {
        while acked.load(Ordering::Relaxed) < sent && Instant::now() < cfg.drain_deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
    let _ = writer.flush().await;
    PubResult {
        sent,
        error,
        writer,
        reader,
    }
}

async fn ack_reader(
    mut reader: ReadHalf<Stream>,
    mut buf: BytesMut,
    version: Version,
    window: Arc<Semaphore>,
    acked: Arc<AtomicU64>,
) {
    loop {
        let mut used = 0;
        let mut acks = 0usize;
        loop {
            match mqtt::decode(&buf[used..], version) {
                Ok(Some((Packet::PubAck { .. }, len))) => {
                    used += len;
                    acks += 1;
                }
                Ok(Some((_, len))) => used += len,
                Ok(None) => break,
                Err(e) => {
                    net::warn(&format!("publisher connection: {e}"));
                    return;
                }
            }
        }
        buf.advance(used);
        if acks > 0 {
            acked.fetch_add(acks as u64, Ordering::Relaxed);
            window.add_permits(acks);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8192);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_in_a_publishers_sequence_counts_what_it_skipped() {
        let mut s = Sequences::default();
        let a = 3 << SEQ_BITS;
        let b = 4 << SEQ_BITS;
        assert_eq!(s.skipped_before(a), 0);
        assert_eq!(s.skipped_before(b | 2), 2, "b's first two never came");
        assert_eq!(s.skipped_before(a | 1), 0);
        assert_eq!(s.skipped_before(a | 5), 3);
        assert_eq!(s.skipped_before(a | 4), 0, "a redelivery skips nothing");
        assert_eq!(s.skipped_before(a | 6), 0);
    }

    #[test]
    fn lost_deliveries_free_their_window_slots() {
        let tally = Arc::new(Tally::default());
        let flow = Flow::new(Arc::clone(&tally), 500);
        flow.expected.store(1000, Ordering::Relaxed);
        tally.received.store(300, Ordering::Relaxed);
        assert_eq!(flow.in_flight(), 700);
        tally.skipped.store(400, Ordering::Relaxed);
        assert_eq!(flow.in_flight(), 300);
    }

    #[test]
    fn late_arrivals_of_written_off_deliveries_are_not_credited_twice() {
        let tally = Arc::new(Tally::default());
        let received = &tally.received;
        let flow = Flow::new(Arc::clone(&tally), 500);
        flow.expected.store(1000, Ordering::Relaxed);
        assert_eq!(flow.in_flight(), 1000);
        flow.write_off();
        flow.write_off(); // a second publisher seeing the same stall
        assert_eq!(flow.in_flight(), 0);
        assert_eq!(flow.write_offs(), (1000, 1));
        // The written-off deliveries arrive after all: no extra room.
        received.store(1000, Ordering::Relaxed);
        flow.expected.store(1500, Ordering::Relaxed);
        assert_eq!(flow.in_flight(), 500);
        // Half of the next window is lost, the rest arrives; the next stall writes off only the lost half.
        received.store(1250, Ordering::Relaxed);
        flow.write_off();
        assert_eq!(flow.in_flight(), 0);
        assert_eq!(flow.write_offs(), (1250, 2));
    }
}
