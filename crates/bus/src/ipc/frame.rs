//! The bytes on the wire between the bridge and its clients (all little-endian).
//! `docs/bus.md` has the same tables.
//!
//! **Frame** (one iceoryx2 sample on a topic service). The sample's payload is the
//! encoded event, exactly as the engine stored it (a registration's password hash
//! emptied); the frame's header travels in the sample's iceoryx2 *user header*, six
//! `u64` words (48 bytes) in the machine's byte order. Shared memory never leaves the
//! machine, and on the little-endian machines Bourse runs on the bytes are:
//!
//! | offset | width | field |
//! |---|---|---|
//! | 0 | 1 | type: 1 event, 2 heartbeat |
//! | 1 | 1 | version (2; version 1 put this header in front of the payload) |
//! | 2 | 2 | event kind (0 in a heartbeat) |
//! | 4 | 2 | 12-bit hash of the event's instrument (0 without one) |
//! | 6 | 2 | 12-bit hash of the event's account (0 without one) |
//! | 8 | 8 | event: its LSN; heartbeat: the last LSN the bridge has seen |
//! | 16 | 8 | event: its timestamp (ns); heartbeat: when it was sent |
//! | 24 | 8 | `prev`: the last LSN of this service's topics before this frame, sent or not |
//! | 32 | 8 | the bridge's incarnation (its start time in ns) |
//! | 40 | 4 | payload length (must equal the sample's payload length) |
//! | 44 | 4 | reserved (0) |
//!
//! With the header out of the payload, the bridge copies an event once, straight from
//! the caller's buffer into the loaned sample, instead of assembling header and
//! payload in a buffer first. A version-1 client cannot open a version-2 service: the
//! user header is part of the service's type, so iceoryx2 refuses the mismatch.
//!
//! `prev` is what makes iceoryx2's silent overflow visible: a client that has seen
//! everything up to `last` and receives a frame with `prev > last` missed
//! `last + 1 ..= prev`.
//!
//! **Request** (client → bridge), 32 bytes then a cursor name:
//!
//! | offset | width | field |
//! |---|---|---|
//! | 0 | 1 | op: 1 replay, 2 open cursor, 3 acknowledge |
//! | 1 | 1 | replay: topic bits (0 = all); acknowledge: 1 to flush to disk |
//! | 2 | 2 | name length |
//! | 4 | 4 | replay: page byte limit |
//! | 8 | 8 | replay: first LSN; open: start LSN (0 = live); acknowledge: the LSN |
//! | 16 | 8 | replay: last LSN wanted (inclusive) |
//! | 24 | 8 | tag: chosen by the client, echoed in the response |
//!
//! **Response** (bridge → client), 32 bytes then records:
//!
//! | offset | width | field |
//! |---|---|---|
//! | 0 | 1 | status: 0 ok, 1 error (the rest is a UTF-8 message), 2 no longer retained |
//! | 4 | 4 | records in this page |
//! | 8 | 8 | replay: the next LSN to ask for (status 2: the first retained); cursors: the acknowledged LSN |
//! | 16 | 8 | the last LSN committed when this was served |
//! | 24 | 8 | the request's tag |
//!
//! The tag pairs a response with its request. iceoryx2 already does that by its own
//! request id, but that id restarts at 0 in every client, and a response the bridge
//! sends to a client that died can reach the client that took its port. A client
//! starts its tags at a random number and drops any response whose tag is not the
//! one it is waiting for.
//!
//! Each record: LSN (8), timestamp (8), kind (2), reserved (2), length (4), payload.

use crate::filter::Topic;

/// A frame's header as iceoryx2 carries it: the sample's user header.
pub(crate) type FrameWords = [u64; 6];
pub(crate) const FRAME_EVENT: u8 = 1;
pub(crate) const FRAME_HEARTBEAT: u8 = 2;
const FRAME_VERSION: u8 = 2;

pub(crate) const OP_REPLAY: u8 = 1;
pub(crate) const OP_OPEN: u8 = 2;
pub(crate) const OP_ACK: u8 = 3;
pub(crate) const REQUEST_HEADER: usize = 32;
pub(crate) const RESPONSE_HEADER: usize = 32;
pub(crate) const RECORD_HEADER: usize = 24;

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut x = [0u8; 2];
    x.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub typ: u8,
    pub kind: u16,
    pub ih: u16,
    pub ah: u16,
    pub lsn: u64,
    pub timestamp: i64,
    pub prev: u64,
    pub epoch: u64,
    pub len: u32,
}

impl Frame {
    /// The header words for this frame (its payload is the sample's payload).
    pub fn to_words(self) -> FrameWords {
        [
            u64::from(self.typ)
                | u64::from(FRAME_VERSION) << 8
                | u64::from(self.kind) << 16
                | u64::from(self.ih) << 32
                | u64::from(self.ah) << 48,
            self.lsn,
            self.timestamp as u64,
            self.prev,
            self.epoch,
            u64::from(self.len),
        ]
    }

    /// Reads a frame's header words, given the length of the sample's payload; `Err`
    /// names what is wrong.
    pub fn from_words(w: &FrameWords, payload_len: usize) -> Result<Frame, &'static str> {
        let byte = |i: u32| (w[0] >> (8 * i)) as u8;
        let half = |i: u32| (w[0] >> (16 * i)) as u16;
        if byte(1) != FRAME_VERSION {
            return Err("unknown frame version");
        }
        let typ = byte(0);
        if typ != FRAME_EVENT && typ != FRAME_HEARTBEAT {
            return Err("unknown frame type");
        }
        if w[5] >> 32 != 0 {
            return Err("reserved frame bits set");
        }
        let f = Frame {
            typ,
            kind: half(1),
            ih: half(2),
            ah: half(3),
            lsn: w[1],
            timestamp: w[2] as i64,
            prev: w[3],
            epoch: w[4],
            len: w[5] as u32,
        };
        if f.len as usize != payload_len {
            return Err("frame length does not match its payload");
        }
        Ok(f)
    }
}

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    Replay { from: u64, to: u64, topics: u8, max_bytes: u32 },
    Open { name: String, start: u64 },
    Ack { name: String, lsn: u64, flush: bool },
}

impl Request {
    /// Writes the request, with `tag` for its response to echo, into `out`.
    pub fn encode(&self, tag: u64, out: &mut Vec<u8>) {
        out.clear();
        out.resize(REQUEST_HEADER, 0);
        out[TAG_AT..TAG_AT + 8].copy_from_slice(&tag.to_le_bytes());
        let (op, name) = match self {
            Request::Replay { from, to, topics, max_bytes } => {
                out[1] = *topics;
                out[4..8].copy_from_slice(&max_bytes.to_le_bytes());
                out[8..16].copy_from_slice(&from.to_le_bytes());
                out[16..24].copy_from_slice(&to.to_le_bytes());
                (OP_REPLAY, "")
            }
            Request::Open { name, start } => {
                out[8..16].copy_from_slice(&start.to_le_bytes());
                (OP_OPEN, name.as_str())
            }
            Request::Ack { name, lsn, flush } => {
                out[1] = u8::from(*flush);
                out[8..16].copy_from_slice(&lsn.to_le_bytes());
                (OP_ACK, name.as_str())
            }
        };
        out[0] = op;
        out[2..4].copy_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }

    pub fn decode(b: &[u8]) -> Result<Request, &'static str> {
        if b.len() < REQUEST_HEADER {
            return Err("request shorter than its header");
        }
        let name_len = u16_at(b, 2) as usize;
        if b.len() != REQUEST_HEADER + name_len {
            return Err("request length does not match its name");
        }
        let name = std::str::from_utf8(&b[REQUEST_HEADER..])
            .map_err(|_| "cursor name is not UTF-8")?
            .to_owned();
        match b[0] {
            OP_REPLAY => Ok(Request::Replay {
                from: u64_at(b, 8),
                to: u64_at(b, 16),
                topics: b[1],
                max_bytes: u32_at(b, 4),
            }),
            OP_OPEN => Ok(Request::Open { name, start: u64_at(b, 8) }),
            OP_ACK => Ok(Request::Ack { name, lsn: u64_at(b, 8), flush: b[1] == 1 }),
            _ => Err("unknown request op"),
        }
    }
}

/// Where a request and a response hold their tag.
const TAG_AT: usize = 24;

/// The tag of a request or a response (0 when it is too short to hold one).
pub(crate) fn tag_of(b: &[u8]) -> u64 {
    if b.len() < TAG_AT + 8 {
        return 0;
    }
    u64_at(b, TAG_AT)
}

/// Echoes a request's tag in a finished response.
pub(crate) fn set_tag(out: &mut [u8], tag: u64) {
    out[TAG_AT..TAG_AT + 8].copy_from_slice(&tag.to_le_bytes());
}

/// Starts a response in `out`: status ok, `next` and `head` filled in by
/// [`finish_response`].
pub(crate) fn begin_response(out: &mut Vec<u8>) {
    out.clear();
    out.resize(RESPONSE_HEADER, 0);
}

/// Appends one record to a response.
pub(crate) fn push_record(out: &mut Vec<u8>, lsn: u64, ts: i64, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&[0u8; 2]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

pub(crate) fn finish_response(out: &mut [u8], count: u32, next: u64, head: u64) {
    out[0] = 0;
    out[4..8].copy_from_slice(&count.to_le_bytes());
    out[8..16].copy_from_slice(&next.to_le_bytes());
    out[16..24].copy_from_slice(&head.to_le_bytes());
}

pub(crate) fn error_response(out: &mut Vec<u8>, msg: &str) {
    begin_response(out);
    out[0] = 1;
    out.extend_from_slice(msg.as_bytes());
}

/// The replay asked for LSNs the WAL no longer holds; it starts at `first`.
pub(crate) fn gone_response(out: &mut Vec<u8>, first: u64, head: u64) {
    begin_response(out);
    finish_response(out, 0, first, head);
    out[0] = 2;
}

/// A response, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `count` records follow; ask for `next` next; `head` was the last committed LSN.
    Ok { count: u32, next: u64, head: u64 },
    /// The WAL starts at `first` now.
    Gone { first: u64, head: u64 },
    /// The bridge refused the request.
    Refused(String),
}

/// Reads a response's header.
pub(crate) fn read_response(b: &[u8]) -> Result<Reply, &'static str> {
    if b.len() < RESPONSE_HEADER {
        return Err("response shorter than its header");
    }
    match b[0] {
        0 => Ok(Reply::Ok { count: u32_at(b, 4), next: u64_at(b, 8), head: u64_at(b, 16) }),
        1 => Ok(Reply::Refused(String::from_utf8_lossy(&b[RESPONSE_HEADER..]).into_owned())),
        2 => Ok(Reply::Gone { first: u64_at(b, 8), head: u64_at(b, 16) }),
        _ => Err("unknown response status"),
    }
}

/// One record of a replay page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    pub lsn: u64,
    pub timestamp: i64,
    pub kind: u16,
    /// Where its payload is in the page.
    pub at: usize,
    pub len: usize,
}

/// The record at `at` of a page; `Err` when it runs past the end.
pub(crate) fn read_record(b: &[u8], at: usize) -> Result<Record, &'static str> {
    if b.len() < at + RECORD_HEADER {
        return Err("record header past the end of the page");
    }
    let len = u32_at(b, at + 20) as usize;
    let start = at + RECORD_HEADER;
    if b.len() - start < len {
        return Err("record payload past the end of the page");
    }
    Ok(Record {
        lsn: u64_at(b, at),
        timestamp: u64_at(b, at + 8) as i64,
        kind: u16_at(b, at + 16),
        at: start,
        len,
    })
}

/// Topic bits for requests (bit `i` is `Topic::ALL[i]`).
pub(crate) fn topic_bit(t: Topic) -> u8 {
    1 << (t as u8)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn frames_round_trip_and_reject_bad_headers() {
        let f = Frame {
            typ: FRAME_EVENT,
            kind: 7,
            ih: 0xabc,
            ah: 0x123,
            lsn: 42,
            timestamp: -5,
            prev: 40,
            epoch: 99,
            len: 3,
        };
        let w = f.to_words();
        assert_eq!(Frame::from_words(&w, 3), Ok(f));
        // On a little-endian machine the words are the documented bytes.
        if cfg!(target_endian = "little") {
            let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            assert_eq!(&bytes[..8], &[1, 2, 7, 0, 0xbc, 0x0a, 0x23, 0x01]);
            assert_eq!(&bytes[40..48], &[3, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert!(Frame::from_words(&w, 2).is_err());
        assert!(Frame::from_words(&w, 4).is_err());
        for (word, bad) in
            [(0usize, w[0] & !0xff | 9), (0, w[0] & !0xff00 | 1 << 8), (5, w[5] | 1 << 40)]
        {
            let mut b = w;
            b[word] = bad;
            assert!(Frame::from_words(&b, 3).is_err(), "{b:?}");
        }
    }

    #[test]
    fn requests_round_trip() {
        let mut b = Vec::new();
        for r in [
            Request::Replay { from: 1, to: u64::MAX, topics: 0b101, max_bytes: 1 << 20 },
            Request::Open { name: "gw-1".into(), start: 0 },
            Request::Ack { name: "gw-1".into(), lsn: 77, flush: true },
        ] {
            r.encode(0xfeed_0000_0000_0001, &mut b);
            assert_eq!(Request::decode(&b), Ok(r));
            assert_eq!(tag_of(&b), 0xfeed_0000_0000_0001);
            assert!(Request::decode(&b[..b.len() - 1]).is_err());
        }
        b[0] = 99;
        assert!(Request::decode(&b).is_err());
    }

    #[test]
    fn pages_round_trip() {
        let mut b = Vec::new();
        begin_response(&mut b);
        push_record(&mut b, 5, 6, 7, b"abc");
        push_record(&mut b, 9, 10, 11, b"");
        finish_response(&mut b, 2, 10, 12);
        assert_eq!(read_response(&b), Ok(Reply::Ok { count: 2, next: 10, head: 12 }));
        assert_eq!(tag_of(&b), 0);
        set_tag(&mut b, 42);
        assert_eq!(tag_of(&b), 42);
        assert_eq!(read_response(&b), Ok(Reply::Ok { count: 2, next: 10, head: 12 }));
        let r = read_record(&b, RESPONSE_HEADER).unwrap();
        assert_eq!((r.lsn, r.timestamp, r.kind, &b[r.at..r.at + r.len]), (5, 6, 7, &b"abc"[..]));
        let r2 = read_record(&b, r.at + r.len).unwrap();
        assert_eq!((r2.lsn, r2.len), (9, 0));
        assert!(read_record(&b[..b.len() - 1], r.at + r.len).is_err());
        error_response(&mut b, "nope");
        assert_eq!(read_response(&b), Ok(Reply::Refused("nope".into())));
        gone_response(&mut b, 17, 30);
        assert_eq!(read_response(&b), Ok(Reply::Gone { first: 17, head: 30 }));
    }
}
