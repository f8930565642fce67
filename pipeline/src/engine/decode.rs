//! JSON points decoded in slices on the pool's threads and the loop's own, which puts the
//! slices already decoded into their windows meanwhile (see [`decode_in_order`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vigil_ingest::{DecodedBatch, JsonPointDecoder, RawRecord};

use super::EngineError;

/// A slice of a poll with the decoder lent to decode it, until a thread claims both.
type Slot<'d, 'r> = Mutex<Option<(&'d mut JsonPointDecoder, &'r [RawRecord])>>;

/// The fewest records in a slice: below it, a poll is decoded in one piece on the calling thread.
const MIN_SLICE: usize = 2048;

/// Slices per core of a large poll: the loop's thread takes the first slices' points into their
/// windows while the pool decodes the later ones, so that work is not left waiting for the
/// whole poll to decode.
pub(super) const SLICES_PER_CORE: usize = 2;

/// How many slices a poll of `records` is decoded in, with `decoders` decoders.
fn slices(decoders: usize, records: usize) -> usize {
    decoders.min(records / MIN_SLICE).max(1)
}

/// Decodes `raw` in `slices(decoders.len(), raw.len())` contiguous slices, all at once, on the
/// pool; the slices' results in input order.
pub(super) fn decode_all(decoders: &mut [JsonPointDecoder], raw: &[RawRecord]) -> vigil_ingest::Result<Vec<DecodedBatch>> {
    use rayon::prelude::*;
    let k = slices(decoders.len(), raw.len());
    if k <= 1 {
        return Ok(vec![decoders[0].decode(raw)?]);
    }
    let size = raw.len().div_ceil(k);
    decoders[..k].par_iter_mut().zip(raw.par_chunks(size)).map(|(d, r)| d.decode(r)).collect()
}

/// Decodes `raw` in the slices [`decode_all`] cuts and hands each slice's result to `each`, in
/// input order, on the calling thread, as soon as it and the slices before it are decoded.
/// Returns the time the calling thread spent decoding slices itself or waiting for them.
///
/// The calling thread decodes too: the pool's threads and it claim the slices in input order,
/// one at a time, and the calling thread claims one when the next slice to hand over is not
/// decoded yet, slices are left and no pool thread is decoding. So a poll starts decoding at
/// once on a thread that is awake (a pool's thread that has gone to sleep between two polls
/// takes a fraction of a millisecond to wake), and once the pool's threads are at it, they
/// decode the later slices while the calling thread takes the earlier ones into their windows.
///
/// A decode error stops the hand-over at that slice (the slices before it have been handed
/// over), as does an error from `each`; no slice is claimed after that, and those being decoded
/// are waited for. Called from one of the pool's own threads, which must not block on the pool,
/// it decodes every slice first and then hands them over.
pub(super) fn decode_in_order(
    decoders: &mut [JsonPointDecoder],
    raw: &[RawRecord],
    mut each: impl FnMut(DecodedBatch) -> Result<(), EngineError>,
) -> Result<Duration, EngineError> {
    let k = slices(decoders.len(), raw.len());
    if k == 1 || rayon::current_thread_index().is_some() {
        let t = Instant::now();
        let decoded = decode_all(decoders, raw)?;
        let waited = t.elapsed();
        for d in decoded {
            each(d)?;
        }
        return Ok(waited);
    }
    let size = raw.len().div_ceil(k);
    let slots: Vec<Slot<'_, '_>> =
        decoders.iter_mut().zip(raw.chunks(size)).map(|slice| Mutex::new(Some(slice))).collect();
    let n = slots.len();
    let next = AtomicUsize::new(0);
    // Pool threads between claiming a slice and sending it decoded.
    let decoding = AtomicUsize::new(0);
    // Decodes the next slice no thread has claimed, if any is left.
    let claim = || -> Option<(usize, vigil_ingest::Result<DecodedBatch>)> {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let (d, r) = slots.get(i)?.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        Some((i, d.decode(r)))
    };
    let helpers = rayon::current_num_threads().min(n - 1);
    let (tx, rx) = std::sync::mpsc::channel();
    rayon::in_place_scope(|s| {
        for _ in 0..helpers {
            let (tx, claim, decoding) = (tx.clone(), &claim, &decoding);
            s.spawn(move |_| loop {
                decoding.fetch_add(1, Ordering::SeqCst);
                // The receiver is gone only once the hand-over has stopped.
                let more = claim().is_some_and(|done| tx.send(done).is_ok());
                decoding.fetch_sub(1, Ordering::SeqCst);
                if !more {
                    break;
                }
            });
        }
        drop(tx);
        let mut ready: Vec<Option<vigil_ingest::Result<DecodedBatch>>> = (0..n).map(|_| None).collect();
        let mut busy = Duration::ZERO;
        let mut handed = 0;
        let mut run = || -> Result<(), EngineError> {
            while handed < n {
                if let Some(r) = ready[handed].take() {
                    each(r?)?;
                    handed += 1;
                    continue;
                }
                let t = Instant::now();
                // A slice the pool has decoded meanwhile; else, with no pool thread decoding (none
                // awake yet, or all at other work), the next unclaimed slice, decoded here; else
                // the pool's next slice, waited for. (Claiming one while the pool decodes would
                // hold up handing over the slices it finishes meanwhile.)
                let pooled = rx.try_recv().ok();
                let mine = if pooled.is_none() && decoding.load(Ordering::SeqCst) == 0 { claim() } else { None };
                let (i, r) = match pooled.or(mine) {
                    Some(done) => done,
                    // Every helper gone before slice `handed` came: its task panicked, and the
                    // scope passes that panic on once the other tasks are done.
                    None => match rx.recv() {
                        Ok(done) => done,
                        Err(_) => break,
                    },
                };
                busy += t.elapsed();
                ready[i] = Some(r);
            }
            Ok(())
        };
        let res = run();
        // Nothing more is claimed once the hand-over has stopped.
        next.store(n, Ordering::Relaxed);
        res.map(|()| busy)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vigil_ingest::SourcePos;

    use super::*;

    fn poll(n: usize) -> Vec<RawRecord> {
        let topic: Arc<str> = Arc::from("metrics");
        (0..n)
            .map(|i| RawRecord {
                payload: Some(
                    if i % 997 == 3 {
                        b"{not json".to_vec()
                    } else {
                        format!(r#"{{"ts":{},"name":"cpu","labels":{{"host":"h{}"}},"value":{i}}}"#, 1_700_000_000_000i64 + i as i64, i % 50).into_bytes()
                    },
                ),
                key: None,
                pos: SourcePos { topic: topic.clone(), partition: 0, offset: i as i64 },
            })
            .collect()
    }

    #[test]
    fn slices_are_handed_over_in_input_order_with_every_row_and_reject() {
        let raw = poll(20_000);
        let mut decoders: Vec<JsonPointDecoder> = (0..4).map(|_| JsonPointDecoder::default()).collect();
        let mut seen: Vec<(i64, usize, usize)> = Vec::new();
        decode_in_order(&mut decoders, &raw, |d| {
            seen.push((d.positions.first().map_or(-1, |p| p.offset), d.points.num_rows(), d.rejected.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 4, "four slices of 5,000 records");
        let firsts: Vec<i64> = seen.iter().map(|s| s.0).collect();
        let mut sorted = firsts.clone();
        sorted.sort();
        assert_eq!(firsts, sorted, "in input order");
        let rejects = raw.iter().filter(|r| r.payload.as_deref().is_some_and(|p| p.starts_with(b"{not"))).count();
        assert_eq!(seen.iter().map(|s| s.1).sum::<usize>(), 20_000 - rejects);
        assert_eq!(seen.iter().map(|s| s.2).sum::<usize>(), rejects);
    }

    #[test]
    fn an_error_from_the_hand_over_stops_it_at_that_slice() {
        let raw = poll(20_000);
        let mut decoders: Vec<JsonPointDecoder> = (0..4).map(|_| JsonPointDecoder::default()).collect();
        let mut calls = 0;
        let res = decode_in_order(&mut decoders, &raw, |_| {
            calls += 1;
            if calls == 2 {
                return Err(EngineError::StoppedUndelivered("a test's results"));
            }
            Ok(())
        });
        assert!(res.is_err());
        assert_eq!(calls, 2, "no slice handed over after the error");
    }

    #[test]
    fn a_small_poll_is_one_slice() {
        let raw = poll(3_000);
        let mut decoders: Vec<JsonPointDecoder> = (0..4).map(|_| JsonPointDecoder::default()).collect();
        let mut calls = 0;
        decode_in_order(&mut decoders, &raw, |_| {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 1);
    }

    #[test]
    fn the_calling_thread_decodes_and_hands_over_every_slice_while_the_pool_is_busy() {
        // Every pool thread held: the slices must still all be decoded and handed over, by the
        // calling thread. (The call returns once the pool has run its helpers, which then find
        // nothing left to claim.)
        let threads = rayon::current_num_threads();
        let started = Arc::new(std::sync::Barrier::new(threads + 1));
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        for _ in 0..threads {
            let (started, held) = (started.clone(), held.clone());
            rayon::spawn(move || {
                started.wait();
                let _ = held.lock().unwrap().recv();
            });
        }
        started.wait();
        let (slice_tx, slices) = std::sync::mpsc::channel();
        let caller = std::thread::spawn(move || {
            let raw = poll(20_000);
            let mut decoders: Vec<JsonPointDecoder> = (0..4).map(|_| JsonPointDecoder::default()).collect();
            decode_in_order(&mut decoders, &raw, |d| {
                let _ = slice_tx.send((d.positions.first().map_or(-1, |p| p.offset), d.points.num_rows() + d.rejected.len()));
                Ok(())
            })
        });
        let seen: Vec<_> = (0..4).map_while(|_| slices.recv_timeout(Duration::from_secs(60)).ok()).collect();
        // Lets the pool's threads go (each sees the sender gone).
        drop(release);
        caller.join().unwrap().unwrap();
        assert_eq!(seen, vec![(0, 5_000), (5_000, 5_000), (10_000, 5_000), (15_000, 5_000)], "every slice, in input order, with the pool held");
    }
}
