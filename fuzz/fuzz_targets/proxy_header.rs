//! The node's PROXY v1/v2 reader (`fleetgate_protocol::proxy::read_header`, the real async reader) on whatever a
//! trusted peer sends, delivered in reads of a fuzzed size: never a panic; on success it read exactly the header
//! and no byte after it (v2: 16 bytes plus the announced length; v1: up to the first LF, which ends CRLF); and a
//! header it accepts, re-encoded by the LB's encoder (`encode_v2`), reads back with the same addresses, and
//! from then on encodes and reads to itself (the encoder leaves out what the reader would refuse, and the
//! reader drops what was not vouched for, so the first round may lose fields, never the second).
//!
//! Input: one mode byte (bit 0: CRC32C on the re-encoded header; bits 1-3: read size), then the stream.

#![no_main]

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use fleetgate_protocol::proxy::{
    HeaderSpec, ProxiedConnection, ProxyCommand, ProxyError, ProxyPolicy, TrustedProxies,
    encode_v2, read_header,
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::runtime::Runtime;

/// Read sizes the mode byte picks from: byte by byte up to everything at once.
const READ_SIZES: [usize; 8] = [1, 2, 3, 7, 16, 17, 64, usize::MAX];

thread_local! {
    static RUNTIME: RefCell<Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime"),
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let read_size = READ_SIZES[usize::from(mode >> 1) % READ_SIZES.len()];
    let (result, consumed) = read(stream, read_size);
    let Ok(conn) = result else {
        return;
    };
    let header = &stream[..consumed];
    if header.first() == Some(&b'\r') {
        let announced = usize::from(u16::from_be_bytes([header[14], header[15]]));
        assert_eq!(consumed, 16 + announced, "v2 header read past its length");
    } else {
        assert!(header.ends_with(b"\r\n"), "v1 line {header:?}");
        assert_eq!(
            header.iter().filter(|&&b| b == b'\n').count(),
            1,
            "{header:?}"
        );
    }

    // LOCAL, or PROXY with no address the LB could write (AF_UNSPEC, AF_UNIX, v1 UNKNOWN).
    let (Some(source), Some(destination)) = (conn.source, conn.destination) else {
        return;
    };
    assert_eq!(conn.command, ProxyCommand::Proxy);
    let crc32c = mode & 1 == 1;
    let once = reread(&conn, crc32c);
    assert_eq!(
        (once.source, once.destination),
        (Some(source), Some(destination))
    );
    let twice = reread(&once, crc32c);
    assert_eq!(
        twice, once,
        "a header the LB wrote does not read back as itself"
    );
});

/// Reads one header off `stream` in reads of at most `read_size` bytes; the result and the bytes consumed.
fn read(stream: &[u8], read_size: usize) -> (Result<ProxiedConnection, ProxyError>, usize) {
    let peer: SocketAddr = ([127, 0, 0, 1], 40000).into();
    let trusted = TrustedProxies::new(vec!["127.0.0.1/32".parse().expect("a CIDR")]);
    let policy = ProxyPolicy::new(trusted);
    let mut reader = Chunked {
        data: stream,
        pos: 0,
        read_size,
    };
    let result = RUNTIME.with(|rt| {
        rt.borrow()
            .block_on(read_header(&mut reader, peer, &policy))
    });
    (result, reader.pos)
}

/// `conn` encoded as the LB encodes a header for a backend, then read back (it must be, whole).
fn reread(conn: &ProxiedConnection, crc32c: bool) -> ProxiedConnection {
    let spec = HeaderSpec {
        source: conn.source.expect("a source"),
        destination: conn.destination.expect("a destination"),
        identity: conn.identity.clone(),
        crc32c,
    };
    let encoded = encode_v2(&spec);
    let (result, consumed) = read(&encoded, usize::MAX);
    match result {
        Ok(back) => {
            assert_eq!(consumed, encoded.len());
            back
        }
        Err(e) => panic!("{spec:?} encoded as {encoded:?} reads as {e:?}"),
    }
}

/// A stream over `data` that hands out at most `read_size` bytes per read, and tells how much was read.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    read_size: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(buf.remaining()).min(self.read_size);
        buf.put_slice(&rest[..n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}
