//! TEMPORARY: replaced by the full effect rules.
use bytes::Bytes;
#[derive(Debug, PartialEq)]
pub enum Effect {
    Same,
    Rewritten(Vec<Vec<Bytes>>),
    Nothing,
}
#[derive(Default)]
pub struct ScriptCache;
impl ScriptCache {
    pub fn new() -> Self {
        ScriptCache
    }
}
pub fn effect(_name: &str, _argv: &[&[u8]], reply: &Bytes, _now_ms: u64, _scripts: &ScriptCache) -> Effect {
    if crate::proto::reply::is_error(reply) {
        Effect::Nothing
    } else {
        Effect::Same
    }
}
pub fn compare_reply(name: &str) -> bool {
    matches!(
        name,
        "incr" | "incrby" | "decr" | "decrby" | "hincrby" | "sadd" | "lpush" | "rpush" | "set" | "del" | "hset"
    )
}
