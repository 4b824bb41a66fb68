use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ValidationError;

/// The rule a piece of user-supplied text must satisfy.
pub trait TextRule {
    /// Field name used in error messages.
    const FIELD: &'static str;
    /// Least number of characters; a value of 1 or more also rejects blank text.
    const MIN: usize;
    /// Most number of characters (Unicode scalar values, not bytes).
    const MAX: usize;
}

/// Text known to satisfy rule `R`. PostgreSQL cannot store NUL in `text`, so it
/// is refused here as a 400 rather than surfacing later as a database error.
pub struct Text<R> {
    value: String,
    rule: PhantomData<R>,
}

impl<R: TextRule> Text<R> {
    pub fn parse(value: String) -> Result<Self, ValidationError> {
        let chars = value.chars().count();
        if chars > R::MAX {
            return Err(ValidationError(format!(
                "{} must be at most {} characters, got {chars}",
                R::FIELD,
                R::MAX
            )));
        }
        if R::MIN > 0 && value.trim().is_empty() {
            return Err(ValidationError(format!("{} must not be empty", R::FIELD)));
        }
        if chars < R::MIN {
            return Err(ValidationError(format!(
                "{} must be at least {} characters",
                R::FIELD,
                R::MIN
            )));
        }
        if value.contains('\0') {
            return Err(ValidationError(format!(
                "{} must not contain NUL characters",
                R::FIELD
            )));
        }
        Ok(Self {
            value,
            rule: PhantomData,
        })
    }
}

impl<R> Text<R> {
    pub fn as_str(&self) -> &str {
        &self.value
    }

    pub fn into_string(self) -> String {
        self.value
    }
}

impl<R> Clone for Text<R> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            rule: PhantomData,
        }
    }
}

impl<R> PartialEq for Text<R> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<R> fmt::Debug for Text<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<R> Serialize for Text<R> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.value)
    }
}

impl<'de, R: TextRule> Deserialize<'de> for Text<R> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Short;
    impl TextRule for Short {
        const FIELD: &'static str = "short";
        const MIN: usize = 1;
        const MAX: usize = 3;
    }

    #[test]
    fn counts_characters_not_bytes() {
        assert!(Text::<Short>::parse("ЖЖЖ".into()).is_ok());
        assert!(Text::<Short>::parse("ЖЖЖЖ".into()).is_err());
    }

    #[test]
    fn rejects_blank_and_nul() {
        assert_eq!(
            Text::<Short>::parse("  ".into()).unwrap_err().0,
            "short must not be empty"
        );
        assert!(Text::<Short>::parse("a\0".into()).is_err());
    }

    #[test]
    fn deserializes_through_the_rule() {
        let err = serde_json::from_str::<Text<Short>>("\"abcd\"").unwrap_err();
        assert!(err.to_string().contains("short must be at most 3"), "{err}");
    }
}

/// The text rules over arbitrary strings.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    struct Short;
    impl TextRule for Short {
        const FIELD: &'static str = "short";
        const MIN: usize = 3;
        const MAX: usize = 8;
    }

    struct Optional;
    impl TextRule for Optional {
        const FIELD: &'static str = "optional";
        const MIN: usize = 0;
        const MAX: usize = 4;
    }

    fn accepts<R: TextRule>(value: &str) -> bool {
        let chars = value.chars().count();
        (R::MIN..=R::MAX).contains(&chars)
            && !(R::MIN > 0 && value.trim().is_empty())
            && !value.contains('\0')
    }

    /// Short strings drawn from letters, spaces, NUL and multi-byte
    /// characters: the edges of every rule.
    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('a'),
                Just(' '),
                Just('\n'),
                Just('\0'),
                Just('я'),
                Just('🙂')
            ],
            0..12,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn text_is_accepted_exactly_by_its_rule(value in text()) {
            match Text::<Short>::parse(value.clone()) {
                Ok(parsed) => {
                    prop_assert!(accepts::<Short>(&value));
                    prop_assert_eq!(parsed.as_str(), value.as_str());
                }
                Err(error) => {
                    prop_assert!(!accepts::<Short>(&value));
                    prop_assert!(error.0.starts_with("short "), "{}", error.0);
                }
            }
            prop_assert_eq!(Text::<Optional>::parse(value.clone()).is_ok(), accepts::<Optional>(&value));
        }
    }
}
