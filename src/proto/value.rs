//! A small, zero-copy parser of one complete RESP reply frame into a [`Value`].
//!
//! The proxy forwards backend replies as raw bytes and never needs to build them; framing is
//! done by `reply::frame_len` without allocating. A few decisions, however, depend on what a
//! reply *says*: which member an `SPOP` removed, which element a `BLPOP` took, which id an
//! `XADD *` assigned. Those need the reply's structure, and this module gives it: [`parse`]
//! turns one frame, RESP2 or RESP3, into a [`Value`] whose strings are slices of the frame
//! (no copy of the payload).
//!
//! The parser is deliberately forgiving of *which* protocol is used and strict about
//! *framing*: the RESP2 nulls (`$-1`, `*-1`) and the RESP3 null (`_`) all become
//! [`Value::Nil`], sets (`~`) and pushes (`>`) become [`Value::Array`], but anything malformed,
//! incomplete, or followed by trailing bytes gives `None`. It never panics, whatever the input
//! (see the property tests), bounds nesting depth so hostile input cannot overflow the stack,
//! and never pre-allocates more than the remaining input could hold.

use bytes::Bytes;

/// One parsed RESP2/RESP3 reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// RESP2 `$-1` / `*-1`, RESP3 `_`.
    Nil,
    /// `:123`
    Int(i64),
    /// RESP3 double `,1.5` (also `inf`, `-inf`, `nan`).
    Double(f64),
    /// RESP3 boolean `#t` / `#f`.
    Bool(bool),
    /// `+OK`
    Simple(Bytes),
    /// `-ERR ...` and RESP3 blob error `!`.
    Error(Bytes),
    /// `$3\r\nfoo` and RESP3 verbatim string `=` (the text after its `txt:` prefix).
    Bulk(Bytes),
    /// `*`, and the RESP3 set `~` and push `>`.
    Array(Vec<Value>),
    /// RESP3 map `%`, in wire order.
    Map(Vec<(Value, Value)>),
    /// Anything kept as raw text: the RESP3 big number `(`.
    Other(Bytes),
}

impl Value {
    /// The payload of a bulk or simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) | Value::Simple(b) => Some(b),
            _ => None,
        }
    }

    /// The value of an integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }
}

/// Deepest nesting accepted. Real replies nest a few levels (`ZMPOP` three, `XREADGROUP`
/// five); a Lua script can return deeper tables, but nothing that needs parsing here does.
const MAX_DEPTH: usize = 128;

/// The smallest possible frame (`_\r\n`, `+\r\n`): bounds pre-allocation by what is left.
const MIN_FRAME: usize = 3;

/// Parses exactly one complete reply frame. `None` if `frame` is malformed, incomplete, nested
/// deeper than 128 levels, or has bytes after the frame. Strings in the result are slices of
/// `frame`.
pub fn parse(frame: &Bytes) -> Option<Value> {
    let mut parser = Parser { buf: frame, pos: 0 };
    let value = parser.value(0)?;
    (parser.pos == frame.len()).then_some(value)
}

struct Parser<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Parser<'_> {
    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        let kind = *self.buf.get(self.pos)?;
        self.pos += 1;
        let (start, end) = self.line()?;
        let line = &self.buf[start..end];
        match kind {
            b'+' => Some(Value::Simple(self.buf.slice(start..end))),
            b'-' => Some(Value::Error(self.buf.slice(start..end))),
            b':' => parse_i64(line).map(Value::Int),
            b',' => parse_f64(line).map(Value::Double),
            b'#' => match line {
                b"t" => Some(Value::Bool(true)),
                b"f" => Some(Value::Bool(false)),
                _ => None,
            },
            b'_' => line.is_empty().then_some(Value::Nil),
            b'(' => (!line.is_empty()).then(|| Value::Other(self.buf.slice(start..end))),
            b'$' | b'!' | b'=' => {
                let Some(len) = parse_len(line)? else {
                    return Some(Value::Nil);
                };
                let data = self.blob(len)?;
                match kind {
                    b'$' => Some(Value::Bulk(data)),
                    b'!' => Some(Value::Error(data)),
                    // `=15\r\ntxt:Some string`: a three-letter format, a colon, the text.
                    _ => (data.get(3) == Some(&b':')).then(|| Value::Bulk(data.slice(4..))),
                }
            }
            b'*' | b'~' | b'>' => {
                let Some(n) = parse_len(line)? else {
                    return Some(Value::Nil);
                };
                let mut items = Vec::with_capacity(n.min(self.left() / MIN_FRAME));
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                Some(Value::Array(items))
            }
            b'%' => {
                let Some(n) = parse_len(line)? else {
                    return Some(Value::Nil);
                };
                let mut pairs = Vec::with_capacity(n.min(self.left() / (2 * MIN_FRAME)));
                for _ in 0..n {
                    let k = self.value(depth + 1)?;
                    let v = self.value(depth + 1)?;
                    pairs.push((k, v));
                }
                Some(Value::Map(pairs))
            }
            // An attribute map annotates the frame that follows it: skip it, return that frame.
            b'|' => {
                let n = parse_len(line)?.unwrap_or(0);
                for _ in 0..n {
                    self.value(depth + 1)?;
                    self.value(depth + 1)?;
                }
                self.value(depth + 1)
            }
            _ => None,
        }
    }

    /// Bytes not yet consumed.
    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The header line starting at `pos` (without its CRLF); moves `pos` past the CRLF.
    fn line(&mut self) -> Option<(usize, usize)> {
        let rest = self.buf.get(self.pos..)?;
        let nl = rest.iter().position(|&b| b == b'\n')?;
        if nl == 0 || rest[nl - 1] != b'\r' {
            return None;
        }
        let start = self.pos;
        let end = start + nl - 1;
        self.pos = start + nl + 1;
        Some((start, end))
    }

    /// A `len`-byte payload followed by CRLF; moves `pos` past it.
    fn blob(&mut self, len: usize) -> Option<Bytes> {
        let end = self.pos.checked_add(len)?;
        let after = end.checked_add(2)?;
        if self.buf.get(end..after)? != b"\r\n" {
            return None;
        }
        let data = self.buf.slice(self.pos..end);
        self.pos = after;
        Some(data)
    }
}

/// A length header: `Some(None)` for the null length `-1`, `Some(Some(n))` for `n >= 0`.
/// Streamed lengths (`?`) and anything else are malformed.
fn parse_len(line: &[u8]) -> Option<Option<usize>> {
    match parse_i64(line)? {
        -1 => Some(None),
        n => usize::try_from(n).ok().map(Some),
    }
}

fn parse_i64(line: &[u8]) -> Option<i64> {
    std::str::from_utf8(line).ok()?.parse().ok()
}

fn parse_f64(line: &[u8]) -> Option<f64> {
    std::str::from_utf8(line).ok()?.parse().ok()
}

/// Test helpers shared with other modules' tests: an encoder and a value generator.
#[cfg(test)]
pub(crate) mod test_support {
    use super::Value;
    use proptest::prelude::*;

    /// Encodes `v` as RESP. `resp3` picks the RESP3 null `_` instead of `$-1`; types that
    /// only RESP3 has are always written in their RESP3 form.
    pub(crate) fn encode(v: &Value, resp3: bool) -> Vec<u8> {
        let mut out = Vec::new();
        put(&mut out, v, resp3);
        out
    }

    fn put(out: &mut Vec<u8>, v: &Value, resp3: bool) {
        let header = |out: &mut Vec<u8>, kind: u8, text: &[u8]| {
            out.push(kind);
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        };
        match v {
            Value::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
            Value::Nil => out.extend_from_slice(b"$-1\r\n"),
            Value::Int(n) => header(out, b':', n.to_string().as_bytes()),
            Value::Double(d) => header(out, b',', d.to_string().as_bytes()),
            Value::Bool(b) => header(out, b'#', if *b { b"t" } else { b"f" }),
            Value::Simple(s) => header(out, b'+', s),
            Value::Error(s) => header(out, b'-', s),
            Value::Other(s) => header(out, b'(', s),
            Value::Bulk(b) => {
                header(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Value::Array(items) => {
                header(out, b'*', items.len().to_string().as_bytes());
                for item in items {
                    put(out, item, resp3);
                }
            }
            Value::Map(pairs) => {
                header(out, b'%', pairs.len().to_string().as_bytes());
                for (k, v) in pairs {
                    put(out, k, resp3);
                    put(out, v, resp3);
                }
            }
        }
    }

    /// Arbitrary values that survive an encode/parse round trip (no NaN, line-safe text).
    pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
        let text = "[a-zA-Z0-9 :*~=-]{0,12}";
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<i64>().prop_map(Value::Int),
            prop_oneof![(-1e12f64..1e12).boxed(), Just(f64::INFINITY).boxed(), Just(f64::NEG_INFINITY).boxed()]
                .prop_map(Value::Double),
            any::<bool>().prop_map(Value::Bool),
            text.prop_map(|t| Value::Simple(t.into())),
            text.prop_map(|t| Value::Error(t.into())),
            "-?[1-9][0-9]{0,30}".prop_map(|t| Value::Other(t.into())),
            proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| Value::Bulk(b.into())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{arb_value, encode};
    use super::*;
    use proptest::prelude::*;

    fn p(s: &[u8]) -> Option<Value> {
        parse(&Bytes::copy_from_slice(s))
    }

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn scalars() {
        assert_eq!(p(b"+OK\r\n"), Some(Value::Simple("OK".into())));
        assert_eq!(p(b"-ERR no\r\n"), Some(Value::Error("ERR no".into())));
        assert_eq!(p(b":-42\r\n"), Some(Value::Int(-42)));
        assert_eq!(p(b"$3\r\nfoo\r\n"), Some(bulk("foo")));
        assert_eq!(p(b"$0\r\n\r\n"), Some(bulk("")));
        assert_eq!(p(b"$4\r\na\r\nb\r\n"), Some(bulk("a\r\nb")));
    }

    #[test]
    fn nulls_of_both_protocols() {
        assert_eq!(p(b"$-1\r\n"), Some(Value::Nil));
        assert_eq!(p(b"*-1\r\n"), Some(Value::Nil));
        assert_eq!(p(b"_\r\n"), Some(Value::Nil));
    }

    #[test]
    fn resp3_scalars() {
        assert_eq!(p(b",1.5\r\n"), Some(Value::Double(1.5)));
        assert_eq!(p(b",-inf\r\n"), Some(Value::Double(f64::NEG_INFINITY)));
        assert!(matches!(p(b",nan\r\n"), Some(Value::Double(d)) if d.is_nan()));
        assert_eq!(p(b"#t\r\n"), Some(Value::Bool(true)));
        assert_eq!(p(b"#f\r\n"), Some(Value::Bool(false)));
        assert_eq!(p(b"(12345678901234567890\r\n"), Some(Value::Other("12345678901234567890".into())));
        assert_eq!(p(b"!9\r\nERR boom!\r\n"), Some(Value::Error("ERR boom!".into())));
        assert_eq!(p(b"=8\r\ntxt:text\r\n"), Some(bulk("text")));
        assert_eq!(p(b"=4\r\nmkd:\r\n"), Some(bulk("")));
    }

    #[test]
    fn aggregates() {
        assert_eq!(p(b"*2\r\n$1\r\nk\r\n:1\r\n"), Some(Value::Array(vec![bulk("k"), Value::Int(1)])));
        assert_eq!(p(b"*0\r\n"), Some(Value::Array(vec![])));
        assert_eq!(p(b"~1\r\n+a\r\n"), Some(Value::Array(vec![Value::Simple("a".into())])));
        assert_eq!(
            p(b">2\r\n+message\r\n$1\r\nx\r\n"),
            Some(Value::Array(vec![Value::Simple("message".into()), bulk("x")]))
        );
        assert_eq!(
            p(b"%1\r\n$1\r\nk\r\n*1\r\n,2.5\r\n"),
            Some(Value::Map(vec![(bulk("k"), Value::Array(vec![Value::Double(2.5)]))]))
        );
        assert_eq!(
            p(b"*2\r\n*2\r\n$1\r\na\r\n$1\r\n1\r\n*0\r\n"),
            Some(Value::Array(vec![Value::Array(vec![bulk("a"), bulk("1")]), Value::Array(vec![])]))
        );
    }

    #[test]
    fn attributes_are_skipped() {
        assert_eq!(p(b"|1\r\n+key\r\n+val\r\n:7\r\n"), Some(Value::Int(7)));
        assert_eq!(p(b"*1\r\n|1\r\n+a\r\n*1\r\n:1\r\n$1\r\nx\r\n"), Some(Value::Array(vec![bulk("x")])));
    }

    #[test]
    fn bulk_is_a_slice_of_the_frame() {
        let frame = Bytes::from_static(b"*1\r\n$5\r\nhello\r\n");
        let Some(Value::Array(items)) = parse(&frame) else { panic!("not an array") };
        let Value::Bulk(b) = &items[0] else { panic!("not a bulk") };
        assert_eq!(b.as_ptr(), frame[8..].as_ptr());
    }

    #[test]
    fn accessors() {
        assert_eq!(bulk("x").as_bytes(), Some(&b"x"[..]));
        assert_eq!(Value::Simple("OK".into()).as_bytes(), Some(&b"OK"[..]));
        assert_eq!(Value::Int(3).as_bytes(), None);
        assert_eq!(Value::Int(3).as_int(), Some(3));
        assert_eq!(bulk("3").as_int(), None);
        assert_eq!(Value::Nil.as_int(), None);
    }

    #[test]
    fn malformed_or_incomplete_is_none() {
        for bad in [
            &b""[..],
            b"+OK",
            b"+OK\n",
            b"+OK\r\n+OK\r\n",
            b":abc\r\n",
            b":\r\n",
            b"$3\r\nfo\r\n",
            b"$3\r\nfooXY",
            b"$-2\r\n",
            b"$?\r\n",
            b"*2\r\n:1\r\n",
            b"*-5\r\n",
            b"#x\r\n",
            b"_x\r\n",
            b"(\r\n",
            b"=2\r\nab\r\n",
            b"?\r\n",
            b"*99999999999999999999\r\n",
            b"$9223372036854775807\r\n",
            b"*9223372036854775807\r\n",
            b"%4611686018427387904\r\n",
        ] {
            assert_eq!(p(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = b"*1\r\n".repeat(100_000);
        assert_eq!(p(&deep), None);
        let attrs = b"|0\r\n".repeat(100_000);
        assert_eq!(p(&attrs), None);
        let mut ok = b"*1\r\n".repeat(100);
        ok.extend_from_slice(b":1\r\n");
        assert!(p(&ok).is_some());
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = p(&bytes);
        }

        #[test]
        fn never_panics_on_resp_like_garbage(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(&b"*"[..]), Just(&b"$"[..]), Just(&b"%"[..]), Just(&b"|"[..]),
                    Just(&b"="[..]), Just(&b"\r\n"[..]), Just(&b"-1"[..]), Just(&b"3"[..]),
                    Just(&b"txt:"[..]), Just(&b"_"[..]), Just(&b","[..]), Just(&b"#t"[..]),
                ],
                0..40,
            )
        ) {
            let _ = p(&parts.concat());
        }

        #[test]
        fn round_trips(v in arb_value(), resp3 in any::<bool>()) {
            let wire = encode(&v, resp3);
            prop_assert_eq!(p(&wire), Some(v));
        }

        #[test]
        fn every_strict_prefix_is_incomplete(v in arb_value(), cut in any::<usize>()) {
            let wire = encode(&v, true);
            let cut = cut % wire.len();
            prop_assert_eq!(p(&wire[..cut]), None);
        }
    }
}
