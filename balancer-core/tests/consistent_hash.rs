//! Consistent hashing with bounded load: keys stay put, move as little as they must, come back
//! after a drain, and no backend ever takes more than its bound.

use std::collections::HashMap;

use balancer_core::{
    BackendId, Decision, Outcome, PolicyKind, RequestId, RequestInfo, Scheduler, SchedulerConfig,
    Timestamp, hash_key,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn ring(load_factor: Option<f64>, weights: &[u32]) -> (Scheduler, Vec<BackendId>) {
    let mut config = SchedulerConfig::new(PolicyKind::ConsistentHash);
    config.hash_load_factor = load_factor;
    let mut s = Scheduler::new(config);
    let ids = weights
        .iter()
        .map(|&w| s.add_backend(Timestamp::ZERO, w).unwrap())
        .collect();
    (s, ids)
}

fn keyed(key: u64) -> RequestInfo {
    RequestInfo {
        hash_key: Some(hash_key(&key.to_le_bytes())),
        ..RequestInfo::default()
    }
}

/// Where each key goes with nothing in flight (each request done before the next).
fn placement(s: &mut Scheduler, keys: u64) -> HashMap<u64, BackendId> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    (0..keys)
        .map(|key| {
            let Decision::Dispatch { request, backend } =
                s.handle_work(Timestamp::ZERO, &mut rng, keyed(key), None)
            else {
                panic!("no backend for key {key}");
            };
            s.handle_done(Timestamp::ZERO, request, Outcome::Success, &mut rng)
                .unwrap();
            (key, backend)
        })
        .collect()
}

#[test]
fn removing_one_of_ten_moves_only_its_keys_about_a_tenth() {
    const KEYS: u64 = 20_000;
    let (mut s, ids) = ring(Some(1.25), &[1; 10]);
    let before = placement(&mut s, KEYS);
    let removed = ids[3];
    s.remove_backend(removed).unwrap();
    let after = placement(&mut s, KEYS);
    let mut moved = 0;
    for key in 0..KEYS {
        if before[&key] == removed {
            moved += 1;
        } else {
            assert_eq!(
                before[&key], after[&key],
                "key {key} moved off a backend that stayed"
            );
        }
    }
    let fraction = f64::from(moved) / KEYS as f64;
    // 100 points per backend: each owns 1/10 within about ±3 % of the keys.
    assert!((0.07..0.13).contains(&fraction), "moved {fraction}");
}

#[test]
fn a_drained_backend_s_keys_come_back_after_undrain() {
    const KEYS: u64 = 5_000;
    let (mut s, ids) = ring(Some(1.25), &[1; 5]);
    let before = placement(&mut s, KEYS);
    s.drain(ids[2]).unwrap();
    let during = placement(&mut s, KEYS);
    for key in 0..KEYS {
        assert_ne!(during[&key], ids[2], "a drained backend took key {key}");
        if before[&key] != ids[2] {
            assert_eq!(before[&key], during[&key], "key {key} moved without cause");
        }
    }
    s.undrain(ids[2]).unwrap();
    assert_eq!(placement(&mut s, KEYS), before);
}

#[test]
fn weights_share_the_keys_in_proportion() {
    const KEYS: u64 = 30_000;
    let (mut s, ids) = ring(None, &[1, 2, 3]);
    let placed = placement(&mut s, KEYS);
    for (id, weight) in ids.iter().zip([1.0, 2.0, 3.0]) {
        let share = placed.values().filter(|b| *b == id).count() as f64 / KEYS as f64;
        let expected = weight / 6.0;
        assert!(
            (share - expected).abs() < 0.05,
            "weight {weight}: share {share}, expected {expected}"
        );
    }
}

#[test]
fn a_hot_key_spills_to_the_next_backend_at_its_bound() {
    let (mut s, ids) = ring(Some(1.0), &[1; 4]);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut chosen = Vec::new();
    // 8 requests of one key, none finishing: the bound is ⌈(in flight + 1) ÷ 4⌉.
    for _ in 0..8 {
        let Decision::Dispatch { backend, .. } =
            s.handle_work(Timestamp::ZERO, &mut rng, keyed(7), None)
        else {
            panic!("rejected");
        };
        chosen.push(backend);
    }
    let owner = chosen[0];
    assert!(ids.contains(&owner));
    let on_owner = chosen.iter().filter(|b| **b == owner).count();
    assert_eq!(
        on_owner, 2,
        "the owner took its bound and no more: {chosen:?}"
    );
    let spread: std::collections::HashSet<_> = chosen.iter().collect();
    assert_eq!(spread.len(), 4, "the spill walked the ring: {chosen:?}");
}

#[test]
fn without_a_key_the_policy_is_p2c() {
    let (mut s, _) = ring(Some(1.25), &[1; 4]);
    let (mut p2c, _) = {
        let mut s = Scheduler::new(SchedulerConfig::new(PolicyKind::P2c));
        let ids: Vec<_> = (0..4)
            .map(|_| s.add_backend(Timestamp::ZERO, 1).unwrap())
            .collect();
        (s, ids)
    };
    let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(3), ChaCha8Rng::seed_from_u64(3));
    for _ in 0..200 {
        let x = s.handle_work(Timestamp::ZERO, &mut a, RequestInfo::default(), None);
        let y = p2c.handle_work(Timestamp::ZERO, &mut b, RequestInfo::default(), None);
        assert_eq!(x, y);
    }
}

proptest! {
    /// At every dispatch the chosen backend stays within ⌈c × in flight × w ÷ W⌉ (W: the
    /// eligible weight), whatever the keys, weights, drains and finishing order.
    #[test]
    fn no_backend_exceeds_its_bound(
        seed in any::<u64>(),
        weights in prop::collection::vec(1u32..4, 1..12),
        factor_tenths in 10u32..30,
        keys in 1u64..50,
        steps in prop::collection::vec((0u8..10, any::<u64>()), 1..400),
    ) {
        let factor = f64::from(factor_tenths) / 10.0;
        let (mut s, ids) = ring(Some(factor), &weights);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut in_flight: Vec<RequestId> = Vec::new();
        for (i, (action, draw)) in steps.into_iter().enumerate() {
            let now = Timestamp::from_nanos(i as u64 * 1_000);
            match action {
                0..=5 => {
                    let decision = s.handle_work(now, &mut rng, keyed(draw % keys), None);
                    if let Decision::Dispatch { request, backend } = decision {
                        in_flight.push(request);
                        let eligible_weight: u64 = s
                            .backends(now)
                            .filter(|b| b.eligible || b.id == backend)
                            .map(|b| u64::from(b.weight))
                            .sum();
                        let chosen = s.backends(now).find(|b| b.id == backend).unwrap();
                        let bound = (factor * f64::from(s.in_flight()) * f64::from(chosen.weight)
                            / eligible_weight as f64)
                            .ceil() as u32;
                        prop_assert!(
                            chosen.pending <= bound.max(1),
                            "{} pending over a bound of {bound}", chosen.pending
                        );
                    }
                }
                6..=8 if !in_flight.is_empty() => {
                    let r = in_flight.swap_remove((draw as usize) % in_flight.len());
                    s.handle_done(now, r, Outcome::Success, &mut rng).unwrap();
                }
                9 => {
                    let id = ids[(draw as usize) % ids.len()];
                    if draw % 2 == 0 { let _ = s.drain(id); } else { let _ = s.undrain(id); }
                }
                _ => {}
            }
            prop_assert!(s.check_invariants().is_ok(), "{:?}", s.check_invariants());
        }
    }
}

#[test]
fn the_record_names_the_owner_and_the_spill_never_the_key() {
    let (mut s, _) = ring(Some(1.0), &[1; 4]);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut sentences = Vec::new();
    for _ in 0..3 {
        let mut record = balancer_core::DecisionRecord::empty(Timestamp::ZERO, s.policy());
        let decision = s.handle_work(Timestamp::ZERO, &mut rng, keyed(7), Some(&mut record));
        assert!(matches!(decision, Decision::Dispatch { .. }));
        let hash = record
            .hash
            .expect("a keyed request records the ring's part");
        assert_eq!(hash.key_hash, hash_key(&7u64.to_le_bytes()));
        sentences.push(record.to_string());
    }
    let key = format!("key {:016x}", hash_key(&7u64.to_le_bytes()));
    assert!(
        sentences[0].starts_with(&format!("consistent-hash: {key} is owned by b")),
        "{sentences:?}"
    );
    assert!(
        sentences[0].contains("chosen (under its cap of 1)"),
        "{sentences:?}"
    );
    // The owner is at its bound of 1 with one in flight: the next request walks on.
    assert!(sentences[1].contains("passed over"), "{sentences:?}");

    let mut record = balancer_core::DecisionRecord::empty(Timestamp::ZERO, s.policy());
    let decision = s.handle_work(
        Timestamp::ZERO,
        &mut rng,
        RequestInfo::default(),
        Some(&mut record),
    );
    assert!(matches!(decision, Decision::Dispatch { .. }));
    assert!(record.hash.is_none());
    assert!(
        record
            .to_string()
            .starts_with("consistent-hash: no key, so p2c drew"),
        "{record}"
    );
}
