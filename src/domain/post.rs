use serde::{Deserialize, Serialize};

use super::text::{Text, TextRule};
use super::{PostId, UserId};

pub struct PostTextRule;
impl TextRule for PostTextRule {
    const FIELD: &'static str = "text";
    const MIN: usize = 1;
    const MAX: usize = 10_000;
}

pub type PostText = Text<PostTextRule>;

/// A post as the API shows it (and as the feed cache stores it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Post {
    pub id: PostId,
    pub text: String,
    pub author_user_id: UserId,
}

/// The body of `/post/create`.
#[derive(Debug, Deserialize)]
pub struct NewPost {
    pub text: PostText,
}

/// The body of `/post/update`.
#[derive(Debug, Deserialize)]
pub struct PostEdit {
    pub id: PostId,
    pub text: PostText,
}
