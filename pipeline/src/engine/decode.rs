//! JSON points decoded in slices on the pool's threads while the loop's own thread puts the
//! slices already decoded into their windows (see [`decode_in_order`]).

use std::time::{Duration, Instant};

use vigil_ingest::{DecodedBatch, JsonPointDecoder, RawRecord};

use super::EngineError;

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

/// Decodes `raw` as [`decode_all`] does and hands each slice's result to `each`, in input order,
/// on the calling thread, as soon as it and the slices before it are decoded: the pool decodes
/// the later slices meanwhile. Returns the time spent waiting for slices to decode.
///
/// A decode error stops the hand-over at that slice (the slices before it have been handed
/// over), as does an error from `each`; the slices still being decoded are waited for. Called
/// from one of the pool's own threads, which must not block on the pool, it decodes every slice
/// first and then hands them over.
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
    let n = raw.len().div_ceil(size);
    let (tx, rx) = std::sync::mpsc::channel();
    rayon::in_place_scope(|s| {
        for (i, (d, r)) in decoders.iter_mut().zip(raw.chunks(size)).enumerate() {
            let tx = tx.clone();
            s.spawn(move |_| {
                // The receiver is gone only once the hand-over has stopped.
                let _ = tx.send((i, d.decode(r)));
            });
        }
        drop(tx);
        let mut ready: Vec<Option<vigil_ingest::Result<DecodedBatch>>> = (0..n).map(|_| None).collect();
        let mut waited = Duration::ZERO;
        let mut next = 0;
        while next < n {
            if let Some(r) = ready[next].take() {
                each(r?)?;
                next += 1;
                continue;
            }
            let t = Instant::now();
            // Every sender gone before slice `next` came: its task panicked, and the scope
            // passes that panic on once the other tasks are done.
            let Ok((i, r)) = rx.recv() else { break };
            waited += t.elapsed();
            ready[i] = Some(r);
        }
        Ok(waited)
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
}
