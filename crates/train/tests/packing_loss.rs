//! Packed training rows give the same loss as the same examples padded one per row: the data
//! crate's packer (segment and position ids) and the model's segment masking agree.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use kiln_data::{Batch as DataBatch, Example, IGNORE_INDEX, PackStrategy, Padding, pack};
use kiln_models::causal_lm_loss_sum;
use kiln_train::Batch;

fn examples() -> Vec<Example> {
    (0..5usize)
        .map(|e| {
            let len = 5 + 3 * e;
            let input_ids: Vec<u32> = (0..len)
                .map(|i| ((e * 53 + i * 17) % 400 + 7) as u32)
                .collect();
            // A prompt of e+1 tokens that does not count, then the completion.
            let labels = input_ids
                .iter()
                .enumerate()
                .map(|(i, &id)| if i <= e { IGNORE_INDEX } else { i64::from(id) })
                .collect();
            Example { input_ids, labels }
        })
        .collect()
}

fn loss(model: &kiln_models::CausalLm, batch: &Batch) -> (f64, usize) {
    let logits = model.forward(&batch.input).unwrap();
    let out = causal_lm_loss_sum(logits, &batch.labels).unwrap();
    (f64::from(out.sum.into_scalar::<f32>()), out.tokens)
}

#[test]
fn packed_loss_equals_unpacked_loss() {
    let model = tiny_model();
    let ex = examples();
    let padded = DataBatch::from_examples(&ex, 0, Padding::Right, None).unwrap();
    let rows = pack(&ex, 32, 0, PackStrategy::Greedy).unwrap();
    assert!(
        rows.len() < ex.len(),
        "{} rows: nothing was packed",
        rows.len()
    );
    let packed = DataBatch::from_packed(&rows).unwrap();
    assert_eq!(packed.trained_tokens(), padded.trained_tokens());
    let (sum_a, n_a) = loss(&model, &Batch::from_data(&padded).unwrap());
    let (sum_b, n_b) = loss(&model, &Batch::from_data(&packed).unwrap());
    assert_eq!(n_a, n_b);
    let (mean_a, mean_b) = (sum_a / n_a as f64, sum_b / n_b as f64);
    assert!(
        (mean_a - mean_b).abs() < 1e-5,
        "padded {mean_a} vs packed {mean_b}"
    );
    // Without the segment ids the rows attend across examples and the loss changes.
    let mut leaky = packed.clone();
    leaky.segment_ids = None;
    leaky.position_ids = (0..leaky.input_ids.len() as i64).map(|i| i % 32).collect();
    leaky.attention_mask.iter_mut().for_each(|m| *m = 1);
    let (sum_c, n_c) = loss(&model, &Batch::from_data(&leaky).unwrap());
    assert!((sum_c / n_c as f64 - mean_a).abs() > 1e-3);
}

#[test]
fn out_of_range_ids_are_an_error() {
    let mut b = DataBatch::from_examples(&examples()[..1], 0, Padding::Right, None).unwrap();
    b.input_ids[2] = -5;
    let err = Batch::from_data(&b).unwrap_err().to_string();
    assert!(err.contains("input_ids[2] = -5"), "{err}");
}
