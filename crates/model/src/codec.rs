//! The compact binary form of an [`Event`] (format version 1).
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 1    | codec version (`1`)                                          |
//! | 1      | 2    | event kind, u16 little-endian ([`EventKind`])                |
//! | 3      | n    | the variant's fields in declaration order, `postcard` encoded |
//!
//! `postcard` writes integers as LEB128 varints (zig-zag for signed), `f64` as 8
//! little-endian bytes, strings and byte arrays as a varint length and the bytes,
//! `Option` as a 0/1 byte, enums as a varint variant index. The size of an event is
//! therefore the size of its fields: a tick with five levels is about 200 bytes, a trade
//! about 70, a cancel request about 26 (the table in `docs/format-event.md` is checked by a test). Integrity is the
//! container's job (the WAL's CRC32C); this layer rejects anything that does not decode
//! exactly, with no trailing bytes.
//!
//! Compatibility: fields are positional, so a change to any variant's fields needs a new
//! codec version; decoders keep reading every older version.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event::{Event, EventKind, FieldSource};
use crate::Error;

/// The codec version this build writes.
pub const CODEC_VERSION: u8 = 1;
/// Bytes before the body.
pub const HEADER_BYTES: usize = 3;

impl Event {
    /// Appends the binary form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        out.push(CODEC_VERSION);
        out.extend_from_slice(&self.kind().as_u16().to_le_bytes());
        let res = match self {
            Self::OrderRequested(e) => body(e, out),
            Self::OrderAccepted(e) | Self::OrderUpdated(e) => body(e, out),
            Self::OrderRejected(e) => body(e, out),
            Self::CancelRequested(e) => body(e, out),
            Self::OrderCancelled(e) => body(e, out),
            Self::TradeExecuted(e) => body(e, out),
            Self::AccountUpdated(e) => body(e, out),
            Self::PositionUpdated(e) => body(e, out),
            Self::Tick(e) => body(e, out),
            Self::BookSnapshot(e) => body(e, out),
            Self::BookDelta(e) => body(e, out),
            Self::UserRegistered(e) => body(e, out),
            Self::UserUpdated(e) => body(e, out),
            Self::AccountBound(e) | Self::AccountUnbound(e) => body(e, out),
            Self::Transfer(e) => body(e, out),
            Self::Extension(e) => body(e, out),
        };
        res.map_err(|e| Error::Encode { kind: self.kind().name(), reason: e.to_string() })
    }

    /// The binary form.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(128);
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes and validates the binary form. Never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Event, Error> {
        if bytes.len() < HEADER_BYTES {
            return Err(Error::Decode {
                kind: None,
                reason: format!("{} bytes is shorter than the header", bytes.len()),
            });
        }
        if bytes[0] != CODEC_VERSION {
            return Err(Error::UnsupportedVersion { version: bytes[0] });
        }
        let number = u16::from_le_bytes([bytes[1], bytes[2]]);
        let kind = EventKind::from_u16(number).ok_or(Error::UnknownKind { kind: number })?;
        crate::event::build(kind, &mut Body(&bytes[HEADER_BYTES..]))
    }
}

/// The postcard body of one event.
struct Body<'a>(&'a [u8]);

impl FieldSource for Body<'_> {
    fn fields<T: DeserializeOwned>(&mut self, kind: EventKind) -> Result<T, Error> {
        let err = |reason: String| Error::Decode { kind: Some(kind.name()), reason };
        let (value, rest) =
            postcard::take_from_bytes::<T>(self.0).map_err(|e| err(e.to_string()))?;
        if !rest.is_empty() {
            return Err(err(format!("{} trailing bytes", rest.len())));
        }
        Ok(value)
    }
}

fn body<T: Serialize>(value: &T, out: &mut Vec<u8>) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, Append(out))
}

/// A postcard output that appends to the caller's vector in place (postcard's own
/// `to_extend` takes the vector by value and hands it back).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // A varint (an integer, a length, an enum's index) comes as a slice of one to
        // ten bytes of a buffer, a length the compiler cannot see; copied through
        // `extend_from_slice` as is, each took a call to `memcpy` (14 of them for a
        // tick). Each length below is copied as an array of that size instead, inline.
        // Always inlined: where the length is a constant (a float's eight bytes), only
        // its own arm remains.
        macro_rules! fixed {
            ($($n:literal)*) => {
                match data.len() {
                    $($n => {
                        if let Ok(a) = <&[u8; $n]>::try_from(data) {
                            self.0.extend_from_slice(a);
                            return Ok(());
                        }
                    })*
                    _ => {}
                }
            };
        }
        fixed!(1 2 3 4 5 6 7 8 9 10);
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::samples::sample;
    use crate::EventKind;

    /// The in-place output writes exactly postcard's own bytes for integers of every
    /// varint length (one to ten bytes), negative and positive; and every event kind's
    /// encoding still decodes to the event.
    #[test]
    fn append_writes_postcard_bytes() {
        let mut values = vec![0i64, -1, 1, i64::MIN, i64::MAX];
        for shift in 0..64 {
            values.extend([
                1i64 << shift,
                (1i64 << shift).wrapping_sub(1),
                (1i64 << shift).wrapping_neg(),
            ]);
        }
        for (n, v) in values.iter().enumerate() {
            let Event::Tick(mut t) = sample(EventKind::Tick, n as u64) else { panic!() };
            (t.volume, t.open_interest, t.bid_volume1, t.datetime) =
                (*v, v / 3, v.wrapping_neg(), *v);
            let mut out = vec![9u8];
            body(&t, &mut out).unwrap();
            assert_eq!(out[1..], postcard::to_allocvec(&t).unwrap()[..], "volume {v}");
            assert_eq!(out[0], 9, "appends after what the vector held");
        }
        for kind in EventKind::ALL {
            let e = sample(kind, 12_345);
            let bytes = e.encode().unwrap();
            assert_eq!(Event::decode(&bytes).unwrap(), e, "{kind:?}");
        }
    }
}
