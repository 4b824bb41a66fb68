use super::ValidationError;

/// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters, as
/// payment and messaging APIs take them (a UUID is a good one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &[u8]) -> Result<Self, ValidationError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(ValidationError(format!(
                "Idempotency-Key must be 1 to {} characters, got {}",
                Self::MAX_LEN,
                raw.len()
            )));
        }
        if !raw.iter().all(u8::is_ascii_graphic) {
            return Err(ValidationError(
                "Idempotency-Key must be visible ASCII characters (no spaces)".into(),
            ));
        }
        // Visible ASCII is valid UTF-8.
        Ok(Self(String::from_utf8_lossy(raw).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_visible_ascii_up_to_255() {
        for good in [
            &b"a"[..],
            b"0190a3c4-7b1e-7000-8000-000000000000",
            &[b'~'; 255],
        ] {
            assert_eq!(
                IdempotencyKey::parse(good).unwrap().as_str().as_bytes(),
                good
            );
        }
        for bad in [
            &b""[..],
            &[b'k'; 256],
            b"with space",
            b"tab\t",
            b"\x7f",
            "ключ".as_bytes(),
        ] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
