use super::*;

fn held(v: &Values) -> Vec<u32> {
    v.offsets().iter().map(|d| d.to_bits()).collect()
}

/// Whatever is pushed, the ring reads back exactly the single precision floats pushed.
#[test]
fn the_ring_reads_back_exactly_what_was_pushed_and_codes_quantised_values() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(7);
    for case in 0..200 {
        let (mut ring, mut plain) = (Values::default(), VecDeque::new());
        let step = [1.0, 0.01, 0.5, 250.0, 1e-4][case % 5];
        for i in 0..700 {
            let x: f64 = match case % 4 {
                0 => f64::from(rng.random_range(-1000..1000)) * step,
                1 => rng.random_range(-1.0..1.0),
                2 if i == 400 => 0.123_456_7,
                _ => f64::from(rng.random_range(0..20)) * step,
            };
            let d = x as f32;
            ring.push(d, 264);
            push_bounded(&mut plain, d, 264);
            assert_eq!(held(&ring), plain.iter().map(|d| d.to_bits()).collect::<Vec<_>>(), "case {case} at {i}");
            assert_eq!(ring.back(), plain.back().copied());
        }
        for range in [100..200, 0..264, 1..263, 7..9, 13..13, 250..264] {
            let mut out = vec![1.0];
            ring.extend_into(range.clone(), 5.0, &mut out);
            let expect: Vec<f64> = std::iter::once(1.0).chain(plain.range(range.clone()).map(|d| 5.0 + f64::from(*d))).collect();
            assert_eq!(out, expect, "case {case}, {range:?}, {} bits", ring.width);
        }
        match case % 4 {
            0 | 3 => assert!(ring.is_coded() && ring.heap_bytes() <= bytes_for(264, 16), "case {case}: {ring:?}"),
            _ => assert!(!ring.is_coded() && ring.heap_bytes() == bytes_for(264, 32), "case {case}"),
        }
    }
}

/// A ring of any size and slot width holds no byte beyond its slots' (at least eight), and
/// reads back every range of its values, the last slots' included, and writes them without
/// touching their neighbours.
#[test]
fn every_width_and_size_reads_and_writes_its_last_slots_within_the_block() {
    for cap in (1..=20).chain([31, 63, 64, 65, 100, 264]) {
        // Codes spanning 2^w - 1 steps of 0.5 take w bits; a value that no unit codes, floats.
        for w in (1..=15u32).chain([32]) {
            let (mut ring, mut plain) = (Values::default(), VecDeque::new());
            let mut x = u64::from(w) * 977 + cap as u64;
            for i in 0..3 * cap + 5 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let top = (1u64 << w.min(15)) - 1;
                let k = match i % 7 {
                    0 => 0,
                    1 => top,
                    _ => (x >> 33) % (top + 1),
                };
                let d = if w == 32 { (x >> 40) as f32 * 1e-3 + 0.123_456_7 } else { k as f32 * 0.5 };
                ring.push(d, cap);
                push_bounded(&mut plain, d, cap);
                assert_eq!(held(&ring), plain.iter().map(|d| d.to_bits()).collect::<Vec<_>>(), "cap {cap}, {w} bits, value {i}");
            }
            if cap >= 64 {
                // The last turn holds a 0 and the top code: the ring takes all `w` bits.
                assert_eq!(u32::from(ring.width), w, "cap {cap}: {ring:?}");
            }
            let width = usize::from(ring.width);
            assert_eq!(ring.heap_bytes(), if width == 0 { 0 } else { (cap * width).div_ceil(8).max(8) }, "cap {cap}, {w} bits");
            for start in 0..=cap {
                for end in [start, (start + 1).min(cap), (start + 9).min(cap), cap] {
                    let mut out = vec![1.0];
                    ring.extend_into(start..end, 5.0, &mut out);
                    let expect: Vec<f64> = std::iter::once(1.0).chain(plain.range(start..end).map(|d| 5.0 + f64::from(*d))).collect();
                    assert_eq!(out, expect, "cap {cap}, {w} bits, {start}..{end}");
                }
            }
        }
    }
}

/// Every range of a ring that wraps, and of one that does not, comes back as the elements
/// at those positions, in order.
#[test]
fn the_slices_of_a_range_hold_its_elements_in_order() {
    let mut wrapped: VecDeque<u32> = VecDeque::with_capacity(8);
    for x in 0..13 {
        push_bounded(&mut wrapped, x, 8);
    }
    assert!(!wrapped.as_slices().1.is_empty(), "the test ring wraps");
    let straight: VecDeque<u32> = (5..13).collect();
    for q in [&wrapped, &straight] {
        for start in 0..=8 {
            for end in start..=8 {
                let (a, b) = slices(q, start..end);
                let got: Vec<u32> = a.iter().chain(b).copied().collect();
                assert_eq!(got, q.range(start..end).copied().collect::<Vec<_>>(), "{start}..{end}");
            }
        }
    }
}

/// A ring takes the bits its codes span: 1,000 steps of 0.01 take 10 bits a value, a spike
/// widens it while the spike is held, and a full turn after it the ring is back to 10 bits.
#[test]
fn a_ring_takes_the_bits_its_values_span_and_narrows_once_a_spike_has_left() {
    let mut ring = Values::default();
    ring.reserve(264);
    let mut x = 1u64;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (((x >> 33) % 1000) as f64 * 0.01) as f32
    };
    for _ in 0..600 {
        ring.push(next(), 264);
    }
    assert!(ring.is_coded());
    assert_eq!(ring.width, 10, "{ring:?}");
    assert_eq!(ring.heap_bytes(), (264 * 10usize).div_ceil(8), "no byte beyond the slots'");
    ring.push(300.0, 264);
    assert_eq!(ring.width, 15, "a spike of 300 is 30,000 steps");
    let mut plain: VecDeque<f32> = ring.offsets().into();
    for _ in 0..300 {
        let d = next();
        ring.push(d, 264);
        push_bounded(&mut plain, d, 264);
        assert_eq!(held(&ring), plain.iter().map(|d| d.to_bits()).collect::<Vec<_>>());
    }
    assert_eq!(ring.width, 10, "a turn after the spike left");
    // Equal values take no bits at all.
    let mut flat = Values::default();
    for _ in 0..300 {
        flat.push(42.5, 264);
    }
    assert_eq!((flat.heap_bytes(), flat.back(), flat.len()), (0, Some(42.5), 264));
}

/// A series' first values find their quantum (0, then 3.5, then 0.25 away from the anchor)
/// in the block of 16-bit slots allocated when the series arrived: recoding while the ring
/// fills allocates nothing. Once full, the ring takes the block its codes need.
#[test]
fn a_filling_ring_is_recoded_in_its_own_block_and_fitted_once_full() {
    let mut ring = Values::default();
    ring.reserve(264);
    let block = ring.bytes.as_ptr();
    assert_eq!(ring.heap_bytes(), bytes_for(264, 16));
    let mut quanta = Vec::new();
    for d in [0.0f32, 3.5, 0.25, 7.0] {
        ring.push(d, 264);
        assert_eq!(ring.bytes.as_ptr(), block, "the ring was reallocated at {d}");
        quanta.push(QUANTA[usize::from(ring.quantum)]);
    }
    assert_eq!(quanta, [1e6, 5e-1, 2.5e-1, 2.5e-1], "a finer quantum twice");
    assert_eq!(held(&ring), [0.0f32, 3.5, 0.25, 7.0].map(f32::to_bits));
    for i in 4..264 {
        ring.push((i % 29) as f32 * 0.25, 264);
    }
    // 0 to 28 quarters: 5 bits a value.
    assert_eq!((ring.width, ring.heap_bytes()), (5, bytes_for(264, 5)));
}

/// A checkpoint holds the ring as its values in order, in the encoding of the 16-bit ring
/// before it, and reads back the same values.
#[test]
fn a_ring_is_encoded_as_its_values_in_order() {
    let mut ring = Values::default();
    for i in 0..300 {
        ring.push(f64::from(i % 37).mul_add(0.25, -3.0) as f32, 264);
    }
    let json = serde_json::to_value(&ring).expect("encodes");
    // Quarters: codes in units of QUANTA[38], 0.25.
    let codes: Vec<i64> = (36..300).map(|i| i64::from(i % 37 - 12)).collect();
    assert_eq!(json, serde_json::json!({"Coded": {"quantum": 38, "codes": codes}}));
    let back: Values = postcard::from_bytes(&postcard::to_stdvec(&ring).expect("encodes")).expect("decodes");
    assert_eq!(held(&back), held(&ring));
    let mut floats = Values::default();
    for i in 0..10 {
        floats.push(0.1 + i as f32 / 3.0, 264);
    }
    assert!(!floats.is_coded());
    let json = serde_json::to_value(&floats).expect("encodes");
    assert_eq!(json["Floats"].as_array().map(Vec::len), Some(10));
    let back: Values = postcard::from_bytes(&postcard::to_stdvec(&floats).expect("encodes")).expect("decodes");
    assert_eq!(held(&back), held(&floats));
}

#[test]
fn a_new_anchor_recodes_the_offsets_exactly() {
    let mut ring = Values::default();
    for i in 0..300 {
        ring.push((f64::from(i % 37) * 0.25) as f32, 264);
    }
    let before = ring.offsets();
    ring.remap(|d| (2.0 + f64::from(d) - 7.5) as f32);
    let expect: Vec<u32> = before.iter().map(|d| ((2.0 + f64::from(*d) - 7.5) as f32).to_bits()).collect();
    assert_eq!(held(&ring), expect);
    assert!(ring.is_coded());
    assert_eq!(ring.len(), 264);
}
