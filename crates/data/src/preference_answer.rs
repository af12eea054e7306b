//! Preference pairs tokenized as TRL 1.16's experimental `ORPOTrainer` and `CPOTrainer` do
//! (their `tokenize_row` and `build_tokenized_answer`), which differs from `DPOTrainer`'s
//! ([`PreferenceEncoder::encode`]):
//! - text first: a conversational pair is rendered, the prompt text is the characters the
//!   prompt (with the generation prompt) and both prompt + completion renderings share, and each
//!   completion text is the rest of its rendering (`maybe_apply_chat_template`); standard strings
//!   are used as they are, without special tokens and without an EOS text;
//! - each prompt + completion text is tokenized whole; the completion starts after as many
//!   tokens as the prompt alone has, one earlier when the prompt's ids are not a prefix of the
//!   whole (a token merged across the boundary). Chosen and rejected may so have prompts of
//!   different lengths (by one token), each side keeps its own;
//! - the tokenizer's BOS id is put before a prompt that does not start with it, and its EOS id
//!   after each completion that does not end with it (so a ChatML completion ending in
//!   `<|im_end|>\n` gets a second `<|im_end|>`, as TRL's);
//! - truncation keeps the prompt whole and cuts the completion to `max_length - prompt`
//!   ([`AnswerIds::sequence`]).
use crate::error::{DataError, Location, Result};
use crate::preference::{Preference, PreferenceEncoder};
use crate::record::Message;

/// A pair as ORPO/CPO read it: each side's whole ids and where its completion starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerIds {
    pub chosen: Vec<u32>,
    /// Prompt tokens at the start of `chosen`.
    pub chosen_prompt: usize,
    pub rejected: Vec<u32>,
    pub rejected_prompt: usize,
}

impl AnswerIds {
    /// The chosen (`rejected = false`) or rejected sequence and its completion mask, the
    /// completion cut so that the whole fits `max_length` (the prompt is never cut: a prompt
    /// that fills `max_length` leaves no completion token).
    ///
    /// # Shapes
    /// - output: `(ids [n], completion mask [n])`
    pub fn sequence(&self, rejected: bool, max_length: Option<usize>) -> (Vec<u32>, Vec<bool>) {
        let (ids, prompt) = if rejected {
            (&self.rejected, self.rejected_prompt)
        } else {
            (&self.chosen, self.chosen_prompt)
        };
        let n = match max_length {
            Some(max) if ids.len() > max => prompt.max(max),
            _ => ids.len(),
        };
        let mask = (0..n).map(|i| i >= prompt).collect();
        (ids[..n].to_vec(), mask)
    }
}

/// TRL's `maybe_apply_chat_template` for a pair: (prompt, chosen, rejected) texts.
fn texts(encoder: &PreferenceEncoder<'_>, pair: &Preference) -> Result<(String, String, String)> {
    match pair {
        Preference::Standard {
            prompt,
            chosen,
            rejected,
        } => Ok((prompt.clone(), chosen.clone(), rejected.clone())),
        Preference::Conversational {
            prompt,
            chosen,
            rejected,
        } => {
            let template = encoder.template().ok_or(DataError::InvalidOption {
                option: "template",
                message: "conversational preference records need a chat template".into(),
            })?;
            let full = |c: &[Message]| {
                let mut m = prompt.clone();
                m.extend_from_slice(c);
                template.render(&m, false)
            };
            let (p, pc, pr) = (
                template.render(prompt, true)?,
                full(chosen)?,
                full(rejected)?,
            );
            // The prompt is the characters all three renderings share.
            let n = p
                .char_indices()
                .zip(pc.chars().zip(pr.chars()))
                .take_while(|((_, a), (b, c))| a == b && a == c)
                .last()
                .map_or(0, |((i, a), _)| i + a.len_utf8());
            Ok((p[..n].to_string(), pc[n..].to_string(), pr[n..].to_string()))
        }
    }
}

impl PreferenceEncoder<'_> {
    /// The pair's ids as TRL's `ORPOTrainer`/`CPOTrainer` make them (see the module docs).
    /// `bos`/`eos`: the tokenizer's BOS and EOS ids. Errors (template, tokenizer, prompts that
    /// differ by more than the boundary token) name `at`.
    pub fn encode_answers(
        &self,
        pair: &Preference,
        at: &Location,
        bos: Option<u32>,
        eos: u32,
    ) -> Result<AnswerIds> {
        let within = |e: DataError| DataError::AtRecord {
            at: at.clone(),
            source: Box::new(e),
        };
        let (prompt, chosen, rejected) = texts(self, pair).map_err(within)?;
        let prompt_ids = self.ids(&prompt, false).map_err(within)?;
        let answer = |text: &str| -> Result<(Vec<u32>, usize)> {
            let full = self.ids(&format!("{prompt}{text}"), false)?;
            let mut start = prompt_ids.len().min(full.len());
            if full[..start] != prompt_ids[..] {
                start = start.saturating_sub(1);
            }
            Ok((full, start))
        };
        let (mut c, mut cp) = answer(&chosen).map_err(within)?;
        let (mut r, mut rp) = answer(&rejected).map_err(within)?;
        let differing = c[..cp].iter().zip(&r[..rp]).filter(|(a, b)| a != b).count();
        if differing > 1 || cp.abs_diff(rp) > 1 {
            return Err(DataError::BadConversation {
                at: at.clone(),
                field: "prompt".into(),
                message: "the chosen and rejected prompts' ids differ by more than the \
                          boundary token"
                    .into(),
            });
        }
        if let Some(bos) = bos {
            for (ids, p) in [(&mut c, &mut cp), (&mut r, &mut rp)] {
                if *p == 0 || ids[0] != bos {
                    ids.insert(0, bos);
                    *p += 1;
                }
            }
        }
        for (ids, p) in [(&mut c, cp), (&mut r, rp)] {
            if ids.len() == p || ids.last() != Some(&eos) {
                ids.push(eos);
            }
        }
        Ok(AnswerIds {
            chosen: c,
            chosen_prompt: cp,
            rejected: r,
            rejected_prompt: rp,
        })
    }
}
