//! Payload deserialization: what a consumer's messages decode into.
//!
//! A consumer names its payload type ([`Consumer::Payload`](crate::Consumer::Payload)); the
//! payload is decoded lazily, the first time [`Message::payload`](crate::Message::payload) is
//! called, and a failure is an error like any other (retry, then dead-letter queue), never a
//! crash. Built in: [`Json<T>`] (serde JSON, the usual choice), [`Raw`] (the bytes as they
//! are), [`Text`] (UTF-8). A topic can also set its own deserializer
//! ([`TopicBuilder::deserializer`](crate::routing::TopicBuilder::deserializer)).

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use serde::de::DeserializeOwned;

/// A boxed error, what consumers return and deserializers fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A type messages decode into. `raw` is `None` for a tombstone (null payload).
pub trait Payload: Sized + Send + Sync + 'static {
    /// Decodes a raw payload.
    fn deserialize(raw: Option<&Bytes>) -> Result<Self, BoxError>;
}

/// JSON decoded with serde into `T` (the default choice).
///
/// ```
/// use karafka_consumer::payload::{Json, Payload};
/// #[derive(serde::Deserialize)]
/// struct Order { id: u32 }
/// let order = Json::<Order>::deserialize(Some(&bytes::Bytes::from_static(br#"{"id":7}"#))).unwrap();
/// assert_eq!(order.id, 7);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Json<T>(pub T);

impl<T> Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Payload for Json<T> {
    fn deserialize(raw: Option<&Bytes>) -> Result<Self, BoxError> {
        let raw = raw.ok_or(Tombstone("JSON"))?;
        Ok(Json(serde_json::from_slice(raw)?))
    }
}

/// The payload bytes as they are (no decoding; tombstones are empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw(pub Bytes);

impl Deref for Raw {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Payload for Raw {
    fn deserialize(raw: Option<&Bytes>) -> Result<Self, BoxError> {
        Ok(Raw(raw.cloned().unwrap_or_default()))
    }
}

/// The payload as UTF-8 text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Payload for Text {
    fn deserialize(raw: Option<&Bytes>) -> Result<Self, BoxError> {
        let raw = raw.ok_or(Tombstone("text"))?;
        Ok(Text(std::str::from_utf8(raw)?.to_owned()))
    }
}

/// A tombstone reached a deserializer that needs a payload.
#[derive(Debug, Clone, Copy)]
struct Tombstone(&'static str);

impl fmt::Display for Tombstone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the message is a tombstone (null payload) and cannot be decoded as {}; check \
             `message.is_tombstone()` first",
            self.0
        )
    }
}

impl std::error::Error for Tombstone {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_raw_and_text() {
        #[derive(serde::Deserialize, Debug)]
        struct Order {
            id: u32,
        }
        let ok = Json::<Order>::deserialize(Some(&Bytes::from_static(br#"{"id":3}"#))).unwrap();
        assert_eq!(ok.id, 3);
        let bad = Json::<Order>::deserialize(Some(&Bytes::from_static(b"{not json"))).unwrap_err();
        assert!(bad.to_string().contains("key must be a string"), "{bad}");
        let tomb = Json::<Order>::deserialize(None).unwrap_err();
        assert!(tomb.to_string().contains("tombstone"));
        assert_eq!(
            &*Raw::deserialize(Some(&Bytes::from_static(b"ab"))).unwrap(),
            b"ab"
        );
        assert!(Raw::deserialize(None).unwrap().is_empty());
        assert_eq!(
            &*Text::deserialize(Some(&Bytes::from_static(b"hi"))).unwrap(),
            "hi"
        );
        assert!(Text::deserialize(Some(&Bytes::from_static(&[0xff]))).is_err());
    }
}
