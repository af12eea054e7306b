//! GGUF metadata values and their conversion to Rust types.

/// One GGUF metadata value (the 13 GGUF value types; arrays may nest).
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// The GGUF name of the value's type (`UINT32`, `ARRAY`...), for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "UINT8",
            Self::I8(_) => "INT8",
            Self::U16(_) => "UINT16",
            Self::I16(_) => "INT16",
            Self::U32(_) => "UINT32",
            Self::I32(_) => "INT32",
            Self::F32(_) => "FLOAT32",
            Self::Bool(_) => "BOOL",
            Self::String(_) => "STRING",
            Self::Array(_) => "ARRAY",
            Self::U64(_) => "UINT64",
            Self::I64(_) => "INT64",
            Self::F64(_) => "FLOAT64",
        }
    }

    /// The value as a signed integer, for any integer type (not bool, not float).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as f64, for a float (f32 widened exactly) or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value as JSON (numbers keep their value; f32 is widened to f64 as Python does).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Self::Bool(b) => Value::Bool(*b),
            Self::String(s) => Value::String(s.clone()),
            Self::Array(a) => Value::Array(a.iter().map(Self::to_json).collect()),
            Self::F32(_) | Self::F64(_) => self
                .as_f64()
                .and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number),
            Self::U64(v) => Value::from(*v),
            Self::I64(v) => Value::from(*v),
            other => other
                .as_i128()
                .and_then(|v| i64::try_from(v).ok())
                .map_or(Value::Null, Value::from),
        }
    }
}

/// A Rust type a metadata value converts to, with a description for error messages.
pub trait FromGguf: Sized {
    /// What the key was expected to hold (`an unsigned 32-bit integer`...).
    const EXPECTED: &'static str;
    /// The converted value, or `None` if the value has another type or is out of range.
    fn from_gguf(value: &GgufValue) -> Option<Self>;
}

macro_rules! int_from_gguf {
    ($($t:ty => $what:literal),*) => {$(
        impl FromGguf for $t {
            const EXPECTED: &'static str = $what;
            fn from_gguf(value: &GgufValue) -> Option<Self> {
                value.as_i128().and_then(|v| <$t>::try_from(v).ok())
            }
        }
    )*};
}
int_from_gguf!(
    u32 => "an integer in 0..=4294967295",
    i32 => "a 32-bit signed integer",
    u64 => "a non-negative integer",
    i64 => "a 64-bit signed integer",
    usize => "a non-negative integer"
);

impl FromGguf for f32 {
    const EXPECTED: &'static str = "a number";
    fn from_gguf(value: &GgufValue) -> Option<Self> {
        match *value {
            GgufValue::F32(v) => Some(v),
            _ => value.as_f64().map(|v| v as f32),
        }
    }
}

impl FromGguf for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_gguf(value: &GgufValue) -> Option<Self> {
        value.as_f64()
    }
}

impl FromGguf for bool {
    const EXPECTED: &'static str = "a bool";
    fn from_gguf(value: &GgufValue) -> Option<Self> {
        match *value {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }
}

impl FromGguf for String {
    const EXPECTED: &'static str = "a string";
    fn from_gguf(value: &GgufValue) -> Option<Self> {
        value.as_str().map(str::to_owned)
    }
}

impl<T: FromGguf> FromGguf for Vec<T> {
    const EXPECTED: &'static str = "an array";
    fn from_gguf(value: &GgufValue) -> Option<Self> {
        value.as_array()?.iter().map(T::from_gguf).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn integers_convert_across_widths_with_range_checks() {
        assert_eq!(u32::from_gguf(&GgufValue::I32(7)), Some(7));
        assert_eq!(u32::from_gguf(&GgufValue::I32(-1)), None);
        assert_eq!(u32::from_gguf(&GgufValue::U64(1 << 40)), None);
        assert_eq!(usize::from_gguf(&GgufValue::U64(1 << 40)), Some(1 << 40));
        assert_eq!(u32::from_gguf(&GgufValue::F32(1.0)), None);
        assert_eq!(f32::from_gguf(&GgufValue::F32(1e-5)), Some(1e-5));
        assert_eq!(bool::from_gguf(&GgufValue::U8(1)), None);
    }

    #[test]
    fn json_widens_f32_like_python() {
        let v = GgufValue::F32(1e-5).to_json();
        assert_eq!(v.as_f64(), Some(9.999999747378752e-06));
        let a = GgufValue::Array(vec![GgufValue::I32(-3), GgufValue::String("x".into())]);
        assert_eq!(a.to_json(), serde_json::json!([-3, "x"]));
    }
}
