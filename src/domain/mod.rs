//! Validated domain types. Everything a handler sees has been parsed into one
//! of these, so code past the HTTP edge never re-checks its input.

mod dialog;
mod id;
mod idempotency;
mod page;
mod post;
mod text;
mod user;

pub use dialog::{DialogMessage, MessageText, NewMessage};
pub use id::{PostId, UserId};
pub use idempotency::IdempotencyKey;
pub use page::FeedPage;
pub use post::{NewPost, Post, PostEdit, PostText};
pub use user::{BirthDate, Credentials, NewUser, Password, User, UserSearch};

/// Input that does not satisfy a domain rule; the message is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);
