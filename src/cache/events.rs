//! Feed work messages: what changed, by id only. The worker reads the
//! current truth from PostgreSQL when it applies one, so applying a message
//! twice, or late, leaves the cache as the truth says.

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::domain::{PostId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEvent {
    PostCreated {
        post: PostId,
    },
    PostUpdated {
        post: PostId,
    },
    PostDeleted {
        post: PostId,
        author: UserId,
    },
    /// `user` followed or unfollowed `author`.
    FollowChanged {
        user: UserId,
        author: UserId,
    },
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("undecodable feed event ({0} bytes)")]
pub struct DecodeError(usize);

impl FeedEvent {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(33);
        match self {
            Self::PostCreated { post } => {
                out.put_u8(1);
                out.put_slice(post.as_uuid().as_bytes());
            }
            Self::PostUpdated { post } => {
                out.put_u8(2);
                out.put_slice(post.as_uuid().as_bytes());
            }
            Self::PostDeleted { post, author } => {
                out.put_u8(3);
                out.put_slice(post.as_uuid().as_bytes());
                out.put_slice(author.as_uuid().as_bytes());
            }
            Self::FollowChanged { user, author } => {
                out.put_u8(4);
                out.put_slice(user.as_uuid().as_bytes());
                out.put_slice(author.as_uuid().as_bytes());
            }
        }
        out.freeze()
    }

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let error = DecodeError(body.len());
        let uuid = |at: usize| -> Result<Uuid, DecodeError> {
            body.get(at..at + 16)
                .and_then(|bytes| Uuid::from_slice(bytes).ok())
                .ok_or(error.clone())
        };
        let event = match body.first() {
            Some(1) if body.len() == 17 => Self::PostCreated {
                post: PostId::from_uuid(uuid(1)?),
            },
            Some(2) if body.len() == 17 => Self::PostUpdated {
                post: PostId::from_uuid(uuid(1)?),
            },
            Some(3) if body.len() == 33 => Self::PostDeleted {
                post: PostId::from_uuid(uuid(1)?),
                author: UserId::from_uuid(uuid(17)?),
            },
            Some(4) if body.len() == 33 => Self::FollowChanged {
                user: UserId::from_uuid(uuid(1)?),
                author: UserId::from_uuid(uuid(17)?),
            },
            _ => return Err(error),
        };
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_round_trips() {
        let events = [
            FeedEvent::PostCreated {
                post: PostId::new_v7(),
            },
            FeedEvent::PostUpdated {
                post: PostId::new_v7(),
            },
            FeedEvent::PostDeleted {
                post: PostId::new_v7(),
                author: UserId::new_v7(),
            },
            FeedEvent::FollowChanged {
                user: UserId::new_v7(),
                author: UserId::new_v7(),
            },
        ];
        for event in events {
            assert_eq!(FeedEvent::decode(&event.encode()), Ok(event));
        }
    }

    #[test]
    fn refuses_garbage() {
        assert!(FeedEvent::decode(&[]).is_err());
        assert!(FeedEvent::decode(&[9; 17]).is_err());
        assert!(FeedEvent::decode(&[1; 5]).is_err());
    }
}
