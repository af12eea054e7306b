//! A byte-level BPE encoder that gives `tokenizers`' ids, several times faster.
//!
//! `Tokenizer::encode_fast` builds a `PreTokenizedString`, an `Encoding` with a `String` per
//! token and alignments for every step; with chat data most of its time goes to the allocator.
//! [`ByteLevelBpe`] does the same steps over borrowed bytes for the shapes of byte-level BPE
//! chat models (GPT-2, SmolLM2, Llama 3, Qwen 2 and the tokenizers trained like them):
//! - no normalizer, truncation or padding, `encode_special_tokens` off, added tokens without
//!   `lstrip`/`rstrip`/`single_word`;
//! - pre-tokenizer `ByteLevel` with GPT-2's regex (no prefix space), possibly after `Digits`, or
//!   `Split` with Llama 3's or Qwen 2's regex then `ByteLevel` without regex (`split`);
//! - a `BPE` model without dropout, subword prefix or word suffix; a byte whose character is
//!   not a token is dropped, as `tokenizers` does when there is no unknown token or byte
//!   fallback.
//!
//! Added tokens are split out first (leftmost-longest, the tokens matched on the raw text, then
//! those matched on the normalised text, as `AddedVocabulary` does), the rest is cut into pieces
//! by `split` and each piece is merged by `merge`. A per-thread cache maps pieces already
//! seen to their ids (chat data repeats its words). [`ByteLevelBpe::new`] returns `None` for any
//! other shape, and the caller uses `tokenizers`. Tests (`tests/bpe_equivalence.rs`, kiln-train's
//! `tests/bpe_gguf.rs`) compare ids and offsets with `tokenizers` on the fixture tokenizers and
//! variants of them, SmolLM2's and a tiny GGUF tokenizer, generated chats and adversarial
//! Unicode.

mod cache;
mod classes;
mod merge;
mod split;

use std::collections::HashMap;
use std::sync::Mutex;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use serde_json::Value;
use tokenizers::Tokenizer;
use tokenizers::models::ModelWrapper;

use cache::PieceCache;
use classes::Classes;
use merge::{MergeMap, MergeScratch, merge_piece, pair};
use split::PreTokenizer;

/// Marks a byte whose character is not in the vocabulary.
pub(crate) const NO_TOKEN: u32 = u32::MAX;

/// Added tokens matched on one pass: the automaton and each pattern's id.
struct AddedSplit {
    matcher: AhoCorasick,
    ids: Vec<u32>,
}

impl AddedSplit {
    fn new(tokens: Vec<(String, u32)>) -> Option<Option<Self>> {
        if tokens.is_empty() {
            return Some(None);
        }
        let matcher = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(tokens.iter().map(|(c, _)| c.as_str()))
            .ok()?;
        Some(Some(Self {
            matcher,
            ids: tokens.into_iter().map(|(_, id)| id).collect(),
        }))
    }
}

/// Per-thread buffers and piece cache.
#[derive(Default)]
struct Scratch {
    merge: MergeScratch,
    cache: PieceCache,
    /// (start, end, added token id) of the current text.
    segments: Vec<(usize, usize, Option<u32>)>,
}

/// Byte-level BPE encoding identical to a [`Tokenizer`] of a supported shape.
pub struct ByteLevelBpe {
    classes: &'static Classes,
    pre: PreTokenizer,
    /// Token of each byte's character, [`NO_TOKEN`] when it has none.
    byte_ids: [u32; 256],
    /// Some byte has no token.
    gaps: bool,
    merges: MergeMap,
    /// `ignore_merges`: pieces that are whole tokens (raw bytes → id).
    whole: Option<HashMap<Box<[u8]>, u32, ahash::RandomState>>,
    /// Byte length of every model token.
    token_len: Vec<u32>,
    added_raw: Option<AddedSplit>,
    added_normalized: Option<AddedSplit>,
    scratch: Vec<Mutex<Scratch>>,
}

impl std::fmt::Debug for ByteLevelBpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteLevelBpe")
            .field("pre_tokenizer", &self.pre)
            .field("merges", &self.merges.len())
            .finish()
    }
}

/// GPT-2's byte → character table (`bytes_to_unicode`): how byte-level vocabularies spell
/// bytes.
pub fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

/// GPT-2's byte ↔ printable character table (`bytes_to_unicode`), inverted.
pub(crate) fn char_to_byte() -> HashMap<char, u8> {
    let chars = byte_chars();
    (0..=255u8).map(|b| (chars[usize::from(b)], b)).collect()
}

/// The pre-tokenizer, when supported (from its serialised form, which names every field).
fn pre_tokenizer(tokenizer: &Tokenizer) -> Option<PreTokenizer> {
    let json = serde_json::to_value(tokenizer.get_pre_tokenizer()?).ok()?;
    let byte_level = |v: &Value, regex: bool| {
        v["type"] == "ByteLevel" && v["add_prefix_space"] == false && v["use_regex"] == regex
    };
    if byte_level(&json, true) {
        return Some(PreTokenizer::ByteLevel);
    }
    if json["type"] != "Sequence" {
        return None;
    }
    match json["pretokenizers"].as_array().map(Vec::as_slice)? {
        [digits, bl] if digits["type"] == "Digits" && byte_level(bl, true) => {
            let individual = digits["individual_digits"].as_bool()?;
            Some(PreTokenizer::DigitsThenByteLevel { individual })
        }
        [split, bl]
            if split["type"] == "Split"
                && split["behavior"] == "Isolated"
                && split["invert"] == false
                && byte_level(bl, false) =>
        {
            match split["pattern"]["Regex"].as_str()? {
                split::LLAMA3 => Some(PreTokenizer::Llama3 { max_digits: 3 }),
                split::QWEN2 => Some(PreTokenizer::Llama3 { max_digits: 1 }),
                _ => None,
            }
        }
        _ => None,
    }
}

impl ByteLevelBpe {
    /// `None` unless `tokenizer` has the supported shape (module docs).
    pub fn new(tokenizer: &Tokenizer) -> Option<Self> {
        if tokenizer.get_normalizer().is_some()
            || tokenizer.get_truncation().is_some()
            || tokenizer.get_padding().is_some()
            || tokenizer.get_encode_special_tokens()
        {
            return None;
        }
        let pre = pre_tokenizer(tokenizer)?;
        let ModelWrapper::BPE(bpe) = tokenizer.get_model() else {
            return None;
        };
        let empty = |s: &Option<String>| s.as_deref().is_none_or(str::is_empty);
        if bpe.dropout.is_some_and(|d| d > 0.0)
            || !empty(&bpe.continuing_subword_prefix)
            || !empty(&bpe.end_of_word_suffix)
        {
            return None;
        }
        let model = serde_json::to_value(bpe).ok()?;
        let vocab: HashMap<&str, u32> = model["vocab"]
            .as_object()?
            .iter()
            .map(|(k, v)| Some((k.as_str(), u32::try_from(v.as_u64()?).ok()?)))
            .collect::<Option<_>>()?;

        let chars = byte_chars();
        let char_byte = char_to_byte();
        // A byte whose character is not a token is dropped by `tokenizers` when there is no
        // unknown token and no byte fallback (SmolLM2 lacks 21 of them); other handling of
        // unknown characters is not reproduced.
        let mut byte_ids = [NO_TOKEN; 256];
        for (b, id) in byte_ids.iter_mut().enumerate() {
            if let Some(&v) = vocab.get(chars[b].encode_utf8(&mut [0; 4]) as &str) {
                *id = v;
            }
        }
        let gaps = byte_ids.contains(&NO_TOKEN);
        if gaps && (bpe.unk_token.is_some() || bpe.byte_fallback) {
            return None;
        }
        let size = vocab.values().max().map_or(0, |&m| m as usize + 1);
        let mut token_len = vec![0u32; size];
        let mut whole = HashMap::default();
        for (&token, &id) in &vocab {
            let bytes: Option<Vec<u8>> =
                token.chars().map(|c| char_byte.get(&c).copied()).collect();
            if let Some(bytes) = bytes {
                token_len[id as usize] = bytes.len() as u32;
                if bpe.ignore_merges {
                    whole.insert(bytes.into_boxed_slice(), id);
                }
            }
        }
        let mut merges = MergeMap::default();
        for (rank, m) in model["merges"].as_array()?.iter().enumerate() {
            let (a, b) = match m {
                Value::Array(p) => (p.first()?.as_str()?, p.get(1)?.as_str()?),
                Value::String(s) => s.split_once(' ')?,
                _ => return None,
            };
            let new_id = *vocab.get(format!("{a}{b}").as_str())?;
            let key = pair(*vocab.get(a)?, *vocab.get(b)?);
            merges.insert(key, (u32::try_from(rank).ok()?, new_id));
        }

        let (mut raw, mut normalized) = (Vec::new(), Vec::new());
        for token in tokenizer.get_added_tokens_decoder().values() {
            if token.lstrip || token.rstrip || token.single_word || token.content.is_empty() {
                return None;
            }
            let id = tokenizer.token_to_id(&token.content)?;
            let list = if token.normalized {
                &mut normalized
            } else {
                &mut raw
            };
            list.push((token.content.clone(), id));
        }
        let threads = rayon::current_num_threads() + 1;
        Some(Self {
            classes: Classes::get()?,
            pre,
            byte_ids,
            gaps,
            merges,
            whole: bpe.ignore_merges.then_some(whole),
            token_len,
            added_raw: AddedSplit::new(raw)?,
            added_normalized: AddedSplit::new(normalized)?,
            scratch: (0..threads).map(|_| Mutex::default()).collect(),
        })
    }

    /// Ids of `text` and the byte range of each in `text` (as `Tokenizer::encode_fast(text,
    /// false)`; offsets exact, a token that splits a character gets only its own bytes).
    pub fn encode(&self, text: &str) -> (Vec<u32>, Vec<(usize, usize)>) {
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut offsets = Vec::with_capacity(text.len() / 3);
        let slot = rayon::current_thread_index().unwrap_or(0) % self.scratch.len();
        match self.scratch[slot].try_lock() {
            Ok(mut scratch) => self.encode_into(text, &mut scratch, &mut ids, &mut offsets),
            Err(_) => {
                self.encode_into(text, &mut Scratch::default(), &mut ids, &mut offsets);
            }
        }
        (ids, offsets)
    }

    fn encode_into(
        &self,
        text: &str,
        scratch: &mut Scratch,
        ids: &mut Vec<u32>,
        offsets: &mut Vec<(usize, usize)>,
    ) {
        // Tokens matched on the raw text first; in the gaps, those matched on the normalised text
        // (no normalizer here, so the same text).
        let mut segments = std::mem::take(&mut scratch.segments);
        segments.clear();
        split_added(
            self.added_raw.as_ref(),
            text,
            0,
            text.len(),
            &mut |s, e, id| {
                if id.is_some() {
                    segments.push((s, e, id));
                } else {
                    split_added(
                        self.added_normalized.as_ref(),
                        text,
                        s,
                        e,
                        &mut |s, e, id| {
                            segments.push((s, e, id));
                        },
                    );
                }
            },
        );
        for &(start, end, id) in &segments {
            if let Some(id) = id {
                ids.push(id);
                offsets.push((start, end));
                continue;
            }
            self.pre
                .split(&text[start..end], self.classes, &mut |a, b| {
                    self.piece(text.as_bytes(), start + a, start + b, scratch, ids, offsets);
                });
        }
        scratch.segments = segments;
    }

    /// Merges the piece `text[start..end]` (through the cache) and appends its tokens.
    fn piece(
        &self,
        text: &[u8],
        start: usize,
        end: usize,
        scratch: &mut Scratch,
        ids: &mut Vec<u32>,
        offsets: &mut Vec<(usize, usize)>,
    ) {
        let bytes = &text[start..end];
        let first = ids.len();
        let (hash, hit) = scratch.cache.get(bytes);
        if let Some(hit) = hit {
            ids.extend_from_slice(hit);
        } else if let Some(&id) = self.whole.as_ref().and_then(|w| w.get(bytes)) {
            ids.push(id);
        } else {
            merge_piece(bytes, &self.byte_ids, &self.merges, &mut scratch.merge, ids);
            scratch.cache.insert(hash, bytes, &ids[first..]);
        }
        let len = |id: u32| self.token_len.get(id as usize).map_or(0, |&l| l as usize);
        let mut pos = start;
        if self.gaps
            && bytes
                .iter()
                .any(|&b| self.byte_ids[usize::from(b)] == NO_TOKEN)
        {
            // Dropped bytes belong to no token before the next one starts, and to the token
            // they sit in.
            let dropped = |p: usize| self.byte_ids[usize::from(text[p])] == NO_TOKEN;
            for &id in &ids[first..] {
                while pos < end && dropped(pos) {
                    pos += 1;
                }
                let token_start = pos;
                let mut left = len(id);
                while left > 0 && pos < end {
                    left -= usize::from(!dropped(pos));
                    pos += 1;
                }
                offsets.push((token_start, pos));
            }
            return;
        }
        for &id in &ids[first..] {
            offsets.push((pos, pos + len(id)));
            pos += len(id);
        }
    }
}

/// Calls `out(start, end, token)` for the pieces of `text[start..end]`: added tokens found by
/// `split` (leftmost-longest) with their id, the text between them with `None`.
fn split_added(
    split: Option<&AddedSplit>,
    text: &str,
    start: usize,
    end: usize,
    out: &mut impl FnMut(usize, usize, Option<u32>),
) {
    let mut last = start;
    if let Some(split) = split {
        for m in split.matcher.find_iter(&text[start..end]) {
            let (s, e) = (start + m.start(), start + m.end());
            if last < s {
                out(last, s, None);
            }
            out(s, e, Some(split.ids[m.pattern().as_usize()]));
            last = e;
        }
    }
    if last < end {
        out(last, end, None);
    }
}
