//! Where each assistant turn sits in the rendered text (byte offsets).
//!
//! The trained span of an assistant turn is its content as it appears in the rendered text plus
//! the end-of-turn special token that immediately follows it (`<|im_end|>`, `<|eot_id|>`,
//! `<end_of_turn>`, `</s>`, `<|end|>` ...), like TRL's `assistant_only_loss` and axolotl: the
//! model learns to answer and to stop. Headers (`<|im_start|>assistant\n`) and the newline after
//! the end marker are not trained.
//!
//! Contents are located in order: each user and assistant message is searched from the end of
//! the previous match (exactly, then with surrounding whitespace trimmed, since templates often
//! apply `| trim`), so an answer that repeats the question is not confused with it. System
//! messages are skipped because templates move them (Gemma folds them into the first user turn,
//! Mistral into the last).

use std::ops::Range;

use crate::error::{DataError, Result};
use crate::record::{Message, Role};

/// Byte ranges of the assistant turns of `messages` in `text`, in message order.
///
/// `end_markers` are the strings that may close a turn (the tokenizer's special tokens); the
/// longest one starting right after the content is included in the span.
pub fn assistant_spans(
    text: &str,
    messages: &[Message],
    end_markers: &[String],
) -> Result<Vec<Range<usize>>> {
    let mut cursor = 0;
    let mut spans = Vec::new();
    let mut assistant_index = 0;
    for m in messages {
        match m.role {
            Role::System => continue,
            Role::User | Role::Tool => {
                if let Some(r) = find(text, &m.content, cursor) {
                    cursor = r.end;
                }
            }
            Role::Assistant => {
                let r = find(text, &m.content, cursor).ok_or(DataError::SpanNotFound {
                    index: assistant_index,
                })?;
                let marker = end_markers
                    .iter()
                    .filter(|mk| !mk.is_empty() && text[r.end..].starts_with(mk.as_str()))
                    .map(String::len)
                    .max()
                    .unwrap_or(0);
                let span = r.start..r.end + marker;
                cursor = span.end;
                spans.push(span);
                assistant_index += 1;
            }
        }
    }
    Ok(spans)
}

fn find(text: &str, content: &str, from: usize) -> Option<Range<usize>> {
    let hay = text.get(from..)?;
    let trimmed = content.trim();
    if trimmed.is_empty() {
        // An empty answer trains only its end marker, right where the search stands.
        return Some(from..from);
    }
    if let Some(i) = find_bytes(hay.as_bytes(), content.as_bytes()) {
        return Some(from + i..from + i + content.len());
    }
    find_bytes(hay.as_bytes(), trimmed.as_bytes()).map(|i| from + i..from + i + trimmed.len())
}

/// First occurrence of `needle` in `hay`. A message's content usually sits right after the
/// cursor: the first places its first 32 bytes occur are checked in full before the (costlier
/// to set up) search for the whole needle.
fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    const HEAD: usize = 32;
    if needle.len() <= HEAD {
        return memchr::memmem::find(hay, needle);
    }
    let head = memchr::memmem::Finder::new(&needle[..HEAD]);
    let mut at = 0;
    for _ in 0..8 {
        let i = at + head.find(hay.get(at..)?)?;
        if hay[i..].starts_with(needle) {
            return Some(i);
        }
        at = i + 1;
    }
    memchr::memmem::find(&hay[at..], needle).map(|i| at + i)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn msgs(list: &[(Role, &str)]) -> Vec<Message> {
        list.iter().map(|(r, c)| Message::new(*r, *c)).collect()
    }

    #[test]
    fn answer_repeating_the_question_is_found_after_it() {
        let m = msgs(&[(Role::User, "hello"), (Role::Assistant, "hello")]);
        let text = "<u>hello<e>\n<a>hello<e>\n";
        let spans = assistant_spans(text, &m, &["<e>".into()]).expect("spans");
        assert_eq!(spans, vec![15..23]);
        assert_eq!(&text[spans[0].clone()], "hello<e>");
    }

    #[test]
    fn long_needles_are_found_after_false_starts() {
        let needle = format!("{}tail", "x".repeat(40));
        let mut hay = String::new();
        for _ in 0..12 {
            hay.push_str(&"x".repeat(40));
            hay.push('-');
        }
        hay.push_str(&needle);
        assert_eq!(find_bytes(hay.as_bytes(), needle.as_bytes()), Some(12 * 41));
        assert_eq!(find_bytes(b"short", b"or"), Some(2));
        assert_eq!(find_bytes(hay.as_bytes(), b"x-y"), None);
        assert_eq!(find_bytes(&hay.as_bytes()[..100], needle.as_bytes()), None);
    }

    #[test]
    fn trimmed_content_and_missing_content() {
        let m = msgs(&[(Role::User, "q"), (Role::Assistant, "  a b \n")]);
        let spans = assistant_spans("q|a b</s>", &m, &["</s>".into()]).expect("spans");
        assert_eq!(spans, vec![2..9]);
        let err = assistant_spans("q|zzz", &m, &[]).expect_err("absent");
        assert!(matches!(err, DataError::SpanNotFound { index: 0 }));
    }
}
