//! Who is calling: password hashing for `/login`, signed tokens after it,
//! and the rate limits of the endpoints that hash.

mod password;
mod throttle;
mod token;

pub use password::{PasswordError, Passwords};
pub use throttle::{ThrottleSettings, Throttles};
pub use token::{TokenError, Tokens};
