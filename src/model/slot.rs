//! The shard slot of a routing key (CONTRACT.md "Unit routing"), shared by the gateway
//! and the DB proxy so that one shard map steers both.
//!
//! A key that ends in at least two decimal digits (a user id such as `2088000000000007`)
//! has the slot of its last two (`07`). Any other key is hashed: FNV-1a (64-bit) over its
//! bytes, modulo 100. FNV-1a is fixed here forever: changing it would move users between
//! units.

/// Number of slots (00-99).
pub const SLOTS: u8 = 100;

/// The slot (0-99) of a routing key.
pub fn slot_of(key: &[u8]) -> u8 {
    if let [.., a, b] = key {
        if a.is_ascii_digit() && b.is_ascii_digit() {
            return (a - b'0') * 10 + (b - b'0');
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(SLOTS)) as u8
}

/// Slot → unit for all 100 slots: the shard map named `default` (else the only one),
/// over the RZones' own `slots`. `None` where nothing claims a slot.
pub fn slot_units(
    units: &std::collections::BTreeMap<String, super::specs::UnitSpec>,
    maps: &[(String, super::specs::ShardMapSpec)],
) -> Vec<Option<String>> {
    use super::specs::{parse_slots, UnitType};
    let mut slot_unit: Vec<Option<String>> = vec![None; SLOTS as usize];
    for (name, u) in units {
        if u.unit_type == UnitType::RZone {
            for r in &u.slots {
                if let Ok(range) = parse_slots("", r) {
                    for s in range {
                        slot_unit[s as usize] = Some(name.clone());
                    }
                }
            }
        }
    }
    let chosen = maps
        .iter()
        .find(|(n, _)| n == "default")
        .or(if maps.len() == 1 { maps.first() } else { None });
    if let Some((_, m)) = chosen {
        for (range, unit) in &m.slots {
            if let Ok(range) = parse_slots("", range) {
                for s in range {
                    slot_unit[s as usize] = Some(unit.clone());
                }
            }
        }
    }
    slot_unit
}

#[cfg(test)]
mod tests {
    use super::slot_of;

    #[test]
    fn trailing_digits_give_the_slot() {
        assert_eq!(slot_of(b"2088000000000007"), 7);
        assert_eq!(slot_of(b"user-42"), 42);
        assert_eq!(slot_of(b"99"), 99);
        assert_eq!(slot_of(b"00"), 0);
    }

    #[test]
    fn other_keys_are_hashed_stably() {
        // Fixed values: a change here moves users between units.
        assert_eq!(slot_of(b""), (0xcbf2_9ce4_8422_2325u64 % 100) as u8);
        assert_eq!(slot_of(b"alice"), 83);
        assert_eq!(slot_of(b"bob"), 92);
        assert_eq!(slot_of(b"x7"), 60);
        let spread: std::collections::BTreeSet<u8> = (0..2000)
            .map(|i| slot_of(format!("k{i}x").as_bytes()))
            .collect();
        assert!(
            spread.len() > 90,
            "hash spreads over slots: {}",
            spread.len()
        );
    }
}
