//! Python's `json.dumps` output format (what transformers' `tojson` filter produces).

use serde_json::Value;

/// Serialises like `json.dumps(value, indent=indent, separators=separators,
/// ensure_ascii=ensure_ascii, sort_keys=sort_keys)`: `", "`/`": "` separators without an indent,
/// `","`/`": "` with one.
pub fn python_json(
    value: &Value,
    indent: Option<&str>,
    separators: Option<(String, String)>,
    ensure_ascii: bool,
    sort_keys: bool,
) -> String {
    let (item, key) = separators.unwrap_or_else(|| {
        let item = if indent.is_some() { "," } else { ", " };
        (item.to_string(), ": ".to_string())
    });
    let w = Writer {
        indent,
        item: &item,
        key: &key,
        ensure_ascii,
        sort_keys,
    };
    let mut out = String::new();
    w.value(value, 0, &mut out);
    out
}

struct Writer<'a> {
    indent: Option<&'a str>,
    item: &'a str,
    key: &'a str,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl Writer<'_> {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(ind) = self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    }

    fn value(&self, v: &Value, depth: usize, out: &mut String) {
        match v {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => number(n, out),
            Value::String(s) => self.string(s, out),
            Value::Array(items) if items.is_empty() => out.push_str("[]"),
            Value::Array(items) => {
                out.push('[');
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item);
                    }
                    self.newline(depth + 1, out);
                    self.value(x, depth + 1, out);
                }
                self.newline(depth, out);
                out.push(']');
            }
            Value::Object(map) if map.is_empty() => out.push_str("{}"),
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, x)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(self.item);
                    }
                    self.newline(depth + 1, out);
                    self.string(k, out);
                    out.push_str(self.key);
                    self.value(x, depth + 1, out);
                }
                self.newline(depth, out);
                out.push('}');
            }
        }
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) > 0x7e) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's float repr for the usual range (`1.0`, `0.5`, `1e-05` is approximated as `1e-05`).
fn number(n: &serde_json::Number, out: &mut String) {
    if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
            out.push_str(&format!("{f:.1}"));
        } else if f.is_finite() && (f.abs() >= 1e16 || (f != 0.0 && f.abs() < 1e-4)) {
            let s = format!("{f:e}");
            // Rust `1e-5` -> Python `1e-05`; `1.5e16` -> `1.5e+16`.
            let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            out.push_str(&format!("{mant}e{sign}{digits:0>2}"));
        } else {
            out.push_str(&f.to_string());
        }
    } else {
        out.push_str(&n.to_string());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_json_dumps() {
        // Expected strings are Python 3.11 `json.dumps` outputs.
        let v = json!({"name": "f", "args": {"x": 1, "y": [1.0, 0.5, "é\n"]}, "e": {}});
        assert_eq!(
            python_json(&v, None, None, false, false),
            r#"{"name": "f", "args": {"x": 1, "y": [1.0, 0.5, "é\n"]}, "e": {}}"#
        );
        assert_eq!(
            python_json(
                &json!({"b": [1, 2], "a": null}),
                Some("  "),
                None,
                false,
                true
            ),
            "{\n  \"a\": null,\n  \"b\": [\n    1,\n    2\n  ]\n}"
        );
        assert_eq!(
            python_json(&json!(["é", 1e-5, 1.5e16]), None, None, true, false),
            r#"["\u00e9", 1e-05, 1.5e+16]"#
        );
    }
}
