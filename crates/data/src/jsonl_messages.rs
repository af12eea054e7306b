//! The common JSON Lines record, `{"messages": [{"role": …, "content": …}, …]}`, read straight
//! into messages (no JSON value, no copy of the keys); the readers fall back to the general
//! path for anything else.

use std::result::Result;
use std::str::FromStr;

use crate::record::{Message, Role};

/// The messages of a JSON Lines line `{"messages": [{"role": …, "content": …}, …], …}` read
/// without building a JSON value, or `None` when the line is anything else (not an object, no
/// `messages`, a message that is not an object with a string `role` and `content`, an unknown
/// role, no message, a repeated key...): then [`crate::record::parse_record`] decides, and it gives the same
/// record for the lines read here. Other keys are skipped, as [`crate::record::parse_record`] ignores them.
pub(crate) fn messages_line(line: &str) -> Option<Vec<Message>> {
    use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    /// `{"messages": [...], ...}` (objects only: serde would also read a struct from an array).
    struct LineVisitor;
    impl<'de> Visitor<'de> for LineVisitor {
        type Value = Vec<Message>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a messages record")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Message>, A::Error> {
            let mut messages = None;
            while let Some(key) = map.next_key::<Key>()? {
                match key {
                    Key::Named("messages") if messages.is_none() => {
                        messages = Some(map.next_value::<Messages>()?.0);
                    }
                    Key::Named("messages") => return Err(de::Error::custom("repeated key")),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            messages.ok_or_else(|| de::Error::custom("no messages"))
        }
    }

    /// A key: `messages`, `role`, `content`, or anything else.
    enum Key {
        Named(&'static str),
        Other,
    }
    impl<'de> de::Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a key")
                }
                fn visit_str<E: de::Error>(self, k: &str) -> Result<Key, E> {
                    Ok(match k {
                        "messages" => Key::Named("messages"),
                        "role" => Key::Named("role"),
                        "content" => Key::Named("content"),
                        _ => Key::Other,
                    })
                }
            }
            d.deserialize_str(V)
        }
    }

    struct Messages(Vec<Message>);
    impl<'de> de::Deserialize<'de> for Messages {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Messages;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a list of messages")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                    while let Some(m) = seq.next_element::<MessageObject>()? {
                        out.push(m.0);
                    }
                    Ok(Messages(out))
                }
            }
            d.deserialize_seq(V)
        }
    }

    struct MessageObject(Message);
    impl<'de> de::Deserialize<'de> for MessageObject {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = MessageObject;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a message object")
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<MessageObject, A::Error> {
                    let (mut role, mut content) = (None, None);
                    while let Some(key) = map.next_key::<Key>()? {
                        match key {
                            Key::Named("role") if role.is_none() => {
                                role = Some(map.next_value::<RoleName>()?.0);
                            }
                            Key::Named("content") if content.is_none() => {
                                content = Some(map.next_value::<String>()?);
                            }
                            Key::Named("role" | "content") => {
                                return Err(de::Error::custom("repeated key"));
                            }
                            _ => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    match (role, content) {
                        (Some(role), Some(content)) => Ok(MessageObject(Message { role, content })),
                        _ => Err(de::Error::custom("role or content missing")),
                    }
                }
            }
            d.deserialize_map(V)
        }
    }

    struct RoleName(Role);
    impl<'de> de::Deserialize<'de> for RoleName {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = RoleName;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a role")
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<RoleName, E> {
                    Role::from_str(s)
                        .map(RoleName)
                        .map_err(|_| E::custom("unknown role"))
                }
            }
            d.deserialize_str(V)
        }
    }

    let mut de = serde_json::Deserializer::from_str(line);
    let messages = de.deserialize_map(LineVisitor).ok()?;
    de.end().ok()?;
    (!messages.is_empty()).then_some(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{FieldMap, Format, Record, parse_record};

    /// What the general path makes of a line.
    fn general(line: &str) -> Option<Vec<Message>> {
        let at = crate::Location {
            file: "t.jsonl".into(),
            line: 1,
        };
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        match parse_record(&value, Format::Auto, &FieldMap::default(), &at) {
            Ok(Record::Conversation(m)) => Some(m),
            _ => None,
        }
    }

    #[test]
    fn same_messages_as_the_general_path_or_none() {
        let read = [
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a\nb \u00e9"}]}"#,
            r#"{"id": 7, "messages": [{"content": "x", "role": "human", "name": null}], "meta": {"a": [1]}}"#,
            r#"  {"messages": [{"role": "gpt", "content": "", "messages": 1}]}  "#,
            r#"{"role": "x", "content": 1, "messages": [{"role": "system", "content": "s"}]}"#,
        ];
        for line in read {
            let fast = messages_line(line).expect("read here");
            assert_eq!(Some(fast), general(line), "{line}");
        }
        assert_eq!(
            messages_line(read[0]).expect("read")[1].content,
            "a\nb \u{e9}"
        );
        // Generated chats (some with a system message, multi-turn).
        let dir = std::env::temp_dir().join(format!("kiln-jsonl-messages-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("chats.jsonl");
        crate::synthetic::write_messages_jsonl(&path, 300, 11).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::remove_dir_all(&dir).expect("clean");
        for line in text.lines() {
            assert_eq!(messages_line(line), general(line), "{line}");
            assert!(messages_line(line).is_some());
        }
        // Left to the general path (which errors or reads them differently).
        for line in [
            r#"[[{"role": "user", "content": "hi"}]]"#,
            r#"{"messages": [["user", "hi"]]}"#,
            r#"{"messages": []}"#,
            r#"{"messages": null}"#,
            r#"{"messages": [{"role": "wizard", "content": "hi"}]}"#,
            r#"{"messages": [{"role": "assistant", "content": null}]}"#,
            r#"{"messages": [{"role": "user"}]}"#,
            r#"{"messages": [{"role": "user", "content": "a", "content": "b"}]}"#,
            r#"{"messages": [], "messages": [{"role": "user", "content": "a"}]}"#,
            r#"{"conversations": [{"from": "human", "value": "hi"}]}"#,
            r#"{"messages": [{"role": "user", "content": "hi"}]} x"#,
            r#"{"messages": [{"role": "user", "content": "hi"}]"#,
        ] {
            assert!(messages_line(line).is_none(), "{line}");
        }
    }
}
