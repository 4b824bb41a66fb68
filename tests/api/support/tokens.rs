//! Tokens the tests sign themselves, as a client or an attacker would.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::SECRET;

/// `claims` signed with `secret` (HS256).
pub fn sign(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Two tokens for `user` the server must refuse: one signed with another
/// secret, one signed with the server's but expired a minute ago.
pub fn forged_and_expired(user: &str) -> [String; 2] {
    let now = jsonwebtoken::get_current_timestamp();
    [
        sign(
            json!({ "sub": user, "exp": now + 600 }),
            "some-other-secret-some-other-secret",
        ),
        sign(
            json!({ "sub": user, "iat": now - 120, "exp": now - 60 }),
            SECRET,
        ),
    ]
}
