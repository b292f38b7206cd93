//! Merging the replies of a multi-key command that was split between the two backends
//! (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH), so the client gets exactly what one Redis
//! would have answered.

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend::{BackendError, Reply};
use crate::mirror::split_array;
use crate::proto::reply;

/// How the parts combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeKind {
    /// MGET: elements go back to the positions of their keys.
    Positions,
    /// DEL, UNLINK, EXISTS, TOUCH: the counts add up.
    Sum,
    /// MSET: `+OK` when every part said so.
    AllOk,
}

impl MergeKind {
    /// The merge for a command that may be split, by its table name.
    pub fn for_command(name: &str) -> Option<MergeKind> {
        match name {
            "mget" => Some(MergeKind::Positions),
            "del" | "unlink" | "exists" | "touch" => Some(MergeKind::Sum),
            "mset" => Some(MergeKind::AllOk),
            _ => None,
        }
    }
}

/// One part's reply and, for `Positions`, where its elements go.
pub struct Part {
    pub positions: Vec<usize>,
    pub reply: Reply,
}

/// Combines the parts. Any error (from a backend or in a reply) is returned as the reply,
/// as a single Redis would fail the whole command.
pub fn merge(kind: MergeKind, total: usize, parts: Vec<Part>) -> Bytes {
    let mut frames = Vec::with_capacity(parts.len());
    for part in parts {
        match part.reply {
            Err(e) => return e.to_resp(),
            Ok(f) if reply::is_error(&f) => return f,
            Ok(f) => frames.push((part.positions, f)),
        }
    }
    match kind {
        MergeKind::Sum => {
            let mut sum = 0i64;
            for (_, f) in &frames {
                match parse_int(f) {
                    Some(n) => sum += n,
                    None => return bad_part(),
                }
            }
            reply::integer(sum)
        }
        MergeKind::AllOk => reply::ok(),
        MergeKind::Positions => {
            let mut slots: Vec<Option<Bytes>> = vec![None; total];
            for (positions, f) in &frames {
                let Some(elements) = split_array(f) else { return bad_part() };
                if elements.len() != positions.len() {
                    return bad_part();
                }
                for (pos, el) in positions.iter().zip(elements) {
                    if let Some(slot) = slots.get_mut(*pos) {
                        *slot = Some(el);
                    }
                }
            }
            let mut out = BytesMut::with_capacity(16 + slots.iter().flatten().map(|b| b.len()).sum::<usize>());
            out.put_slice(format!("*{total}\r\n").as_bytes());
            for s in slots {
                match s {
                    Some(b) => out.put(b),
                    None => return bad_part(),
                }
            }
            out.freeze()
        }
    }
}

fn parse_int(frame: &[u8]) -> Option<i64> {
    let body = frame.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(body).ok()?.parse().ok()
}

fn bad_part() -> Bytes {
    BackendError::Unavailable { backend: "split".into(), reason: "unexpected reply shape from a backend".into() }
        .to_resp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(b: &'static [u8]) -> Reply {
        Ok(Bytes::from_static(b))
    }

    #[test]
    fn mget_elements_return_to_their_key_positions() {
        let parts = vec![
            Part { positions: vec![0, 2], reply: ok(b"*2\r\n$1\r\na\r\n$-1\r\n") },
            Part { positions: vec![1], reply: ok(b"*1\r\n$1\r\nb\r\n") },
        ];
        assert_eq!(&merge(MergeKind::Positions, 3, parts)[..], b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n");
    }

    #[test]
    fn counts_add_up_and_errors_win() {
        let parts =
            vec![Part { positions: vec![], reply: ok(b":2\r\n") }, Part { positions: vec![], reply: ok(b":1\r\n") }];
        assert_eq!(&merge(MergeKind::Sum, 0, parts)[..], b":3\r\n");
        let parts = vec![
            Part { positions: vec![], reply: ok(b":2\r\n") },
            Part { positions: vec![], reply: ok(b"-WRONGTYPE x\r\n") },
        ];
        assert_eq!(&merge(MergeKind::Sum, 0, parts)[..], b"-WRONGTYPE x\r\n");
        let parts =
            vec![Part { positions: vec![], reply: ok(b"+OK\r\n") }, Part { positions: vec![], reply: ok(b"+OK\r\n") }];
        assert_eq!(&merge(MergeKind::AllOk, 0, parts)[..], b"+OK\r\n");
    }
}
