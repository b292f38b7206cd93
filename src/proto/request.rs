//! Client requests: framing a RESP array of bulk strings (or an inline command) out of the
//! client's read buffer without copying it.
//!
//! A [`Request`] owns a `Bytes` slice of exactly the bytes the client sent for this command,
//! plus the offsets of each argument inside it. Routing reads the arguments; forwarding
//! writes the slice as it is. Requests are framed by a parser of their own (an array of bulk
//! strings is all a client may send, and this runs for every command: the general RESP
//! decoder of `redis-protocol` cost several times more); a differential test holds it to that
//! decoder. The size limits are checked on each header as it is read, so an oversize bulk
//! string is refused before the proxy buffers it.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

/// Limits on what one request may be. Violations close the client's connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bulk_len: usize,
    pub max_array_len: usize,
}

/// Longest inline command line accepted, as in Redis (`PROTO_INLINE_MAX_SIZE`).
const MAX_INLINE: usize = 64 * 1024;

/// Longest `*N` / `$N` header line: a length never needs more digits.
const MAX_LEN_LINE: usize = 32;

/// Why a client's bytes could not be framed. The message goes to the client as
/// `-ERR Protocol error: ...` and its connection is closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("invalid bulk length")]
    BulkTooLarge { len: u64, max: usize },
    #[error("invalid multibulk length")]
    ArrayTooLarge { len: u64, max: usize },
    #[error("too big inline request")]
    InlineTooLarge,
    #[error("expected '$', got '{0}'")]
    NotBulk(char),
    #[error("{0}")]
    Malformed(String),
}

impl RequestError {
    /// The text sent to the client before its connection is closed. Follows Redis's own
    /// wording, with the limit spelled out so the operator can tell what to raise.
    pub fn client_message(&self) -> String {
        match self {
            RequestError::BulkTooLarge { len, max } => {
                format!("ERR Protocol error: invalid bulk length {len} (tandem limits.max_bulk_len is {max})")
            }
            RequestError::ArrayTooLarge { len, max } => {
                format!("ERR Protocol error: invalid multibulk length {len} (tandem limits.max_array_len is {max})")
            }
            other => format!("ERR Protocol error: {other}"),
        }
    }
}

/// One client command: the raw bytes and where each argument sits in them.
#[derive(Clone, Debug)]
pub struct Request {
    raw: Bytes,
    args: SmallVec<[(u32, u32); 6]>,
}

impl Request {
    /// Builds a request from arguments, encoding it as RESP (used for commands the proxy
    /// sends itself and for inline commands).
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        let raw = crate::proto::reply::command(args);
        let unlimited = Limits { max_bulk_len: usize::MAX, max_array_len: usize::MAX };
        match frame(&raw, &unlimited) {
            Ok(Some(Framed::Request { args, .. })) => Request { raw, args },
            _ => Request { raw, args: SmallVec::new() },
        }
    }

    /// The exact bytes to forward.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn argc(&self) -> usize {
        self.args.len()
    }

    /// Argument `i` (0 is the command name). Empty if out of range.
    pub fn arg(&self, i: usize) -> &[u8] {
        match self.args.get(i) {
            Some(&(s, e)) => &self.raw[s as usize..e as usize],
            None => &[],
        }
    }

    /// Argument `i` as a zero-copy `Bytes`.
    pub fn arg_bytes(&self, i: usize) -> Bytes {
        match self.args.get(i) {
            Some(&(s, e)) => self.raw.slice(s as usize..e as usize),
            None => Bytes::new(),
        }
    }

    /// All arguments, the command name first.
    pub fn args(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.args.iter().map(|&(s, e)| &self.raw[s as usize..e as usize])
    }

    /// Arguments collected for APIs that take a slice (the command table).
    pub fn argv(&self) -> SmallVec<[&[u8]; 8]> {
        self.args().collect()
    }

    /// The command name, upper-cased, for logs and error messages.
    pub fn name_upper(&self) -> String {
        String::from_utf8_lossy(self.arg(0)).to_ascii_uppercase()
    }

    /// True if argument `i` equals `word`, ignoring ASCII case.
    pub fn arg_is(&self, i: usize, word: &str) -> bool {
        self.arg(i).eq_ignore_ascii_case(word.as_bytes())
    }
}

/// Takes the next complete request off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. Empty requests (`*0`, blank inline lines)
/// are consumed and skipped, as Redis does.
pub fn parse(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Request>, RequestError> {
    loop {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first != b'*' {
            match parse_inline(buf)? {
                Some(Some(req)) => return Ok(Some(req)),
                Some(None) => continue,
                None => return Ok(None),
            }
        }
        match frame(buf, limits)? {
            Some(Framed::Request { len, args }) => {
                let raw = buf.split_to(len).freeze();
                return Ok(Some(Request { raw, args }));
            }
            // `*0` and `*-1`, which Redis skips.
            Some(Framed::Empty { len }) => {
                let _ = buf.split_to(len);
            }
            None => return Ok(None),
        }
    }
}

/// What [`frame`] found at the start of a buffer.
enum Framed {
    /// A request of `len` bytes with each argument's start and end offset.
    Request { len: usize, args: SmallVec<[(u32, u32); 6]> },
    /// An empty or null array of `len` bytes.
    Empty { len: usize },
}

/// Frames the `*N` array of bulk strings at the start of `buf`; `None` until it is complete.
/// Each header is checked against the limits as soon as it is read.
fn frame(buf: &[u8], limits: &Limits) -> Result<Option<Framed>, RequestError> {
    let Some((count, mut pos)) = len_line(buf, 0)? else {
        return Ok(None);
    };
    if count <= 0 {
        return Ok(Some(Framed::Empty { len: pos }));
    }
    check_array(count as u64, limits)?;
    let mut args = SmallVec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        let Some(&kind) = buf.get(pos) else {
            return Ok(None);
        };
        if kind != b'$' {
            return Err(RequestError::NotBulk(kind as char));
        }
        let Some((len, start)) = len_line(buf, pos)? else {
            return Ok(None);
        };
        if len < 0 {
            return Err(RequestError::Malformed("invalid bulk length".into()));
        }
        check_bulk(len as u64, limits)?;
        let Some(end) = start.checked_add(len as usize).filter(|e| e.checked_add(2).is_some()) else {
            return Err(RequestError::Malformed("invalid bulk length".into()));
        };
        let Some(crlf) = buf.get(end..end + 2) else {
            return Ok(None);
        };
        if crlf != b"\r\n" {
            return Err(RequestError::Malformed("bulk string not terminated by CRLF".into()));
        }
        let (Ok(s), Ok(e)) = (u32::try_from(start), u32::try_from(end)) else {
            return Err(RequestError::Malformed("request too large".into()));
        };
        args.push((s, e));
        pos = end + 2;
    }
    Ok(Some(Framed::Request { len: pos, args }))
}

fn check_array(len: u64, limits: &Limits) -> Result<(), RequestError> {
    if len > limits.max_array_len as u64 {
        return Err(RequestError::ArrayTooLarge { len, max: limits.max_array_len });
    }
    Ok(())
}

fn check_bulk(len: u64, limits: &Limits) -> Result<(), RequestError> {
    if len > limits.max_bulk_len as u64 {
        return Err(RequestError::BulkTooLarge { len, max: limits.max_bulk_len });
    }
    Ok(())
}

/// Reads the `<prefix><integer>\r\n` header at `pos` (the prefix is not checked here);
/// returns the integer and where the line ends, or `None` if the line is not complete yet.
fn len_line(buf: &[u8], pos: usize) -> Result<Option<(i64, usize)>, RequestError> {
    let digits = pos + 1;
    let window = buf.get(digits..).unwrap_or_default();
    let window = &window[..window.len().min(MAX_LEN_LINE + 1)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.len() > MAX_LEN_LINE {
            return Err(RequestError::Malformed("invalid length line".into()));
        }
        return Ok(None);
    };
    let Some(&lf) = buf.get(digits + cr + 1) else {
        return Ok(None);
    };
    if lf != b'\n' {
        return Err(RequestError::Malformed("invalid length line".into()));
    }
    let n = parse_int(&window[..cr]).ok_or_else(|| RequestError::Malformed("invalid length".into()))?;
    Ok(Some((n, digits + cr + 2)))
}

/// A decimal integer, optionally negative; `None` if empty, not digits, or out of range.
fn parse_int(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((d - b'0') as i64)?;
    }
    Some(if negative { -n } else { n })
}

/// Inline commands (`PING\r\n`, as typed into telnet): split on whitespace, honouring
/// double and single quotes like redis-cli. Returns `Some(None)` for a blank line.
fn parse_inline(buf: &mut BytesMut) -> Result<Option<Option<Request>>, RequestError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE {
            return Err(RequestError::InlineTooLarge);
        }
        return Ok(None);
    };
    let line = buf.split_to(nl + 1);
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = split_inline(line)?;
    if args.is_empty() {
        return Ok(Some(None));
    }
    Ok(Some(Some(Request::from_args(&args))))
}

fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, RequestError> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let mut arg = Vec::new();
        if line[i] == b'"' || line[i] == b'\'' {
            let quote = line[i];
            i += 1;
            loop {
                match line.get(i) {
                    None => return Err(RequestError::Malformed("unbalanced quotes in request".into())),
                    Some(&c) if c == quote => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if quote == b'"' && i + 1 < line.len() => {
                        arg.push(match line[i + 1] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            other => other,
                        });
                        i += 2;
                    }
                    Some(&c) => {
                        arg.push(c);
                        i += 1;
                    }
                }
            }
            if i < line.len() && !line[i].is_ascii_whitespace() {
                return Err(RequestError::Malformed("unbalanced quotes in request".into()));
            }
        } else {
            while i < line.len() && !line[i].is_ascii_whitespace() {
                arg.push(line[i]);
                i += 1;
            }
        }
        args.push(arg);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits { max_bulk_len: 1024, max_array_len: 16 };

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, RequestError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(req) = parse(&mut buf, &LIMITS)? {
            out.push(req.args().map(|a| a.to_vec()).collect());
        }
        Ok(out)
    }

    #[test]
    fn pipelined_requests_keep_their_raw_bytes() {
        let input = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        let mut buf = BytesMut::from(&input[..]);
        let a = parse(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!(&a.raw()[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(a.arg(1), b"k");
        let b = parse(&mut buf, &LIMITS).unwrap().unwrap();
        assert_eq!(b.arg(0), b"PING");
        assert!(parse(&mut buf, &LIMITS).unwrap().is_none());
    }

    #[test]
    fn partial_request_waits() {
        let partial = b"*2\r\n$3\r\nGET\r\n$1\r";
        let mut buf = BytesMut::from(&partial[..]);
        assert!(parse(&mut buf, &LIMITS).unwrap().is_none());
        assert_eq!(buf.len(), partial.len(), "a partial frame must stay in the buffer");
    }

    #[test]
    fn oversize_bulk_refused_from_its_header() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$999999\r\nabc"[..]);
        assert_eq!(parse(&mut buf, &LIMITS).unwrap_err(), RequestError::BulkTooLarge { len: 999999, max: 1024 });
    }

    #[test]
    fn oversize_array_refused_from_its_header() {
        let mut buf = BytesMut::from(&b"*100\r\n$3\r\nSET\r\n"[..]);
        assert_eq!(parse(&mut buf, &LIMITS).unwrap_err(), RequestError::ArrayTooLarge { len: 100, max: 16 });
    }

    #[test]
    fn non_bulk_elements_are_protocol_errors() {
        assert_eq!(parse_all(b"*1\r\n:5\r\n").unwrap_err(), RequestError::NotBulk(':'));
    }

    #[test]
    fn inline_commands_with_quotes() {
        assert_eq!(
            parse_all(b"SET k \"a b\\n\"\r\nPING\n\r\n").unwrap(),
            vec![vec![b"SET".to_vec(), b"k".to_vec(), b"a b\n".to_vec()], vec![b"PING".to_vec()]]
        );
        assert!(parse_all(b"SET k \"oops\r\n").is_err());
    }

    #[test]
    fn malformed_headers_are_refused() {
        assert!(matches!(parse_all(b"*1\r\n$-1\r\n"), Err(RequestError::Malformed(_))));
        assert!(matches!(parse_all(b"*1\r\n$3\r\nGETxx"), Err(RequestError::Malformed(_))));
        assert!(matches!(parse_all(b"*x\r\n"), Err(RequestError::Malformed(_))));
        assert!(matches!(parse_all(b"*1\r\n$1x\r\na\r\n"), Err(RequestError::Malformed(_))));
        assert!(matches!(parse_all(b"*1\rx"), Err(RequestError::Malformed(_))));
        assert!(matches!(parse_all(&[b'*'; 40]), Err(RequestError::Malformed(_))));
        assert_eq!(parse_all(b"*1\r\n+OK\r\n").unwrap_err(), RequestError::NotBulk('+'));
        assert_eq!(parse_all(b"*-1\r\n*1\r\n$4\r\nPING\r\n").unwrap().len(), 1);
    }

    #[test]
    fn empty_arrays_are_skipped() {
        assert_eq!(parse_all(b"*0\r\n*1\r\n$4\r\nPING\r\n").unwrap().len(), 1);
    }

    proptest! {
        /// Any command encoded as RESP, split at any point, parses back to the same arguments.
        #[test]
        fn encode_then_parse_round_trips(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8), cut in 0usize..400) {
            let raw = crate::proto::reply::command(&args);
            let cut = cut.min(raw.len());
            let mut buf = BytesMut::from(&raw[..cut]);
            let first = parse(&mut buf, &LIMITS).unwrap();
            if cut < raw.len() {
                prop_assert!(first.is_none());
                buf.extend_from_slice(&raw[cut..]);
            }
            let req = match first { Some(r) => r, None => parse(&mut buf, &LIMITS).unwrap().unwrap() };
            prop_assert_eq!(req.args().map(|a| a.to_vec()).collect::<Vec<_>>(), args);
            prop_assert_eq!(&req.raw()[..], &raw[..]);
        }

        /// The parser frames exactly what `redis-protocol`'s general decoder frames: valid
        /// requests, requests with a byte changed, and truncated ones.
        #[test]
        fn frames_like_the_reference_decoder(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..6),
            flip in proptest::option::of((0usize..200, any::<u8>())),
            cut in proptest::option::of(0usize..200),
        ) {
            use redis_protocol::resp2::decode::decode_range;
            use redis_protocol::resp2::types::RangeFrame;
            let mut raw = crate::proto::reply::command(&args).to_vec();
            if let Some((at, byte)) = flip {
                if at < raw.len() {
                    raw[at] = byte;
                }
            }
            if let Some(cut) = cut {
                raw.truncate(cut);
            }
            let limits = Limits { max_bulk_len: usize::MAX, max_array_len: usize::MAX };
            let ours = if raw.first() == Some(&b'*') { frame(&raw, &limits) } else { Ok(None) };
            let reference = decode_range(&raw);
            if let Ok(Some((RangeFrame::Array(items), len))) = &reference {
                if raw.first() == Some(&b'*') && items.iter().all(|i| matches!(i, RangeFrame::BulkString(_))) {
                    let want: Vec<(u32, u32)> = items.iter().map(|i| match i {
                        RangeFrame::BulkString((s, e)) => (*s as u32, *e as u32),
                        _ => unreachable!(),
                    }).collect();
                    // The reference skips the two bytes after a bulk string unread, as Redis
                    // does; this parser refuses anything but CRLF there.
                    let terminated = want.iter().all(|&(_, e)| raw.get(e as usize..e as usize + 2) == Some(b"\r\n"));
                    match &ours {
                        Err(RequestError::Malformed(_)) if !terminated => {}
                        Ok(Some(Framed::Request { len: l, args })) => {
                            prop_assert_eq!(*l, *len);
                            prop_assert_eq!(args.to_vec(), want);
                        }
                        Ok(Some(Framed::Empty { len: l })) => prop_assert!(want.is_empty() && l == len),
                        other => prop_assert!(false, "reference framed {:?}, ours {:?}", want, other.as_ref().map(|_| ())),
                    }
                }
            }
            if let Ok(Some(Framed::Request { len, args })) = ours {
                match reference {
                    Ok(Some((RangeFrame::Array(items), l))) => {
                        prop_assert_eq!(l, len);
                        prop_assert_eq!(items.len(), args.len());
                    }
                    other => prop_assert!(false, "ours framed {} args, reference {:?}", args.len(), other.map(|o| o.map(|(_, l)| l))),
                }
            }
        }

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..50 {
                match parse(&mut buf, &LIMITS) { Ok(Some(_)) => {}, _ => break }
            }
        }
    }
}
