//! Replies the proxy writes itself, and finding where one backend reply ends.
//!
//! Backend replies are forwarded as the exact bytes the backend sent. The proxy only needs to
//! know where each reply frame ends so it can hand it to whoever waits for it; that is
//! [`frame_len`], a scan that counts frames without building them (no allocation, whatever
//! the reply's size or nesting), for RESP2 and RESP3 alike. Replies the proxy answers on its own (errors, `+OK` for SELECT, HELLO) are
//! built here so their wording lives in one place.

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol a client (or a backend connection) speaks: RESP2 or RESP3 after `HELLO 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Resp2,
    Resp3,
}

impl Protocol {
    pub fn version(self) -> u8 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// Why a reply stream could not be framed.
#[derive(Debug, thiserror::Error)]
#[error("malformed reply from backend: {0}")]
pub struct FrameError(String);

/// Length in bytes of the first complete reply frame in `buf`, or `None` if more bytes are
/// needed. Understands every RESP2 and RESP3 type, including RESP2 `$-1`/`*-1` nulls and
/// RESP3 attributes; streamed RESP3 aggregates (`$?`, `*?`) are refused, as no server sends
/// them as replies.
///
/// It keeps one counter of frames still to read: an aggregate of `n` elements adds `n`
/// (maps and attributes `2n`), so nesting needs no stack.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let mut pos = 0usize;
    let mut remaining: u64 = 1;
    while remaining > 0 {
        let Some(&kind) = buf.get(pos) else {
            return Ok(None);
        };
        let Some(line_end) = find_crlf(buf, pos + 1)? else {
            return Ok(None);
        };
        let line = &buf[pos + 1..line_end];
        pos = line_end + 2;
        remaining -= 1;
        match kind {
            b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => {}
            b'$' | b'!' | b'=' => {
                let len = parse_len(line)?;
                if len >= 0 {
                    pos = match pos.checked_add(len as usize + 2) {
                        Some(p) => p,
                        None => return Err(FrameError("bulk length overflow".into())),
                    };
                    if pos > buf.len() {
                        return Ok(None);
                    }
                    if &buf[pos - 2..pos] != b"\r\n" {
                        return Err(FrameError("bulk string not terminated by CRLF".into()));
                    }
                }
            }
            b'*' | b'~' | b'>' => {
                let n = parse_len(line)?;
                if n > 0 {
                    remaining += n as u64;
                }
            }
            b'%' => {
                let n = parse_len(line)?;
                if n > 0 {
                    remaining += 2 * n as u64;
                }
            }
            // An attribute map precedes the frame it annotates.
            b'|' => {
                let n = parse_len(line)?;
                remaining += 2 * n.max(0) as u64 + 1;
            }
            other => return Err(FrameError(format!("unknown reply type byte 0x{other:02x}"))),
        }
    }
    Ok(Some(pos))
}

/// Index of the `\r` ending the header line that starts at `from`.
fn find_crlf(buf: &[u8], from: usize) -> Result<Option<usize>, FrameError> {
    let Some(rest) = buf.get(from..) else {
        return Ok(None);
    };
    match rest.iter().position(|&b| b == b'\n') {
        None => Ok(None),
        Some(nl) if nl > 0 && rest[nl - 1] == b'\r' => Ok(Some(from + nl - 1)),
        Some(_) => Err(FrameError("header line not terminated by CRLF".into())),
    }
}

fn parse_len(line: &[u8]) -> Result<i64, FrameError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|&n| n >= -1)
        .ok_or_else(|| FrameError(format!("invalid length {:?}", String::from_utf8_lossy(line))))
}

/// True if a reply frame is an error (`-ERR ...` or RESP3 blob error `!`).
pub fn is_error(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(b'-') | Some(b'!'))
}

/// True if a reply frame is a null (`$-1`, `*-1`, RESP3 `_`): a blocking command that
/// timed out, a missing key.
pub fn is_null(frame: &[u8]) -> bool {
    frame.starts_with(b"$-1\r\n") || frame.starts_with(b"*-1\r\n") || frame.starts_with(b"_\r\n")
}

/// `+OK\r\n`
pub fn ok() -> Bytes {
    Bytes::from_static(b"+OK\r\n")
}

/// A simple string reply, `+text\r\n`.
pub fn simple(text: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(text.len() + 3);
    b.put_u8(b'+');
    b.put_slice(sanitize(text).as_bytes());
    b.put_slice(b"\r\n");
    b.freeze()
}

/// An error reply. `text` starts with the error code (`ERR`, `NOAUTH`, `WRONGPASS` ...);
/// line breaks are replaced so a message can never break the framing.
pub fn error(text: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(text.len() + 3);
    b.put_u8(b'-');
    b.put_slice(sanitize(text).as_bytes());
    b.put_slice(b"\r\n");
    b.freeze()
}

/// An error produced by the proxy itself: `-ERR tandem: <text>`.
pub fn proxy_error(text: &str) -> Bytes {
    error(&format!("ERR tandem: {text}"))
}

/// A bulk string reply.
pub fn bulk(data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 16);
    put_bulk(&mut b, data);
    b.freeze()
}

/// The null reply in the client's protocol (`$-1` in RESP2, `_` in RESP3).
pub fn null(proto: Protocol) -> Bytes {
    match proto {
        Protocol::Resp2 => Bytes::from_static(b"$-1\r\n"),
        Protocol::Resp3 => Bytes::from_static(b"_\r\n"),
    }
}

/// An integer reply.
pub fn integer(n: i64) -> Bytes {
    Bytes::from(format!(":{n}\r\n"))
}

/// Appends a bulk string to `b`.
pub fn put_bulk(b: &mut BytesMut, data: &[u8]) {
    b.put_u8(b'$');
    b.put_slice(data.len().to_string().as_bytes());
    b.put_slice(b"\r\n");
    b.put_slice(data);
    b.put_slice(b"\r\n");
}

/// Encodes a command as a RESP array of bulk strings, the form every server accepts.
pub fn command<A: AsRef<[u8]>>(args: &[A]) -> Bytes {
    let mut b = BytesMut::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    b.put_u8(b'*');
    b.put_slice(args.len().to_string().as_bytes());
    b.put_slice(b"\r\n");
    for a in args {
        put_bulk(&mut b, a.as_ref());
    }
    b.freeze()
}

/// One value of the reply the proxy sends to `HELLO`.
pub enum HelloValue<'a> {
    Str(&'a str),
    Int(i64),
    EmptyArray,
}

/// The `HELLO` reply: a map in RESP3, a flat array of alternating keys and values in RESP2.
pub fn hello(proto: Protocol, fields: &[(&str, HelloValue<'_>)]) -> Bytes {
    let mut b = BytesMut::with_capacity(256);
    match proto {
        Protocol::Resp2 => b.put_slice(format!("*{}\r\n", fields.len() * 2).as_bytes()),
        Protocol::Resp3 => b.put_slice(format!("%{}\r\n", fields.len()).as_bytes()),
    }
    for (key, value) in fields {
        put_bulk(&mut b, key.as_bytes());
        match value {
            HelloValue::Str(s) => put_bulk(&mut b, s.as_bytes()),
            HelloValue::Int(n) => b.put_slice(format!(":{n}\r\n").as_bytes()),
            HelloValue::EmptyArray => b.put_slice(b"*0\r\n"),
        }
    }
    b.freeze()
}

fn sanitize(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(['\r', '\n']) {
        std::borrow::Cow::Owned(text.replace(['\r', '\n'], " "))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_finds_each_reply_kind() {
        assert_eq!(frame_len(b"+OK\r\n+PONG\r\n").unwrap(), Some(5));
        assert_eq!(frame_len(b"$-1\r\n").unwrap(), Some(5));
        assert_eq!(frame_len(b"*-1\r\n").unwrap(), Some(5));
        assert_eq!(frame_len(b"$3\r\nfoo\r\n:1\r\n").unwrap(), Some(9));
        assert_eq!(frame_len(b"*2\r\n$1\r\na\r\n:5\r\n").unwrap(), Some(15));
        assert_eq!(frame_len(b"%1\r\n+a\r\n_\r\n").unwrap(), Some(11));
        let push = b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n";
        assert_eq!(frame_len(push).unwrap(), Some(push.len()));
        assert_eq!(frame_len(b",1.5\r\n").unwrap(), Some(6));
    }

    #[test]
    fn frame_len_waits_for_partial_replies() {
        assert_eq!(frame_len(b"").unwrap(), None);
        assert_eq!(frame_len(b"$10\r\nabc").unwrap(), None);
        assert_eq!(frame_len(b"*2\r\n:1\r\n").unwrap(), None);
    }

    #[test]
    fn frame_len_rejects_garbage() {
        assert!(frame_len(b"?what\r\n").is_err());
        assert!(frame_len(b"$?\r\n").is_err());
        assert!(frame_len(b"$3\r\nabcXY").is_err());
    }

    #[test]
    fn frame_len_handles_attributes_and_nesting() {
        let attr = b"|1\r\n+key\r\n+val\r\n*2\r\n:1\r\n*1\r\n$0\r\n\r\n";
        assert_eq!(frame_len(attr).unwrap(), Some(attr.len()));
        assert_eq!(frame_len(&attr[..attr.len() - 1]).unwrap(), None);
        assert_eq!(frame_len(b"*0\r\n").unwrap(), Some(4));
        assert_eq!(frame_len(b"%0\r\n").unwrap(), Some(4));
    }

    mod property {
        use super::super::frame_len;
        use proptest::prelude::*;
        use redis_protocol::resp2::types::{OwnedFrame as F2, Resp2Frame};
        use redis_protocol::resp3::types::OwnedFrame as F3;
        use redis_protocol::resp3::types::Resp3Frame;

        fn resp2() -> impl Strategy<Value = F2> {
            let leaf = prop_oneof![
                "[a-zA-Z0-9 ]{0,12}".prop_map(|t| F2::SimpleString(t.into_bytes())),
                "[a-zA-Z ]{0,12}".prop_map(F2::Error),
                any::<i64>().prop_map(F2::Integer),
                proptest::collection::vec(any::<u8>(), 0..40).prop_map(F2::BulkString),
                Just(F2::Null),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| proptest::collection::vec(inner, 0..8).prop_map(F2::Array))
        }

        fn resp3() -> impl Strategy<Value = F3> {
            let leaf = prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..40)
                    .prop_map(|d| F3::BlobString { data: d, attributes: None }),
                any::<i64>().prop_map(|d| F3::Number { data: d, attributes: None }),
                any::<bool>().prop_map(|d| F3::Boolean { data: d, attributes: None }),
                (-1e6f64..1e6).prop_map(|d| F3::Double { data: d, attributes: None }),
                Just(F3::Null),
                "[a-z]{0,12}".prop_map(|d| F3::SimpleString { data: d.into_bytes(), attributes: None }),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..8)
                        .prop_map(|d| F3::Array { data: d, attributes: None }),
                    proptest::collection::vec(inner.clone(), 0..8).prop_map(|d| F3::Push { data: d, attributes: None }),
                    proptest::collection::vec((any::<i64>(), inner), 0..6).prop_map(|kv| F3::Map {
                        data: kv.into_iter().map(|(k, v)| (F3::Number { data: k, attributes: None }, v)).collect(),
                        attributes: None
                    }),
                ]
            })
        }

        proptest! {
            /// Every encoded RESP2 reply is measured exactly, and any prefix of it asks for more.
            #[test]
            fn resp2_frames_measure_exactly(frame in resp2(), cut in 0usize..1000) {
                let mut buf = vec![0u8; frame.encode_len(false)];
                let len = redis_protocol::resp2::encode::encode(&mut buf, &frame, false).unwrap();
                buf.truncate(len);
                prop_assert_eq!(frame_len(&buf).unwrap(), Some(len));
                let cut = cut % len.max(1);
                prop_assert_eq!(frame_len(&buf[..cut]).unwrap(), None);
                let mut two = buf.clone();
                two.extend_from_slice(b"+next\r\n");
                prop_assert_eq!(frame_len(&two).unwrap(), Some(len));
            }

            #[test]
            fn resp3_frames_measure_exactly(frame in resp3(), cut in 0usize..1000) {
                let mut buf = vec![0u8; frame.encode_len(false)];
                let len = redis_protocol::resp3::encode::complete::encode(&mut buf, &frame, false).unwrap();
                buf.truncate(len);
                prop_assert_eq!(frame_len(&buf).unwrap(), Some(len));
                let cut = cut % len.max(1);
                prop_assert_eq!(frame_len(&buf[..cut]).unwrap(), None);
            }

            #[test]
            fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = frame_len(&bytes);
            }
        }
    }

    #[test]
    fn errors_never_break_framing() {
        assert_eq!(&error("ERR a\r\nb")[..], b"-ERR a  b\r\n");
        assert_eq!(&proxy_error("x")[..], b"-ERR tandem: x\r\n");
        assert!(is_error(&error("ERR x")));
        assert!(!is_error(b"+OK\r\n"));
    }

    #[test]
    fn nulls_of_both_protocols_are_recognised() {
        for null in [&b"$-1\r\n"[..], b"*-1\r\n", b"_\r\n"] {
            assert!(is_null(null), "{null:?}");
        }
        for not_null in [&b"*0\r\n"[..], b"$0\r\n\r\n", b":-1\r\n", b"*2\r\n$1\r\nq\r\n$1\r\nj\r\n"] {
            assert!(!is_null(not_null), "{not_null:?}");
        }
    }

    #[test]
    fn hello_shapes_follow_protocol() {
        let f = [("proto", HelloValue::Int(3)), ("modules", HelloValue::EmptyArray)];
        assert_eq!(&hello(Protocol::Resp3, &f)[..], b"%2\r\n$5\r\nproto\r\n:3\r\n$7\r\nmodules\r\n*0\r\n");
        assert_eq!(&hello(Protocol::Resp2, &f)[..4], b"*4\r\n");
        assert_eq!(frame_len(&hello(Protocol::Resp2, &f)).unwrap(), Some(hello(Protocol::Resp2, &f).len()));
    }

    #[test]
    fn command_encoding_round_trips() {
        assert_eq!(&command(&["SET", "k", "v"])[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    }
}
