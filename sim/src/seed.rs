//! Seeds: one run seed, one derived seed per component (splitmix64 over the seed, a
//! component tag and an index), so adding a component never shifts another's stream.

/// A sub-seed for component `tag` number `index`.
pub fn sub_seed(seed: u64, tag: &str, index: u64) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for b in tag.bytes().chain(index.to_le_bytes()) {
        h = splitmix(h ^ u64::from(b));
    }
    h
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_seeds_differ_by_tag_index_and_seed() {
        let a = sub_seed(1, "app", 0);
        assert_eq!(a, sub_seed(1, "app", 0));
        assert_ne!(a, sub_seed(1, "app", 1));
        assert_ne!(a, sub_seed(1, "sidecar", 0));
        assert_ne!(a, sub_seed(2, "app", 0));
    }
}
