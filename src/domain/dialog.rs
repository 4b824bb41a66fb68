use serde::{Deserialize, Serialize};

use super::UserId;
use super::text::{Text, TextRule};

pub struct MessageTextRule;
impl TextRule for MessageTextRule {
    const FIELD: &'static str = "text";
    const MIN: usize = 1;
    const MAX: usize = 4_000;
}

pub type MessageText = Text<MessageTextRule>;

/// The body of `/dialog/{user_id}/send`.
#[derive(Debug, Deserialize)]
pub struct NewMessage {
    pub text: MessageText,
}

/// A message as `/dialog/{user_id}/list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DialogMessage {
    pub from: UserId,
    pub to: UserId,
    pub text: String,
}
