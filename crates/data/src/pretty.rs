//! Show what the model is trained on: tokens with their label mask.

use tokenizers::Tokenizer;

use crate::encode::{Example, IGNORE_INDEX};

/// One line per token: position, id, `T` when trained (`.` otherwise) and the token text
/// (escaped with Rust's `{:?}`).
///
/// ```text
///    0    1 . "<|im_start|>"
///   44  604 T "Tokyo"
/// ```
pub fn show_labels(tokenizer: &Tokenizer, ex: &Example) -> String {
    let mut out = String::new();
    for (i, (&id, &label)) in ex.input_ids.iter().zip(&ex.labels).enumerate() {
        let text = tokenizer
            .decode(&[id], false)
            .unwrap_or_else(|_| format!("<id {id}>"));
        let mark = if label == IGNORE_INDEX { '.' } else { 'T' };
        out.push_str(&format!("{i:>5} {id:>6} {mark} {text:?}\n"));
    }
    out
}

/// The decoded text with each trained run wrapped in `[[` … `]]`.
pub fn show_trained_text(tokenizer: &Tokenizer, ex: &Example) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < ex.input_ids.len() {
        let trained = ex.labels[i] != IGNORE_INDEX;
        let start = i;
        while i < ex.input_ids.len() && (ex.labels[i] != IGNORE_INDEX) == trained {
            i += 1;
        }
        let text = tokenizer
            .decode(&ex.input_ids[start..i], false)
            .unwrap_or_default();
        if trained {
            out.push_str("[[");
            out.push_str(&text);
            out.push_str("]]");
        } else {
            out.push_str(&text);
        }
    }
    out
}
