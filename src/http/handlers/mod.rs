//! One function per endpoint. Each takes domain values already parsed and
//! authenticated by the dispatcher, so none of them touches the raw request.

pub mod dialogs;
pub mod friends;
pub mod health;
pub mod posts;
pub mod users;
