//! Entry points for fuzzing what a client (or a backend) can make tandem do with arbitrary
//! bytes: framing requests, looking commands up, finding and routing their keys, choosing the
//! comparison rule, rewriting a write's effect for the mirror, and parsing replies.
//!
//! The cargo-fuzz target in `fuzz/` calls [`client_input`]; so does a property test in
//! `cargo test`, which runs it on random and mutated inputs every time the suite runs. Either
//! way a panic, an overflow or an out-of-bounds index is a bug; the function itself asserts a
//! few invariants (every key index is in bounds, framing consumes what it reports).

use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};

use crate::compare::rules;
use crate::mirror::effect::{self, ScriptCache};
use crate::proto::commands::CommandTable;
use crate::proto::request::{self, Limits};
use crate::proto::{reply, value};
use crate::route::{self, MirrorMode, Routing};

/// Small limits, so hostile sizes are exercised without large allocations.
const LIMITS: Limits = Limits { max_bulk_len: 1 << 16, max_array_len: 1 << 10 };
const NOW_MS: u64 = 1_700_000_000_000;

struct Fixtures {
    table: CommandTable,
    routings: [Routing; 3],
    scripts: ScriptCache,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let routing = |percent| Routing::new(percent, MirrorMode::Async, true);
        Fixtures {
            table: CommandTable::builtin(),
            routings: [routing(0.0), routing(37.5), routing(100.0)],
            scripts: ScriptCache::new(),
        }
    })
}

/// Feeds `data` to the request path as one client's byte stream. The first byte picks the
/// cutover split; the input also serves as a backend reply to the commands it holds.
pub fn client_input(data: &[u8]) {
    let Some((&selector, data)) = data.split_first() else { return };
    let f = fixtures();
    let routing = &f.routings[usize::from(selector % 3)];
    let as_reply = Bytes::copy_from_slice(data);
    // Replies: framing and parsing must agree and never panic.
    if let Ok(Some(n)) = reply::frame_len(data) {
        assert!(n <= data.len(), "frame_len {n} beyond {} bytes", data.len());
        let _ = value::parse(&as_reply.slice(..n));
    }
    let _ = value::parse(&as_reply);
    let reply = match reply::frame_len(data) {
        Ok(Some(n)) => as_reply.slice(..n),
        _ => reply::ok(),
    };

    let mut buf = BytesMut::from(data);
    for _ in 0..64 {
        let before = buf.len();
        let req = match request::parse(&mut buf, &LIMITS) {
            Ok(Some(req)) => req,
            Ok(None) | Err(_) => break,
        };
        assert!(buf.len() < before, "a parsed request consumed nothing");
        let argv = req.argv();
        assert_eq!(argv.len(), req.argc());
        let Some(info) = f.table.lookup(&argv) else { continue };
        for k in info.key_indices(&argv) {
            assert!(k < argv.len(), "{}: key index {k} of {} arguments", info.name, argv.len());
            let _ = route::slot(argv[k]);
            let _ = routing.side_of(argv[k]);
        }
        let _ = rules::rule_for(&info.name, &argv);
        let _ = effect::effect(&info.name, &argv, &reply, || NOW_MS, &f.scripts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Inputs close to real traffic, so mutations reach deep into the command handling.
    fn seeds() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for cmd in [
            &["SET", "k", "v", "EX", "10"][..],
            &["MSET", "a", "1", "b", "2"],
            &["EVAL", "return 1", "2", "k1", "k2", "arg"],
            &["XADD", "s", "*", "f", "v"],
            &["ZADD", "z", "1", "m"],
            &["BLMPOP", "0", "2", "l1", "l2", "LEFT"],
            &["GETEX", "k", "PXAT", "1"],
            &["SORT", "k", "STORE", "d"],
            &["CLIENT", "SETNAME", "x"],
            &["SPOP", "s", "3"],
        ] {
            let mut v = vec![1u8];
            v.extend_from_slice(&reply::command(cmd));
            out.push(v);
        }
        out.push(b"\x02PING\r\nGET k\r\n".to_vec());
        out.push(b"\x00*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$-1\r\n".to_vec());
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            client_input(&data);
        }

        #[test]
        fn mutated_commands_never_panic(
            seed in 0usize..12,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            let mut data = seeds()[seed].clone();
            for (at, byte) in flips {
                let i = at % data.len();
                data[i] = byte;
            }
            data.truncate(1 + cut % data.len());
            client_input(&data);
        }
    }
}
