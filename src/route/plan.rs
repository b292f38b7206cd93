//! The cutover plan: which hash slots have moved to the target.
//!
//! Slots move in a fixed order: slot `bitreverse14(i)` is the `i`-th to move. Any prefix of
//! that order is spread evenly over the slot space, so 10% of slots is close to 10% of keys
//! and touches every shard of a Cluster target, and raising the percentage only ever adds
//! slots (lowering only removes them): a slot never flaps between sides on the way up.

use super::Side;

/// Redis Cluster's slot count.
pub const SLOTS: usize = 16384;

/// The `i`-th slot to move (bit-reversed 14-bit index).
pub fn slot_at(i: u16) -> u16 {
    (i & 0x3fff).reverse_bits() >> 2
}

/// A set of slots, one bit each.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet {
    bits: Box<[u64; SLOTS / 64]>,
}

impl std::fmt::Debug for SlotSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotSet({} slots)", self.len())
    }
}

impl SlotSet {
    pub fn empty() -> SlotSet {
        SlotSet { bits: Box::new([0; SLOTS / 64]) }
    }

    pub fn contains(&self, slot: u16) -> bool {
        let s = slot as usize % SLOTS;
        self.bits[s / 64] & (1 << (s % 64)) != 0
    }

    pub fn insert(&mut self, slot: u16) {
        let s = slot as usize % SLOTS;
        self.bits[s / 64] |= 1 << (s % 64);
    }

    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    /// Slots in exactly one of the two sets.
    pub fn symmetric_difference(&self, other: &SlotSet) -> SlotSet {
        let mut out = SlotSet::empty();
        for (o, (a, b)) in out.bits.iter_mut().zip(self.bits.iter().zip(other.bits.iter())) {
            *o = a ^ b;
        }
        out
    }
}

/// How far the cutover has gone: `percent` of slots, taken in the spread order, are served
/// by the target.
#[derive(Clone, Debug, PartialEq)]
pub struct CutoverPlan {
    percent: f64,
    moved: SlotSet,
    count: usize,
}

impl CutoverPlan {
    /// `percent` is clamped to 0..=100; the number of moved slots is rounded to the nearest
    /// whole slot.
    pub fn new(percent: f64) -> CutoverPlan {
        let percent = if percent.is_finite() { percent.clamp(0.0, 100.0) } else { 0.0 };
        let count = ((percent / 100.0) * SLOTS as f64).round() as usize;
        let mut moved = SlotSet::empty();
        for i in 0..count {
            moved.insert(slot_at(i as u16));
        }
        CutoverPlan { percent, moved, count }
    }

    pub fn percent(&self) -> f64 {
        self.percent
    }

    /// Number of slots served by the target.
    pub fn moved_slots(&self) -> usize {
        self.count
    }

    /// The side serving `slot`.
    pub fn side(&self, slot: u16) -> Side {
        if self.moved.contains(slot) {
            Side::Target
        } else {
            Side::Source
        }
    }

    /// True when every slot is on one side, so routing needs no hashing at all.
    pub fn uniform(&self) -> Option<Side> {
        match self.count {
            0 => Some(Side::Source),
            SLOTS => Some(Side::Target),
            _ => None,
        }
    }

    /// Slots whose serving side differs between the two plans.
    pub fn moving(&self, next: &CutoverPlan) -> SlotSet {
        self.moved.symmetric_difference(&next.moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn order_visits_every_slot_once() {
        let mut seen = SlotSet::empty();
        for i in 0..SLOTS as u16 {
            seen.insert(slot_at(i));
        }
        assert_eq!(seen.len(), SLOTS);
    }

    #[test]
    fn percent_to_slots() {
        assert_eq!(CutoverPlan::new(0.0).moved_slots(), 0);
        assert_eq!(CutoverPlan::new(37.5).moved_slots(), 6144);
        assert_eq!(CutoverPlan::new(100.0).moved_slots(), SLOTS);
        assert_eq!(CutoverPlan::new(150.0).moved_slots(), SLOTS);
        assert_eq!(CutoverPlan::new(f64::NAN).moved_slots(), 0);
        assert_eq!(CutoverPlan::new(0.0).uniform(), Some(Side::Source));
        assert_eq!(CutoverPlan::new(100.0).uniform(), Some(Side::Target));
        assert_eq!(CutoverPlan::new(50.0).uniform(), None);
    }

    #[test]
    fn ten_percent_is_spread_over_every_shard() {
        // A 3-shard cluster splits slots in three ranges; each gets about a third of 10%.
        let plan = CutoverPlan::new(10.0);
        let shards = [0..5461u16, 5461..10923, 10923..16384];
        for range in shards {
            let moved = range.clone().filter(|&s| plan.side(s) == Side::Target).count();
            let expected = range.len() as f64 * 0.10;
            assert!((moved as f64 - expected).abs() <= 8.0, "{range:?}: {moved} vs {expected}");
        }
    }

    #[test]
    fn ten_percent_of_slots_is_about_ten_percent_of_keys() {
        let plan = CutoverPlan::new(10.0);
        let moved = (0..100_000)
            .filter(|i| plan.side(crate::route::slot(format!("session:{i}").as_bytes())) == Side::Target)
            .count();
        assert!((9_500..10_500).contains(&moved), "{moved}");
    }

    proptest! {
        /// Raising the percentage only adds slots; the moving set is exactly the difference.
        #[test]
        fn raising_only_adds(a in 0.0f64..100.0, b in 0.0f64..100.0) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let low = CutoverPlan::new(lo);
            let high = CutoverPlan::new(hi);
            for slot in 0..SLOTS as u16 {
                if low.side(slot) == Side::Target {
                    prop_assert_eq!(high.side(slot), Side::Target);
                }
            }
            prop_assert_eq!(low.moving(&high).len(), high.moved_slots() - low.moved_slots());
        }
    }
}
