//! Benchmarks of the functions every command goes through: request framing, reply framing,
//! command lookup, slot routing, mirror effect rewriting and shadow-read comparison.
//!
//! Run with `cargo bench --bench hot`; a quicker pass (under three minutes on two cores, once built):
//! `cargo bench --bench hot -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

use tandem::compare::rules::{self, Rule};
use tandem::config::defaults::{MAX_ARRAY_LEN, MAX_BULK_LEN};
use tandem::mirror::effect::{self, ScriptCache};
use tandem::proto::commands::CommandTable;
use tandem::proto::reply::{self, frame_len};
use tandem::proto::request::{self, Limits};
use tandem::proto::value;
use tandem::route::{self, CutoverPlan, MirrorMode, Routing};

/// The limits the proxy runs with by default.
const LIMITS: Limits = Limits { max_bulk_len: MAX_BULK_LEN as usize, max_array_len: MAX_ARRAY_LEN as usize };

/// A fixed "now" for effect rewriting, so every run rewrites to the same absolute times.
const NOW_MS: u64 = 1_700_000_000_000;

/// A client read buffer holding `data`, already in the shared representation a long-lived
/// connection buffer is in after its first `split_to`, so the measured parse does not pay the
/// one-off promotion of a fresh `Vec`-backed buffer.
fn read_buffer(data: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(data.len() + 1);
    buf.extend_from_slice(b"\n");
    buf.extend_from_slice(data);
    drop(buf.split_to(1));
    buf
}

fn value_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

fn bulk_array(items: &[&[u8]]) -> Bytes {
    let mut b = BytesMut::new();
    b.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
    for item in items {
        reply::put_bulk(&mut b, item);
    }
    b.freeze()
}

fn framing(c: &mut Criterion) {
    let mut g = c.benchmark_group("framing");

    // --- client requests -------------------------------------------------------------------
    let v100 = value_of(100);
    let get = reply::command(&[&b"GET"[..], b"user:1000"]);
    let set = reply::command(&[&b"SET"[..], b"user:1000", &v100]);
    let mut pipeline = BytesMut::new();
    for i in 0..16 {
        pipeline.extend_from_slice(&reply::command(&[&b"SET"[..], format!("key:{i}").as_bytes(), &v100]));
    }
    let pipeline = pipeline.freeze();
    let inline = Bytes::from_static(b"SET user:1000 hello\r\n");

    for (name, data) in [("request/get", &get), ("request/set_100b", &set), ("request/inline_set", &inline)] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || read_buffer(data),
                |buf| request::parse(buf, &LIMITS).expect("valid request").expect("complete request"),
                BatchSize::SmallInput,
            )
        });
    }
    g.throughput(Throughput::Elements(16));
    g.bench_function("request/pipeline_16_set", |b| {
        b.iter_batched_ref(
            || (read_buffer(&pipeline), Vec::with_capacity(16)),
            |(buf, out)| {
                while let Some(req) = request::parse(buf, &LIMITS).expect("valid request") {
                    out.push(req);
                }
                assert_eq!(out.len(), 16);
            },
            BatchSize::SmallInput,
        )
    });

    // --- backend replies -------------------------------------------------------------------
    let bulk = reply::bulk(&v100);
    let members: Vec<Vec<u8>> = (0..10).map(|i| format!("member:{i:04}").into_bytes()).collect();
    let members: Vec<&[u8]> = members.iter().map(Vec::as_slice).collect();
    let array = bulk_array(&members);
    // HGETALL of a five-field hash over RESP3.
    let mut map = BytesMut::from(&b"%5\r\n"[..]);
    for i in 0..5 {
        reply::put_bulk(&mut map, format!("field{i}").as_bytes());
        reply::put_bulk(&mut map, format!("value-{i}").as_bytes());
    }
    let map = map.freeze();

    for (name, data) in [("bulk_100b", &bulk), ("array_10", &array), ("resp3_map_5", &map)] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::new("frame_len", name), data, |b, data| {
            b.iter(|| frame_len(black_box(data)).expect("valid reply").expect("complete reply"))
        });
    }
    for (name, data) in [("array_10", &array), ("resp3_map_5", &map)] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::new("value_parse", name), data, |b, data| {
            b.iter(|| value::parse(black_box(data)).expect("valid reply"))
        });
    }
    g.finish();
}

fn command_lookup(c: &mut Criterion) {
    let table = CommandTable::builtin();
    let mut g = c.benchmark_group("command_lookup");
    g.throughput(Throughput::Elements(1));
    let cases: [(&str, &[&[u8]]); 6] = [
        ("GET", &[b"GET", b"k"]),
        ("SET", &[b"SET", b"k", b"v"]),
        ("MGET", &[b"MGET", b"a", b"b", b"c"]),
        ("HSET", &[b"HSET", b"h", b"f", b"v"]),
        ("CLIENT_SETNAME", &[b"CLIENT", b"SETNAME", b"app"]),
        ("unknown", &[b"FOOBAR", b"k"]),
    ];
    for (name, argv) in cases {
        g.bench_with_input(BenchmarkId::new("lookup", name), argv, |b, argv| {
            b.iter(|| table.lookup(black_box(argv)).map(|info| info.id))
        });
    }
    g.bench_function("get/client|setname", |b| b.iter(|| table.get(black_box("client|setname")).map(|i| i.id)));
    // Key extraction follows every lookup of a keyed command.
    let mset: &[&[u8]] = &[b"MSET", b"a", b"1", b"b", b"2", b"c", b"3", b"d", b"4"];
    let info = table.lookup(mset).expect("known command");
    g.bench_function("key_indices/MSET_4", |b| b.iter(|| info.key_indices(black_box(mset))));
    g.finish();
}

fn slot_routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("slot_routing");
    g.throughput(Throughput::Elements(1));
    let keys: [(&str, &[u8]); 2] = [("short", b"foo"), ("hashtag", b"{user1000}.following")];
    for (name, key) in keys {
        g.bench_with_input(BenchmarkId::new("slot", name), key, |b, key| b.iter(|| route::slot(black_box(key))));
    }

    g.bench_function("CutoverPlan::new(50)", |b| b.iter(|| CutoverPlan::new(black_box(50.0))));
    let plan = CutoverPlan::new(50.0);
    let slot = route::slot(b"user:1000:profile");
    g.bench_function("plan.side", |b| b.iter(|| plan.side(black_box(slot))));

    let routing = |percent| Routing::new(percent, MirrorMode::Async, true);
    let key: &[u8] = b"user:1000:profile";
    for (name, routing) in [("split_50", routing(50.0)), ("uniform_0", routing(0.0))] {
        g.bench_with_input(BenchmarkId::new("side_of", name), &routing, |b, routing| {
            b.iter(|| routing.side_of(black_box(key)))
        });
    }
    g.finish();
}

fn effect_rewriting(c: &mut Criterion) {
    let scripts = ScriptCache::new();
    let script = b"return redis.call('GET', KEYS[1])";
    let sha = scripts.remember(script);

    let v100 = value_of(100);
    let cases: Vec<(&str, &str, Vec<&[u8]>, Bytes)> = vec![
        ("set_plain", "set", vec![b"SET", b"k", &v100], reply::ok()),
        ("set_ex", "set", vec![b"SET", b"k", &v100, b"EX", b"10"], reply::ok()),
        ("expire", "expire", vec![b"EXPIRE", b"k", b"10"], reply::integer(1)),
        ("incrbyfloat", "incrbyfloat", vec![b"INCRBYFLOAT", b"k", b"0.1"], reply::bulk(b"3.5")),
        ("spop", "spop", vec![b"SPOP", b"s"], reply::bulk(b"member")),
        ("spop_count_3", "spop", vec![b"SPOP", b"s", b"3"], bulk_array(&[b"a", b"b", b"c"])),
        ("blpop", "blpop", vec![b"BLPOP", b"a", b"b", b"0"], bulk_array(&[b"b", b"x"])),
        ("evalsha_cached", "evalsha", vec![b"EVALSHA", sha.as_bytes(), b"1", b"k"], reply::bulk(b"v")),
    ];

    let mut g = c.benchmark_group("effect");
    g.throughput(Throughput::Elements(1));
    for (label, name, argv, served) in &cases {
        g.bench_function(*label, |b| {
            b.iter(|| effect::effect(black_box(name), black_box(argv), black_box(served), || NOW_MS, &scripts))
        });
    }
    g.finish();
}

fn compare(c: &mut Criterion) {
    let mut g = c.benchmark_group("compare");
    g.throughput(Throughput::Elements(1));

    let get: &[&[u8]] = &[b"GET", b"k"];
    g.bench_function("rule_for/get", |b| b.iter(|| rules::rule_for(black_box("get"), black_box(get))));

    let v = reply::bulk(&value_of(32));
    let resp2_double = reply::bulk(b"1.5");
    let resp3_double = Bytes::from_static(b",1.5\r\n");
    let set_a = bulk_array(&[b"alpha", b"bravo", b"charlie", b"delta", b"echo"]);
    let set_b = bulk_array(&[b"delta", b"alpha", b"echo", b"charlie", b"bravo"]);
    let cases = [
        ("exact/identical_bytes", Rule::Exact, &v, &v),
        ("exact/resp2_vs_resp3_double", Rule::Exact, &resp2_double, &resp3_double),
        ("unordered/5_reordered", Rule::Unordered, &set_a, &set_b),
    ];
    for (name, rule, serving, mirror) in cases {
        g.bench_function(name, |b| {
            b.iter(|| rules::compare(rule, black_box(serving), black_box(mirror), black_box(1000)))
        });
    }
    g.finish();
}

criterion_group! {
    name = hot;
    // Fewer bootstrap resamples than the default 100,000: on a small shared machine the
    // analysis otherwise takes longer than the measurement.
    config = Criterion::default().sample_size(40).nresamples(10_000);
    targets = framing, command_lookup, slot_routing, effect_rewriting, compare
}

criterion_main!(hot);
