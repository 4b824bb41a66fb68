//! Who is calling: password hashing for `/login`, signed tokens after it.

mod password;
mod token;

pub use password::{PasswordError, Passwords};
pub use token::{TokenError, Tokens};
