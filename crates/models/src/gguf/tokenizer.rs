//! The tokenizer a GGUF file describes in its metadata, as a [`tokenizers::Tokenizer`] built the
//! way transformers builds it (`integrations/gguf/gguf_tokenizer_mapping.py`: `byte_level_tokenizer`,
//! `sentencepiece_tokenizer` and its per-architecture variants for `gemma*` and `phi3`,
//! `add_gguf_special_tokens`, `set_split_regex`, then `TokenizersBackend.update_post_processor`).
use super::file::GgufFile;
use super::spm;
use crate::error::{ModelError, Result};
use std::collections::HashMap;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// The tokenizer kinds of `tokenizer.ggml.model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufTokenizerKind {
    /// `gpt2`: byte-level BPE with merges.
    Gpt2,
    /// `llama`: sentencepiece-style BPE with byte fallback (merges from the file or the scores).
    Llama,
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex transformers uses for `tokenizer.ggml.pre`; `None` keeps GPT-2's byte-level
/// regex (as for `smollm`, `gpt2`, `default`...).
fn split_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's reversible byte -> printable char table (`bytes_to_unicode`).
fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            b as u32
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

/// Builds the tokenizer described by `file`'s `tokenizer.ggml.*` metadata.
///
/// # Errors
/// [`ModelError::Tokenizer`] for a tokenizer kind other than `gpt2`/`llama` or an inconsistent
/// vocabulary; [`ModelError::GgufKey`] when a key is missing or has the wrong type.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let err = |reason: String| ModelError::Tokenizer {
        path: file.path().to_path_buf(),
        reason,
    };
    let kind = match file.require::<String>("tokenizer.ggml.model")?.as_str() {
        "gpt2" => GgufTokenizerKind::Gpt2,
        "llama" => GgufTokenizerKind::Llama,
        other => return Err(err(format!("unsupported GGUF tokenizer model `{other}`"))),
    };
    let tokens = file
        .get_str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| file.key_error("tokenizer.ggml.tokens", "missing"))?;
    let types: Vec<i32> = file
        .get_as("tokenizer.ggml.token_type")?
        .unwrap_or_default();
    if !types.is_empty() && types.len() != tokens.len() {
        return Err(file.key_error(
            "tokenizer.ggml.token_type",
            format!("{} entries for {} tokens", types.len(), tokens.len()),
        ));
    }
    let merges = file
        .get_str_array("tokenizer.ggml.merges")?
        .map(|m| parse_merges(file, &m))
        .transpose()?;

    let alphabet = byte_alphabet();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    // The class transformers instantiates adds its default special tokens; `add_bos_token`
    // defaults to true for sentencepiece vocabularies (llama.cpp's behaviour).
    let (mut tokenizer, vocab, defaults, add_bos_default) = match kind {
        GgufTokenizerKind::Gpt2 => {
            let merges = merges.ok_or_else(|| {
                file.key_error("tokenizer.ggml.merges", "missing (needed for gpt2 BPE)")
            })?;
            // A token spelled with other characters is respelled byte by byte.
            let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
            for (id, &t) in tokens.iter().enumerate() {
                let spelled = if in_alphabet(t) {
                    t.to_owned()
                } else {
                    t.bytes().map(|b| alphabet[b as usize]).collect()
                };
                vocab.insert(spelled, id as u32);
            }
            let tokenizer = byte_level_tokenizer(file, &vocab, merges).map_err(err)?;
            (tokenizer, vocab, &["<|endoftext|>"][..], false)
        }
        GgufTokenizerKind::Llama
            if matches!(file.architecture()?, "gemma" | "gemma2" | "gemma3") =>
        {
            let respelled = spm::gemma_respelled(&tokens);
            let vocab: HashMap<String, u32> = respelled
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i as u32))
                .collect();
            let tokenizer = spm::gemma_tokenizer(&respelled, &vocab, merges).map_err(err)?;
            let defaults = &["<unk>", "<bos>", "<eos>", "<pad>", "<mask>"][..];
            (tokenizer, vocab, defaults, true)
        }
        GgufTokenizerKind::Llama => {
            let vocab = spm::plain_vocab(&tokens);
            let tokenizer = if file.architecture()? == "phi3" {
                spm::phi3_tokenizer(file, &tokens, &vocab, merges)
            } else {
                spm::sentencepiece_tokenizer(file, &tokens, &vocab, merges)
            }
            .map_err(err)?;
            (tokenizer, vocab, &["<unk>", "<s>", "</s>"][..], true)
        }
    };

    // Special tokens: the control tokens (for byte-level BPE, those spelled in its alphabet),
    // the tokenizer class's defaults and the file's bos/eos/unk/pad tokens, kept to ones in the
    // vocabulary (transformers would append a new id for a missing one, beyond the embedding).
    let type_of = |id: usize| types.get(id).copied().unwrap_or(1);
    let byte_level = kind == GgufTokenizerKind::Gpt2;
    let mut special: Vec<&str> = (0..tokens.len())
        .filter(|&id| type_of(id) == CONTROL && (!byte_level || in_alphabet(tokens[id])))
        .map(|id| tokens[id])
        .collect();
    special.extend(defaults);
    let mut named: HashMap<&str, (String, u32)> = HashMap::new();
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
    ] {
        if let Some(id) = file.get_as::<usize>(key)? {
            let token = tokens.get(id).ok_or_else(|| {
                file.key_error(
                    key,
                    format!("id {id} is beyond the {} tokens", tokens.len()),
                )
            })?;
            special.push(token);
            named.insert(key, (token.to_string(), id as u32));
        }
    }
    let mut seen = std::collections::HashSet::new();
    let special: Vec<AddedToken> = special
        .into_iter()
        .filter(|t| vocab.contains_key(*t) && seen.insert(*t))
        .map(|t| AddedToken::from(t, true).normalized(false))
        .collect();
    tokenizer.add_special_tokens(&special);
    let user_defined: Vec<AddedToken> = (0..tokens.len())
        .filter(|&id| type_of(id) == USER_DEFINED && vocab.contains_key(tokens[id]))
        .map(|id| AddedToken::from(tokens[id], false).normalized(false))
        .collect();
    tokenizer.add_tokens(&user_defined);

    let add_bos = file
        .get_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(add_bos_default);
    let add_eos = file
        .get_bool("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    let bos = named
        .remove("tokenizer.ggml.bos_token_id")
        .filter(|_| add_bos);
    let eos = named
        .remove("tokenizer.ggml.eos_token_id")
        .filter(|_| add_eos);
    tokenizer.with_post_processor(Some(template(bos, eos).map_err(err)?));
    Ok(tokenizer)
}

/// `"a b"` strings into pairs.
fn parse_merges(file: &GgufFile, merges: &[&str]) -> Result<Merges> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split(' ').collect::<Vec<_>>()[..] {
            [a, b] => Ok((a.to_owned(), b.to_owned())),
            _ => Err(file.key_error(
                "tokenizer.ggml.merges",
                format!("merge #{i} `{m}` is not two tokens separated by one space"),
            )),
        })
        .collect()
}

/// `GPT2Tokenizer`'s shape: byte-level BPE, GPT-2's pre-tokenizer or the split regex of
/// `tokenizer.ggml.pre` followed by the byte-level mapping, and the byte-level decoder.
fn byte_level_tokenizer(
    file: &GgufFile,
    vocab: &HashMap<String, u32>,
    merges: Merges,
) -> std::result::Result<Tokenizer, String> {
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .iter()
                .map(|(k, &v)| (k.clone(), v))
                .collect::<Vocab>(),
            merges,
        )
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| format!("building the BPE model: {e}"))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = file
        .get_str("tokenizer.ggml.pre")
        .map_err(|e| e.to_string())?
        .unwrap_or("default");
    let pre_tokenizer: PreTokenizerWrapper = match split_regex(pre) {
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| format!("split regex of `{pre}`: {e}"))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        None => ByteLevel::new(false, true, true).into(),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// transformers' `update_post_processor`: `[bos] $A [eos]`, and `[bos] $A [eos] [bos] $B [eos]`.
fn template(
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
) -> std::result::Result<TemplateProcessing, String> {
    use serde_json::{Value, json};
    let special =
        |t: &(String, u32), type_id: u32| json!({"SpecialToken": {"id": t.0, "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let side = |id: &str, type_id: u32| -> Vec<Value> {
        let mut v = Vec::new();
        v.extend(bos.iter().map(|t| special(t, type_id)));
        v.push(seq(id, type_id));
        v.extend(eos.iter().map(|t| special(t, type_id)));
        v
    };
    let single = side("A", 0);
    let mut pair = single.clone();
    pair.extend(side("B", 1));
    let tokens: serde_json::Map<String, Value> = bos
        .iter()
        .chain(eos.iter())
        .map(|(t, id)| (t.clone(), json!({"id": t, "ids": [id], "tokens": [t]})))
        .collect();
    let value = json!({"type": "TemplateProcessing", "single": single, "pair": pair,
        "special_tokens": tokens});
    serde_json::from_value(value).map_err(|e| format!("post-processor template: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let a = byte_alphabet();
        assert_eq!(a[b'!' as usize], '!');
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[0], 'Ā');
        assert_eq!(a[0xAD], 'Ń');
        let distinct: std::collections::HashSet<char> = a.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn template_adds_bos_when_asked() {
        let t = template(Some(("<s>".into(), 1)), None).expect("valid template");
        let json = serde_json::to_value(&t).expect("serialises");
        assert_eq!(json["single"][0]["SpecialToken"]["id"], "<s>");
        assert_eq!(json["pair"].as_array().map(Vec::len), Some(4));
        let none = serde_json::to_value(template(None, None).expect("valid")).expect("serialises");
        assert_eq!(none["single"].as_array().map(Vec::len), Some(1));
    }
}
