//! Routing: which backend serves a command.
//!
//! A key's hash slot decides its side under the current [`plan::CutoverPlan`]; the other
//! backend is the mirror for that command. The whole routing state lives in one
//! [`Routing`] value that is swapped atomically when the split changes.

pub mod plan;

pub use plan::{CutoverPlan, SlotSet};

/// One of the two stores taking part in a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Source,
    Target,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Target,
            Side::Target => Side::Source,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Side::Source => 0,
            Side::Target => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

/// How writes reach the backend that is not serving them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorMode {
    Off,
    /// Mirrored through the ordered queue; the client does not wait.
    Async,
    /// The client's reply waits (bounded) until the mirror has applied the write too.
    Sync,
}

/// Everything a client needs to route a command, read once per command.
#[derive(Clone, Debug)]
pub struct Routing {
    pub plan: CutoverPlan,
    pub mirror: MirrorMode,
    /// During a flip: the slots changing sides. Writes to them are mirrored synchronously
    /// until the new plan is swapped in, so the new side has every acknowledged write.
    pub moving: Option<SlotSet>,
    /// Whether a target backend exists at all.
    pub has_target: bool,
    /// Bumped when a flip starts; commands register the generation they routed with, so
    /// the flip can wait for those that read the previous one (see `Proxy::route`).
    pub generation: u64,
}

impl Routing {
    /// A routing with `percent` of the slots on the target and no flip under way.
    pub fn new(percent: f64, mirror: MirrorMode, has_target: bool) -> Routing {
        Routing { plan: CutoverPlan::new(percent), mirror, moving: None, has_target, generation: 0 }
    }

    /// The side serving `key`.
    pub fn side_of(&self, key: &[u8]) -> Side {
        match self.plan.uniform() {
            Some(side) => side,
            None => self.plan.side(slot(key)),
        }
    }

    /// True if a write to `key` must wait for its mirror (sync mode, or its slot is moving).
    pub fn sync_for(&self, key: &[u8]) -> bool {
        self.mirror == MirrorMode::Sync || self.moving.as_ref().is_some_and(|m| m.contains(slot(key)))
    }

    /// Where commands without keys go: the source while mirroring keeps it complete.
    pub fn keyless_side(&self) -> Side {
        if self.mirror == MirrorMode::Off && self.plan.uniform() == Some(Side::Target) {
            Side::Target
        } else {
            Side::Source
        }
    }
}

/// The Redis Cluster hash slot of a key (CRC16 mod 16384, honouring `{hash tags}`).
pub fn slot(key: &[u8]) -> u16 {
    redis_protocol::redis_keyslot(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"123456789"), 12739);
    }
}
