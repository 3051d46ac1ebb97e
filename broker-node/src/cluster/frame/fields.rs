//! The fields frames are made of: writers (`put_*`) for strings, byte strings and lists, and readers (`get_*`)
//! that check every length against what is left of the frame, so a short or lying frame is an error.

use std::num::NonZeroU32;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fleetgate_protocol::mqtt::{ByteString, QoS};

use super::FrameError;

/// A QoS from its wire value.
pub(super) fn qos_from(v: u8) -> Result<QoS, FrameError> {
    match v {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err(FrameError::Malformed("qos")),
    }
}

/// Writes a `u16`-length string (truncated to 65535 bytes).
pub(super) fn put_str(out: &mut BytesMut, s: &str) {
    // MQTT strings (topics, client IDs) are at most 65535 bytes; our own (names, addresses) far less.
    let s = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

/// Writes a `u16`-counted list of strings.
pub(super) fn put_strs(out: &mut BytesMut, list: &[ByteString]) {
    out.put_u16(u16::try_from(list.len()).unwrap_or(u16::MAX));
    for s in list.iter().take(usize::from(u16::MAX)) {
        put_str(out, s);
    }
}

/// Reads a list written by [`put_strs`].
pub(super) fn get_strs(r: &mut Bytes) -> Result<Vec<ByteString>, FrameError> {
    let n = get_u16(r)?;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get_str(r)?);
    }
    Ok(out)
}

/// Writes a `u32`-length byte string.
pub(super) fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.put_slice(b);
}

/// Writes a `u16`-counted list of subscription identifiers.
pub(super) fn put_ids(out: &mut BytesMut, ids: &[NonZeroU32]) {
    out.put_u16(u16::try_from(ids.len()).unwrap_or(u16::MAX));
    for id in ids.iter().take(usize::from(u16::MAX)) {
        out.put_u32(id.get());
    }
}

/// An error unless `n` more bytes are left in the frame.
fn need(r: &Bytes, n: usize) -> Result<(), FrameError> {
    if r.remaining() < n {
        Err(FrameError::Malformed("truncated"))
    } else {
        Ok(())
    }
}

/// Reads a `u8`.
pub(super) fn get_u8(r: &mut Bytes) -> Result<u8, FrameError> {
    need(r, 1)?;
    Ok(r.get_u8())
}

/// Reads a big-endian `u16`.
pub(super) fn get_u16(r: &mut Bytes) -> Result<u16, FrameError> {
    need(r, 2)?;
    Ok(r.get_u16())
}

/// Reads a big-endian `u32`.
pub(super) fn get_u32(r: &mut Bytes) -> Result<u32, FrameError> {
    need(r, 4)?;
    Ok(r.get_u32())
}

/// Reads a big-endian `u64`.
pub(super) fn get_u64(r: &mut Bytes) -> Result<u64, FrameError> {
    need(r, 8)?;
    Ok(r.get_u64())
}

/// Reads a QoS byte.
pub(super) fn get_qos(r: &mut Bytes) -> Result<QoS, FrameError> {
    qos_from(get_u8(r)?)
}

/// Reads a string written by [`put_str`]; invalid UTF-8 is an error.
pub(super) fn get_str(r: &mut Bytes) -> Result<ByteString, FrameError> {
    let n = usize::from(get_u16(r)?);
    need(r, n)?;
    ByteString::try_from(r.split_to(n)).map_err(|_| FrameError::Malformed("utf-8"))
}

/// Reads a byte string written by [`put_bytes`], without copying it.
pub(super) fn get_bytes(r: &mut Bytes) -> Result<Bytes, FrameError> {
    let n = get_u32(r)? as usize;
    need(r, n)?;
    Ok(r.split_to(n))
}

/// Reads a list written by [`put_ids`] (an identifier 0 is skipped).
pub(super) fn get_ids(r: &mut Bytes) -> Result<Vec<NonZeroU32>, FrameError> {
    let n = get_u16(r)?;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.extend(NonZeroU32::new(get_u32(r)?));
    }
    Ok(ids)
}
