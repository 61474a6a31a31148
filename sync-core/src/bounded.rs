//! Deserializing a peer's input within bounds, with refusals that say why.
//!
//! Each sequence and string is checked against its bound before it is allocated (postcard
//! says a sequence's length first; strings are borrowed from the input until checked).
//! postcard keeps only "Serde Deserialization Error" of a custom error, so the reason is
//! also left in a thread-local that [`explain`] puts back into the message.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

thread_local! {
    static WHY: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A custom deserialization error whose text survives postcard (see [`explain`]).
pub(crate) fn refuse<E: de::Error>(why: String) -> E {
    let e = E::custom(&why);
    WHY.with(|w| *w.borrow_mut() = Some(why));
    e
}

/// The text of a postcard error, with the reason a bound or rule gave when it was ours.
pub(crate) fn explain(e: postcard::Error) -> String {
    let why = WHY.with(|w| w.borrow_mut().take());
    match (e, why) {
        (postcard::Error::SerdeDeCustom, Some(why)) => why,
        (e, _) => e.to_string(),
    }
}

/// At most the first 100 characters of `s`, for error messages about huge input.
pub(crate) fn head(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}... ({} bytes)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

struct SeqVisitor<T> {
    max: usize,
    what: &'static str,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at most {} {}", self.max, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let too_many = |n: usize| {
            refuse(format!(
                "{} {} is more than the limit of {}",
                n, self.what, self.max
            ))
        };
        let hint = seq.size_hint().unwrap_or(0);
        if hint > self.max {
            return Err(too_many(hint));
        }
        // Not the whole hint: memory follows the elements really decoded.
        let mut v = Vec::with_capacity(hint.min(4096));
        while let Some(x) = seq.next_element()? {
            if v.len() == self.max {
                return Err(too_many(v.len() + 1));
            }
            v.push(x);
        }
        Ok(v)
    }
}

/// A sequence of at most `max` elements.
pub(crate) fn seq<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    max: usize,
    what: &'static str,
) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(SeqVisitor {
        max,
        what,
        _t: PhantomData,
    })
}

struct StrVisitor {
    max: usize,
    what: &'static str,
}

impl StrVisitor {
    fn check<E: de::Error>(&self, s: &str) -> Result<(), E> {
        if s.len() > self.max {
            return Err(refuse(format!(
                "{} {:?} is longer than the limit of {} bytes",
                self.what,
                head(s),
                self.max
            )));
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for StrVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} of at most {} bytes", self.what, self.max)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        self.check(s)?;
        Ok(s.to_string())
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<String, E> {
        self.check(&s)?;
        Ok(s)
    }
}

/// A string of at most `max` bytes, checked before it is copied.
pub(crate) fn string<'de, D: Deserializer<'de>>(
    d: D,
    max: usize,
    what: &'static str,
) -> Result<String, D::Error> {
    d.deserialize_str(StrVisitor { max, what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct T {
        #[serde(deserialize_with = "three")]
        v: Vec<u8>,
        #[serde(deserialize_with = "short")]
        s: String,
    }

    fn three<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        seq(d, 3, "numbers")
    }

    fn short<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        string(d, 5, "name")
    }

    fn decode(v: Vec<u8>, s: &str) -> Result<T, String> {
        let bytes = postcard::to_allocvec(&(v, s)).unwrap();
        postcard::from_bytes::<T>(&bytes).map_err(explain)
    }

    #[test]
    fn bounds_are_refused_with_their_reason() {
        let ok = decode(vec![1, 2, 3], "abcde").unwrap();
        assert_eq!((ok.v, ok.s.as_str()), (vec![1, 2, 3], "abcde"));
        assert_eq!(
            decode(vec![1, 2, 3, 4], "a").unwrap_err(),
            "4 numbers is more than the limit of 3"
        );
        assert_eq!(
            decode(vec![], "abcdef").unwrap_err(),
            "name \"abcdef\" is longer than the limit of 5 bytes"
        );
        // A plain format error is still itself, not a stale reason.
        assert!(postcard::from_bytes::<T>(&[9]).map_err(explain).is_err());
    }
}
