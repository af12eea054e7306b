//! Packing, batching, splitting and shuffling invariants.
#![allow(clippy::unwrap_used)]

use kiln_data::{
    Batch, Example, GreedyPacker, IGNORE_INDEX, PackStrategy, Padding, ShuffleBuffer, SplitSize,
    dedup_by_key, length_grouped_batches, pack, train_val_split,
};

fn ex(len: usize, base: u32) -> Example {
    let input_ids: Vec<u32> = (0..len as u32).map(|i| base + i).collect();
    let labels = input_ids
        .iter()
        .enumerate()
        .map(|(i, &x)| if i == 0 { IGNORE_INDEX } else { i64::from(x) })
        .collect();
    Example { input_ids, labels }
}

#[test]
fn greedy_packing_restarts_positions_and_numbers_segments() {
    let exs = [ex(3, 10), ex(2, 20), ex(4, 30), ex(1, 40)];
    let rows = pack(&exs, 6, 0, PackStrategy::Greedy).expect("pack");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].input_ids, vec![10, 11, 12, 20, 21, 0]);
    assert_eq!(rows[0].position_ids, vec![0, 1, 2, 0, 1, 0]);
    assert_eq!(rows[0].segment_ids, vec![1, 1, 1, 2, 2, 0]);
    assert_eq!(
        rows[0].labels,
        vec![IGNORE_INDEX, 11, 12, IGNORE_INDEX, 21, IGNORE_INDEX]
    );
    assert_eq!(rows[1].input_ids, vec![30, 31, 32, 33, 40, 0]);
    assert_eq!(rows[1].segment_ids, vec![1, 1, 1, 1, 2, 0]);
    assert_eq!((rows[1].used(), rows[1].examples()), (5, 2));
    let mut p = GreedyPacker::new(6, 0).expect("packer");
    assert!(
        p.push(&ex(7, 0)).is_err(),
        "an example longer than the row is an error"
    );
    assert!(GreedyPacker::new(0, 0).is_err());
}

#[test]
fn best_fit_uses_fewer_rows_and_keeps_every_token() {
    let lens = [5, 4, 3, 3, 2, 2, 1];
    let exs: Vec<Example> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| ex(l, 100 * i as u32))
        .collect();
    let greedy = pack(&exs, 7, 0, PackStrategy::Greedy).expect("greedy");
    let best = pack(&exs, 7, 0, PackStrategy::BestFit).expect("best");
    assert_eq!(greedy.len(), 4);
    assert_eq!(best.len(), 3);
    for rows in [&greedy, &best] {
        let mut tokens: Vec<u32> = rows
            .iter()
            .flat_map(|r| {
                r.input_ids
                    .iter()
                    .zip(&r.segment_ids)
                    .filter(|(_, s)| **s != 0)
                    .map(|(t, _)| *t)
            })
            .collect();
        tokens.sort_unstable();
        let mut want: Vec<u32> = exs.iter().flat_map(|e| e.input_ids.clone()).collect();
        want.sort_unstable();
        assert_eq!(tokens, want);
        for r in rows.iter() {
            // positions restart at every segment start
            for i in 0..r.segment_ids.len() {
                if r.segment_ids[i] != 0 && (i == 0 || r.segment_ids[i - 1] != r.segment_ids[i]) {
                    assert_eq!(r.position_ids[i], 0);
                }
            }
        }
    }
}

#[test]
fn batches_pad_right_or_left_with_masks() {
    let exs = [ex(3, 10), ex(1, 20)];
    let b = Batch::from_examples(&exs, 0, Padding::Right, Some(4)).expect("batch");
    assert_eq!(b.shape(), [2, 4]);
    assert_eq!(b.input_ids, vec![10, 11, 12, 0, 20, 0, 0, 0]);
    assert_eq!(b.attention_mask, vec![1, 1, 1, 0, 1, 0, 0, 0]);
    assert_eq!(b.labels, vec![-100, 11, 12, -100, -100, -100, -100, -100]);
    assert_eq!(b.position_ids, vec![0, 1, 2, 0, 0, 0, 0, 0]);
    assert_eq!(b.trained_tokens(), 2);
    let l = Batch::from_examples(&exs, 0, Padding::Left, None).expect("batch");
    assert_eq!(l.input_ids, vec![10, 11, 12, 0, 0, 20]);
    assert_eq!(l.attention_mask, vec![1, 1, 1, 0, 0, 1]);
    assert_eq!(l.position_ids, vec![0, 1, 2, 0, 0, 0]);
    assert!(Batch::from_examples(&[], 0, Padding::Right, None).is_err());
    let rows = pack(&exs, 5, 0, PackStrategy::Greedy).expect("pack");
    let p = Batch::from_packed(&rows).expect("packed");
    assert_eq!(p.segment_ids, Some(vec![1, 1, 1, 2, 0]));
    assert_eq!(p.attention_mask, vec![1, 1, 1, 1, 0]);
    assert_eq!(p.position_ids, vec![0, 1, 2, 0, 0]);
}

#[test]
fn split_is_deterministic_and_complete() {
    let items: Vec<u32> = (0..100).collect();
    let (t1, v1) = train_val_split(items.clone(), SplitSize::Ratio(0.1), 7).expect("split");
    let (t2, v2) = train_val_split(items.clone(), SplitSize::Ratio(0.1), 7).expect("split");
    let (_, v3) = train_val_split(items.clone(), SplitSize::Ratio(0.1), 8).expect("split");
    assert_eq!((t1.len(), v1.len()), (90, 10));
    assert_eq!((&t1, &v1), (&t2, &v2));
    assert_ne!(v1, v3, "another seed gives another split");
    let mut all: Vec<u32> = t1.into_iter().chain(v1).collect();
    all.sort_unstable();
    assert_eq!(all, items);
    assert_eq!(
        train_val_split(items.clone(), SplitSize::Count(3), 1)
            .expect("count")
            .1
            .len(),
        3
    );
    assert!(train_val_split(items.clone(), SplitSize::Ratio(1.5), 1).is_err());
    assert!(train_val_split(items, SplitSize::Count(100), 1).is_err());
}

#[test]
fn shuffle_buffer_dedup_and_length_groups() {
    let out: Vec<u32> = ShuffleBuffer::new(0..50u32, 8, 3).collect();
    let again: Vec<u32> = ShuffleBuffer::new(0..50u32, 8, 3).collect();
    assert_eq!(out, again);
    assert_ne!(out, (0..50).collect::<Vec<_>>());
    let mut sorted = out.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    let (kept, removed) = dedup_by_key(vec!["a", "b", "a", "c", "b"], |s| *s);
    assert_eq!((kept, removed), (vec!["a", "b", "c"], 2));
    let lens: Vec<usize> = (0..40).map(|i| (i * 37) % 100).collect();
    let batches = length_grouped_batches(&lens, 4, 1);
    assert_eq!(batches.len(), 10);
    let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..40).collect::<Vec<_>>());
    for b in &batches {
        assert!(
            b.windows(2).all(|w| lens[w[0]] >= lens[w[1]]),
            "sorted within a batch"
        );
    }
}
