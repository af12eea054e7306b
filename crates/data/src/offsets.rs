//! Fast exact token offsets for byte-level BPE tokenizers.
//!
//! `Tokenizer::encode` tracks alignments through every normalisation and split step, which is
//! most of its cost. For a byte-level BPE with no normalizer (GPT-2, Llama 3, Qwen, SmolLM...)
//! the tokens' bytes concatenate back to the input, so `encode_fast` (no offsets) plus each
//! token's byte length gives the offsets. Every example is verified byte for byte against the
//! text; on any mismatch (prefix space, post-processor tokens...) the caller falls back to
//! `encode`, so the result is always exact.

use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;

/// Offsets are exact byte ranges; a token that splits a multi-byte character gets only its own
/// bytes (`encode` would widen it to the character), which gives the same overlap with spans
/// that start and end on character boundaries.
///
/// Bytes of every token id, when the tokenizer is byte-level BPE without a normalizer.
#[derive(Debug)]
pub struct TokenBytes {
    bytes: Vec<Vec<u8>>,
}

impl TokenBytes {
    /// `None` unless the tokenizer is a byte-level BPE with no normalizer.
    pub fn new(tokenizer: &Tokenizer) -> Option<Self> {
        if tokenizer.get_normalizer().is_some()
            || !matches!(
                tokenizer.get_pre_tokenizer(),
                Some(PreTokenizerWrapper::ByteLevel(_))
            )
        {
            return None;
        }
        let table = crate::bpe::char_to_byte();
        let added = tokenizer.get_added_tokens_decoder();
        let vocab = tokenizer.get_vocab(true);
        let size = vocab.values().copied().max().map_or(0, |m| m as usize + 1);
        let mut bytes = vec![Vec::new(); size];
        for (token, id) in vocab {
            let b = match added.get(&id) {
                Some(t) => t.content.as_bytes().to_vec(),
                None => token
                    .chars()
                    .map(|c| table.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()?,
            };
            bytes[id as usize] = b;
        }
        Some(Self { bytes })
    }

    /// Byte offsets of `ids` in `text`, or `None` if the tokens do not spell `text` exactly.
    pub fn offsets(&self, ids: &[u32], text: &str) -> Option<Vec<(usize, usize)>> {
        let text = text.as_bytes();
        let mut out = Vec::with_capacity(ids.len());
        let mut pos = 0;
        for &id in ids {
            let b = self.bytes.get(id as usize)?;
            let end = pos + b.len();
            if b.is_empty() || text.get(pos..end)? != b.as_slice() {
                return None;
            }
            out.push((pos, end));
            pos = end;
        }
        (pos == text.len()).then_some(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fast_offsets_equal_encode_offsets() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/chat_templates/tokenizer.json"
        );
        let tok = Tokenizer::from_file(path).expect("tokenizer");
        let fast = TokenBytes::new(&tok).expect("byte-level BPE");
        for text in [
            "<|im_start|>user\nWhich is larger, 北海道 or Iwate?\n<|im_end|>\n",
            "  Hokkaido (83,424.44 km²) is larger.\t\r\n café <|eot_id|><s>",
            "",
        ] {
            let slow = tok.encode(text, false).expect("encode");
            let quick = tok.encode_fast(text, false).expect("encode_fast");
            assert_eq!(quick.get_ids(), slow.get_ids());
            let offsets = fast.offsets(quick.get_ids(), text).expect("exact");
            // `encode` widens a token that splits a UTF-8 character to the whole character;
            // span boundaries are character boundaries, so overlap tests agree either way.
            let widened: Vec<(usize, usize)> = offsets
                .iter()
                .map(|&(s, e)| {
                    let s = (0..=s)
                        .rev()
                        .find(|&i| text.is_char_boundary(i))
                        .unwrap_or(0);
                    let e = (e..=text.len())
                        .find(|&i| text.is_char_boundary(i))
                        .unwrap_or(e);
                    (s, e)
                })
                .collect();
            assert_eq!(widened, slow.get_offsets(), "{text:?}");
        }
        // Tokens that do not spell the text are rejected (the caller falls back).
        let ids = tok.encode_fast("abc", false).expect("ids");
        assert!(fast.offsets(ids.get_ids(), "abd").is_none());
    }
}
