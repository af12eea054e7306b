//! The sentencepiece-style BPE of `tokenizer.ggml.model = llama`, as transformers builds it from
//! a GGUF file: `LlamaTokenizer(vocab, merges)` with merges from the file or, when it has none,
//! recovered from the token scores (`generate_merges` of `tokenization_utils_base.py`); Gemma's
//! (`gemma_tokenizer`) and Phi-3's (`phi3_tokenizer`) variants of it.
use super::file::GgufFile;
use std::cmp::Ordering;
use std::collections::HashMap;
use tokenizers::SplitDelimiterBehavior;
use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};

/// `LlamaTokenizer`'s shape: byte-fallback BPE, `Metaspace` (prepend on the first piece only),
/// and a decoder that turns `▁` back into spaces and strips the leading one.
pub(crate) fn sentencepiece_tokenizer(
    file: &GgufFile,
    tokens: &[&str],
    vocab: &HashMap<String, u32>,
    merges: Option<Merges>,
) -> std::result::Result<Tokenizer, String> {
    let merges = match merges {
        Some(m) => m,
        None => {
            let scores: Vec<f32> = file
                .get_as("tokenizer.ggml.scores")
                .map_err(|e| e.to_string())?
                .ok_or(
                    "no `tokenizer.ggml.merges` and no `tokenizer.ggml.scores` to derive them",
                )?;
            if scores.len() != tokens.len() {
                return Err(format!(
                    "`tokenizer.ggml.scores` has {} entries for {} tokens",
                    scores.len(),
                    tokens.len()
                ));
            }
            merges_from_scores(tokens, &scores, vocab)
        }
    };
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .iter()
                .map(|(k, &v)| (k.clone(), v))
                .collect::<Vocab>(),
            merges,
        )
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| format!("building the BPE model: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, false)));
    let replace = Replace::new("▁", " ").map_err(|e| e.to_string())?;
    let decoders: Vec<DecoderWrapper> = vec![
        replace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', 1, 0).into(),
    ];
    tokenizer.with_decoder(Some(Sequence::new(decoders)));
    Ok(tokenizer)
}

/// Phi-3's shape, as transformers' `phi3_tokenizer` builds it from a GGUF file: the
/// [`sentencepiece_tokenizer`] (same vocabulary, merges, byte fallback and decoder), but the
/// prefix `▁` comes from a normalizer, `Prepend("▁")` then spaces to `▁`, and there is no
/// pre-tokenizer (Phi-3's own `tokenizer.json` shape, which a GGUF does not carry).
///
/// The normalizer runs on every stretch of text between special tokens, so each gets its `▁`
/// (`<|user|>\nHi` → `<|user|>`, `▁`, `<0x0A>`, ...), and a text starting with spaces keeps all
/// of them (`"  hi"` → `▁▁▁hi`, where `Metaspace` gives `▁▁hi`).
pub(crate) fn phi3_tokenizer(
    file: &GgufFile,
    tokens: &[&str],
    vocab: &HashMap<String, u32>,
    merges: Option<Merges>,
) -> std::result::Result<Tokenizer, String> {
    let mut tokenizer = sentencepiece_tokenizer(file, tokens, vocab, merges)?;
    let spaces = Replace::new(" ", "▁").map_err(|e| e.to_string())?;
    tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![
        Prepend::new("▁".into()).into(),
        spaces.into(),
    ])));
    tokenizer.with_pre_tokenizer(None::<PreTokenizerWrapper>);
    Ok(tokenizer)
}

/// Gemma's vocabulary as transformers' `gemma_tokenizer` respells it: a token made only of two
/// or more spaces is stored with real spaces, while `GemmaTokenizer` looks it up as `▁▁`.
pub(crate) fn gemma_respelled(tokens: &[&str]) -> Vec<String> {
    tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.trim().is_empty() {
                "▁".repeat(t.chars().count())
            } else {
                (*t).to_owned()
            }
        })
        .collect()
}

/// `GemmaTokenizer`'s shape, as transformers builds it from a GGUF file: byte-fallback BPE over
/// the respelled vocabulary, merges from the file or recovered with each token's position as its
/// score (Gemma's scores do not follow its merge order), a normalizer turning spaces into `▁`,
/// no prefix space, and a decoder that turns `▁` back into spaces.
pub(crate) fn gemma_tokenizer(
    respelled: &[String],
    vocab: &HashMap<String, u32>,
    merges: Option<Merges>,
) -> std::result::Result<Tokenizer, String> {
    let merges = match merges {
        Some(m) => m,
        None => {
            let tokens: Vec<&str> = respelled.iter().map(String::as_str).collect();
            let positions: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
            merges_from_scores(&tokens, &positions, vocab)
        }
    };
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .iter()
                .map(|(k, &v)| (k.clone(), v))
                .collect::<Vocab>(),
            merges,
        )
        .unk_token("<unk>".into())
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| format!("building the BPE model: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(Replace::new(" ", "▁").map_err(|e| e.to_string())?));
    let split = Split::new(
        SplitPattern::String(" ".into()),
        SplitDelimiterBehavior::MergedWithPrevious,
        false,
    )
    .map_err(|e| e.to_string())?;
    tokenizer.with_pre_tokenizer(Some(split));
    let replace = Replace::new("▁", " ").map_err(|e| e.to_string())?;
    let decoders: Vec<DecoderWrapper> = vec![
        replace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    tokenizer.with_decoder(Some(Sequence::new(decoders)));
    Ok(tokenizer)
}

/// Merges implied by a vocabulary and its scores: every split of a token into two vocabulary
/// tokens, best score first (then shorter left, shorter right), ties in vocabulary order.
///
/// Mirrors transformers' `generate_merges(vocab, vocab_scores)`, including Python's stable sort
/// and its dictionaries (a repeated token keeps its first position and its last score/id).
pub(crate) fn merges_from_scores(
    tokens: &[&str],
    scores: &[f32],
    vocab: &HashMap<String, u32>,
) -> Merges {
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    let mut score_of: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    for (&t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t, s).is_none() {
            order.push(t);
        }
    }
    // (left, right, score, chars in left, chars in right)
    let mut merges: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    for merge in order {
        let score = score_of[merge];
        let start = merges.len();
        for (n_left, (index, _)) in merge.char_indices().enumerate().skip(1) {
            let (l, r) = merge.split_at(index);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                let n_right = merge.chars().count() - n_left;
                merges.push((l, r, score, n_left, n_right));
            }
        }
        merges[start..].sort_by_key(|&(l, r, ..)| (vocab[l], vocab[r]));
    }
    merges.sort_by(|a, b| {
        b.2.partial_cmp(&a.2)
            .unwrap_or(Ordering::Equal)
            .then(b.3.cmp(&a.3))
            .then(b.4.cmp(&a.4))
    });
    merges
        .into_iter()
        .map(|(l, r, ..)| (l.to_owned(), r.to_owned()))
        .collect()
}

/// Token vocabulary as Python's `{token: index}` builds it (a repeated token keeps its last id).
pub(crate) fn plain_vocab(tokens: &[&str]) -> HashMap<String, u32> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| (t.to_owned(), i as u32))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_scores_then_lengths() {
        let tokens = ["a", "b", "c", "ab", "abc", "bc"];
        let scores = [0.0, 0.0, 0.0, -1.0, -0.5, -2.0];
        let vocab = plain_vocab(&tokens);
        let merges = merges_from_scores(&tokens, &scores, &vocab);
        let m: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        // "abc" (-0.5): "ab"+"c" (left 2 chars) before "a"+"bc"; then "ab" (-1), then "bc" (-2).
        assert_eq!(m, vec![("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]);
    }
}
