//! Bearer tokens minted with the instances' shared secret, as `/login`
//! would issue them (HS256, claims `sub`, `iat`, `exp`), without paying
//! for thousands of argon2 password checks.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use uuid::Uuid;

/// Long enough for any run.
const TTL_SECS: u64 = 24 * 3600;
/// What the server requires of LIVEFEED_JWT_SECRET.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Serialize)]
struct Claims {
    sub: Uuid,
    iat: u64,
    exp: u64,
}

pub struct Minter {
    key: EncodingKey,
    header: Header,
}

impl Minter {
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= MIN_SECRET_BYTES,
            "the JWT secret must be the instances' LIVEFEED_JWT_SECRET (at least {MIN_SECRET_BYTES} bytes)"
        );
        Ok(Self {
            key: EncodingKey::from_secret(secret.as_bytes())?,
            header: Header::new(Algorithm::HS256),
        })
    }

    pub fn mint(&self, user: Uuid) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user,
            iat: now,
            exp: now + TTL_SECS,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
            .expect("HS256 signing of plain claims cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};
    use serde::Deserialize;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[derive(Deserialize)]
    struct Decoded {
        sub: Uuid,
    }

    #[test]
    fn tokens_verify_with_the_same_secret() {
        let user = Uuid::now_v7();
        let token = Minter::new(SECRET).unwrap().mint(user);
        let decoded = jsonwebtoken::decode::<Decoded>(
            &token,
            &DecodingKey::from_secret(SECRET.as_bytes()).unwrap(),
            &Validation::new(Algorithm::HS256),
        )
        .unwrap();
        assert_eq!(decoded.claims.sub, user);
        assert!(Minter::new("short").is_err());
    }
}
