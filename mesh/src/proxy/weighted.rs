//! Envoy's weighted-cluster pick: `v = random % total`, then walk the clusters in config
//! order with half-open intervals `[cum, cum + w)`.

/// Index of the entry whose interval holds `random % total`; `None` if the total is 0.
pub fn pick(weights: &[u32], random: u64) -> Option<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return None;
    }
    let v = random % total;
    let mut cum = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        cum += u64::from(w);
        if v < cum {
            return Some(i);
        }
    }
    unreachable!("v < total = final cum")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn walks_half_open_intervals_in_config_order() {
        let w = [1, 1, 2];
        let picks: Vec<usize> = (0..4).map(|r| pick(&w, r).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 2]);
        assert_eq!(pick(&[0, 5], 3), Some(1));
        assert_eq!(pick(&[0, 0], 3), None);
    }

    proptest! {
        #[test]
        fn zero_weight_is_never_picked(ws in proptest::collection::vec(0u32..5, 1..6), r: u64) {
            if let Some(i) = pick(&ws, r) {
                prop_assert!(ws[i] > 0);
            } else {
                prop_assert!(ws.iter().all(|&w| w == 0));
            }
        }

        #[test]
        fn each_entry_gets_exactly_its_weight_over_one_cycle(ws in proptest::collection::vec(0u32..50, 1..6), offset: u32) {
            let total: u64 = ws.iter().map(|&w| u64::from(w)).sum();
            prop_assume!(total > 0);
            let mut counts = vec![0u64; ws.len()];
            for r in 0..total {
                counts[pick(&ws, u64::from(offset) * total + r).unwrap()] += 1;
            }
            let expected: Vec<u64> = ws.iter().map(|&w| u64::from(w)).collect();
            prop_assert_eq!(counts, expected);
        }
    }
}
