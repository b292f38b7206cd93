//! Routing: which backend serves a command. With one backend configured everything goes to
//! the source; the slot-based cutover split builds on [`slot`].

/// One of the two stores taking part in a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Source,
    Target,
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
