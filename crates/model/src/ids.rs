//! Identifiers: newtypes over strings, validated where they enter.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest identifier accepted (order ids, user ids, ...), in bytes. OTG allows 256.
pub const ID_BYTES_MAX: usize = 256;

/// An instrument in `EXCH.ins` form (`SHFE.cu2512`): an upper-case exchange code, a dot,
/// and a non-empty symbol of ASCII letters, digits, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Deserialize)]
#[serde(try_from = "String")]
pub struct InstrumentId(String);

/// Serialized as its text, as a `String` is, without the copy serde's `into = "String"`
/// makes: every event names an instrument, and every submit serializes its events twice
/// (the finite-number check and the encoding).
impl Serialize for InstrumentId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl InstrumentId {
    /// Parses and validates an `EXCH.ins` identifier.
    pub fn new(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let Some((exchange, symbol)) = s.split_once('.') else {
            return Err(format!("instrument id {s:?} is not of the form EXCH.ins"));
        };
        let exchange_ok = !exchange.is_empty()
            && exchange.len() <= 16
            && exchange.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        let symbol_ok = !symbol.is_empty()
            && symbol.len() <= 64
            && symbol.bytes().all(|b| {
                b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'&' || b == b' '
            });
        if !exchange_ok || !symbol_ok {
            return Err(format!("instrument id {s:?} is not of the form EXCH.ins"));
        }
        Ok(Self(s))
    }
    /// The full `EXCH.ins` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The exchange code (`SHFE`), as DIFF's `exchange_id`.
    pub fn exchange(&self) -> &str {
        self.0.split_once('.').map_or("", |(e, _)| e)
    }
    /// The symbol without the exchange (`cu2512`), as DIFF's short `instrument_id`.
    pub fn symbol(&self) -> &str {
        self.0.split_once('.').map_or("", |(_, s)| s)
    }
}

impl TryFrom<String> for InstrumentId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::new(s)
    }
}

impl From<InstrumentId> for String {
    fn from(id: InstrumentId) -> String {
        id.0
    }
}

impl fmt::Display for InstrumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// An instrument id is written exactly as its text is, in the journal's encoding and
    /// in JSON, and reads back; an invalid text is refused on the way in.
    #[test]
    fn an_instrument_id_serializes_as_its_text() {
        let id = InstrumentId::new("SHFE.cu2512").unwrap();
        let text = String::from("SHFE.cu2512");
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&text).unwrap());
        assert_eq!(postcard::from_bytes::<InstrumentId>(&bytes).unwrap(), id);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"SHFE.cu2512\"");
        assert_eq!(serde_json::from_str::<InstrumentId>("\"SHFE.cu2512\"").unwrap(), id);
        assert!(serde_json::from_str::<InstrumentId>("\"cu2512\"").is_err());
    }
}
