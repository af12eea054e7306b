//! Token ids to streamed text: decodes the growing output, sends only what can no longer
//! change, and ends it at the first stop string (which, as in OpenAI's API, is not returned).
use tokenizers::Tokenizer;

/// The text of one choice as it grows.
#[derive(Debug)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Bytes of the decoded text already handed out.
    sent: usize,
    stops: Vec<String>,
    stopped: bool,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            ids: Vec::new(),
            sent: 0,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            stopped: false,
        }
    }

    /// Generated ids so far.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Whether a stop string ended the text.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds token `id`; returns the new text that is safe to send. Text that may still become a
    /// stop string or is an incomplete UTF-8 sequence (`U+FFFD` at the end) is held back.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        if self.stopped {
            return String::new();
        }
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids, true).unwrap_or_default();
        if text.len() < self.sent || !text.is_char_boundary(self.sent) {
            return String::new();
        }
        // A stop string may start in text already sent only if it was held back, so searching
        // from the first unsent byte minus the longest stop finds every new occurrence.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.sent.saturating_sub(longest);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| text[from..].find(s.as_str()).map(|p| from + p))
            .min();
        if let Some(end) = hit {
            self.stopped = true;
            let end = end.max(self.sent);
            let out = text[self.sent..end].to_string();
            self.sent = end;
            return out;
        }
        let mut end = text.len();
        if text.ends_with('\u{FFFD}') {
            end -= '\u{FFFD}'.len_utf8();
        }
        // Hold back a tail that is the start of a stop string.
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && text[..end].ends_with(&s[..k]) {
                    end = end.min(text.len() - k);
                    break;
                }
            }
        }
        if end <= self.sent {
            return String::new();
        }
        let out = text[self.sent..end].to_string();
        self.sent = end;
        out
    }

    /// The text held back when generation ends without a stop string.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> String {
        if self.stopped {
            return String::new();
        }
        let text = tokenizer.decode(&self.ids, true).unwrap_or_default();
        if text.len() <= self.sent || !text.is_char_boundary(self.sent) {
            return String::new();
        }
        let out = text[self.sent..].to_string();
        self.sent = text.len();
        out
    }
}
