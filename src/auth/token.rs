use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::UserId;

/// Why a bearer token was refused. Every variant is a 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("missing bearer token")]
    Missing,
    #[error("authorization header is not a bearer token")]
    NotBearer,
    #[error("token has expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    /// Signed by us and unexpired, but its user is not in the database: the
    /// database was replaced while the signing secret stayed.
    #[error("the user of this token does not exist; sign in again")]
    UnknownUser,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: UserId,
    iat: u64,
    exp: u64,
}

/// Issues and checks HS256 tokens. The secret is shared by every instance,
/// so a token from one is accepted by all.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl Tokens {
    /// Fails only on an empty secret.
    pub fn new(secret: &[u8], ttl: Duration) -> Result<Self, jsonwebtoken::errors::Error> {
        // Only HS256: a token claiming `alg: none` or any other algorithm is
        // refused before its signature is even looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            encoding: EncodingKey::from_secret(secret)?,
            decoding: DecodingKey::from_secret(secret)?,
            validation,
            ttl,
        })
    }

    pub fn issue(&self, user: UserId) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user,
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<UserId, TokenError> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(data.claims.sub),
            Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                Err(TokenError::Expired)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }

    /// The user named by an `Authorization: Bearer <token>` header value.
    pub fn verify_header(&self, header: Option<&[u8]>) -> Result<UserId, TokenError> {
        let header = header.ok_or(TokenError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| TokenError::NotBearer)?;
        let (scheme, token) = header.split_once(' ').ok_or(TokenError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::NotBearer);
        }
        self.verify(token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

    fn tokens() -> Tokens {
        Tokens::new(SECRET, Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn round_trips_the_user() {
        let user = UserId::new_v7();
        let token = tokens().issue(user);
        assert_eq!(tokens().verify(&token), Ok(user));
        assert_eq!(
            tokens().verify_header(Some(format!("Bearer {token}").as_bytes())),
            Ok(user)
        );
    }

    #[test]
    fn a_token_lives_exactly_its_ttl() {
        let token = tokens().issue(UserId::new_v7());
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Claims>(
            &token,
            &DecodingKey::from_secret(SECRET).unwrap(),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(claims.exp - claims.iat, 60);
    }

    #[test]
    fn refuses_other_secrets_and_schemes() {
        let token = Tokens::new(b"another-secret-another-secret-xx", Duration::from_secs(60))
            .unwrap()
            .issue(UserId::new_v7());
        assert_eq!(tokens().verify(&token), Err(TokenError::Invalid));
        assert_eq!(tokens().verify_header(None), Err(TokenError::Missing));
        assert_eq!(
            tokens().verify_header(Some(b"Basic dXNlcjpwYXNz")),
            Err(TokenError::NotBearer)
        );
    }

    #[test]
    fn refuses_expired_tokens() {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: UserId::new_v7(),
            iat: now - 120,
            exp: now - 60,
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        assert_eq!(tokens().verify(&expired), Err(TokenError::Expired));
    }
}
