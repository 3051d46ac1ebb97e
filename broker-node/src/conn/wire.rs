//! The socket as the connection loop sees it: non-blocking reads into a buffer that exists only while bytes are
//! pending, packets decoded from it, replies encoded into one write buffer flushed with as few writes as
//! possible. An idle connection holds no buffer at all (memory per idle connection is a product goal).

use std::io::{self, ErrorKind};
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use fleetgate_protocol::mqtt::{Codec, CodecError, Packet, PlainPublish};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

use crate::limits::READ_CHUNK;

/// Why reading a packet failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The codec refused the bytes.
    #[error("protocol error: {0}")]
    Codec(CodecError),
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Which way the socket is ready ([`Wire::poll_ready`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// Bytes (or end of stream) to read.
    Read,
    /// Room to write.
    Write,
}

/// A client socket with its codec and (transient) buffers.
#[derive(Debug)]
pub(crate) struct Wire {
    /// The socket.
    pub(crate) stream: TcpStream,
    /// The MQTT codec.
    pub(crate) codec: Codec,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Wire {
    /// Wraps a socket; no buffer is allocated yet.
    pub(crate) fn new(stream: TcpStream, codec: Codec) -> Wire {
        Wire {
            stream,
            codec,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
        }
    }

    /// Reads what the socket has now. `Ok(0)` is end of stream; `WouldBlock` means a spurious wake-up (then a
    /// buffer reserved for the read is freed again: readiness often outlives the data, e.g. right after CONNECT,
    /// and an idle connection must not keep a chunk from a read that found nothing).
    ///
    /// A read shorter than the room it was given drained the socket (Linux TCP returns short only with the
    /// receive queue and backlog empty): the socket's readiness is cleared then, so the loop waits for the next
    /// edge instead of spending a `recv` on `EAGAIN` after every packet — nginx does the same with `EPOLLRDHUP`,
    /// which tokio registers, so a close still wakes us. The readiness is cleared with the event tick seen
    /// *before* the read: bytes that arrived after it raised a newer tick, and then nothing is cleared.
    pub(crate) fn try_fill(&mut self) -> io::Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        let mut got = 0;
        let (stream, rbuf) = (&self.stream, &mut self.rbuf);
        let read = stream.try_io(Interest::READABLE, || {
            let n = stream.try_read_buf(rbuf)?;
            got = n;
            if n > 0 && n < room {
                Err(ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        match read {
            Err(e) if e.kind() == ErrorKind::WouldBlock && got > 0 => Ok(got),
            Err(e) => {
                self.release_read_buffer();
                Err(e)
            }
            Ok(n) => Ok(n),
        }
    }

    /// The next complete packet in the read buffer, if any.
    pub(crate) fn decode(&mut self) -> Result<Option<Packet>, CodecError> {
        self.codec.decode(&mut self.rbuf)
    }

    /// Frees the read buffer once everything in it was decoded (packets keep their own slices alive).
    pub(crate) fn release_read_buffer(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }

    /// Encodes `packet` after what is pending; on error nothing was added.
    pub(crate) fn encode(&mut self, packet: Packet) -> Result<(), CodecError> {
        let before = self.wbuf.len();
        self.codec
            .encode(packet, &mut self.wbuf)
            .inspect_err(|_| self.wbuf.truncate(before))
    }

    /// Encodes a PUBLISH without properties from borrowed parts ([`Codec::encode_plain_publish`]); on error
    /// nothing was added.
    pub(crate) fn encode_plain_publish(
        &mut self,
        publish: PlainPublish<'_>,
    ) -> Result<(), CodecError> {
        self.codec.encode_plain_publish(publish, &mut self.wbuf)
    }

    /// Ready when the socket is readable (if `read`) or writable (if `write`), reads first. Holds no state
    /// between polls (the socket keeps the wakers), unlike `readable()`/`writable()` futures.
    /// Takes the socket alone (the codec is not `Sync`, and the future borrowing it must be `Send`).
    pub(crate) fn poll_ready(
        stream: &TcpStream,
        cx: &mut Context<'_>,
        read: bool,
        write: bool,
    ) -> Poll<io::Result<Ready>> {
        if read && let Poll::Ready(r) = stream.poll_read_ready(cx) {
            return Poll::Ready(r.map(|()| Ready::Read));
        }
        if write && let Poll::Ready(r) = stream.poll_write_ready(cx) {
            return Poll::Ready(r.map(|()| Ready::Write));
        }
        Poll::Pending
    }

    /// Bytes encoded and not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes as much as the socket takes without waiting; `Ok(true)` once everything is out (the buffer is
    /// then freed).
    pub(crate) fn try_flush(&mut self) -> io::Result<bool> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.wbuf.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if self.wbuf.capacity() > 0 {
            self.wbuf = BytesMut::new();
        }
        Ok(true)
    }

    /// Writes everything pending, waiting for the socket as needed.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        while !self.try_flush()? {
            self.stream.writable().await?;
        }
        Ok(())
    }

    /// Waits for one complete packet (used before the packet loop, for CONNECT).
    pub(crate) async fn read_packet(&mut self) -> Result<Packet, ReadError> {
        loop {
            if let Some(packet) = self.decode().map_err(ReadError::Codec)? {
                self.release_read_buffer();
                return Ok(packet);
            }
            self.stream.readable().await?;
            match self.try_fill() {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// After a short read clears the readiness, bytes that arrive later still wake the reader, and the end of
    /// stream does too.
    #[tokio::test]
    async fn a_short_read_clears_readiness_without_losing_later_bytes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut wire = Wire::new(server, Codec::new(1024));
        for round in 0..50u8 {
            client.write_all(&[round; 10]).await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), wire.stream.readable())
                .await
                .expect("woken for new bytes")
                .unwrap();
            let mut got = 0;
            while got < 10 {
                match wire.try_fill() {
                    Ok(n) => got += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        wire.stream.readable().await.unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(got, 10, "round {round}");
            // Drained by a short read: the readiness is gone, so no `recv` is spent on EAGAIN.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(wire.stream.poll_read_ready(&mut cx).is_pending());
            wire.rbuf.clear();
        }
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), wire.stream.readable())
            .await
            .expect("woken for the close")
            .unwrap();
        assert_eq!(wire.try_fill().unwrap(), 0);
    }
}
