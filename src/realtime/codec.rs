//! Wire formats of the events the broker carries.
//!
//! A post event is a fixed binary header the hub reads without parsing any
//! JSON, followed by the websocket payload itself, so delivering it is a
//! slice and a refcount, never a re-serialisation; the hub copies the
//! payload once behind its websocket frame header, and every subscriber is
//! written that same buffer:
//!
//! ```text
//! [0..16)  author id        [16..32) post id
//! [32..40) published at, microseconds since the Unix epoch, big-endian
//! [40..)   {"postId": ..., "postText": ..., "author_user_id": ...}
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use uuid::Uuid;

use super::wire;
use crate::domain::{Post, PostId, UserId};

const POST_HEADER: usize = 40;
const FOLLOW_LEN: usize = 41;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("event too short: {0} bytes")]
    TooShort(usize),
    #[error("post payload is not UTF-8")]
    NotUtf8,
    #[error("unknown follow change kind {0}")]
    UnknownKind(u8),
}

/// The asyncapi `Post` message, field names as the spec has them.
#[derive(Serialize)]
struct PostPayload<'a> {
    #[serde(rename = "postId")]
    post_id: PostId,
    #[serde(rename = "postText")]
    post_text: &'a str,
    author_user_id: UserId,
}

/// The websocket text of a post, as sent to subscribers.
pub fn post_payload(post: &Post) -> String {
    let payload = PostPayload {
        post_id: post.id,
        post_text: &post.text,
        author_user_id: post.author_user_id,
    };
    serde_json::to_string(&payload).expect("plain data serialises")
}

pub fn encode_post(post: &Post, published_at_micros: u64) -> Bytes {
    let payload = post_payload(post);
    let mut out = BytesMut::with_capacity(POST_HEADER + payload.len());
    out.put_slice(post.author_user_id.as_uuid().as_bytes());
    out.put_slice(post.id.as_uuid().as_bytes());
    out.put_u64(published_at_micros);
    out.put_slice(payload.as_bytes());
    out.freeze()
}

/// A decoded post event, its websocket frame built once for every socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostFrame {
    pub author: UserId,
    pub post: PostId,
    pub published_at_micros: u64,
    /// The whole server-to-client text frame: header, then the payload.
    pub wire: Bytes,
}

impl PostFrame {
    /// The websocket payload, without the frame header.
    pub fn payload(&self) -> &[u8] {
        &self.wire[wire::header_len(self.wire.len())..]
    }
}

/// The frame of a post read from the database rather than the broker.
pub fn stored_post_frame(post: &Post) -> PostFrame {
    PostFrame {
        author: post.author_user_id,
        post: post.id,
        published_at_micros: post.id.unix_ms().unwrap_or(0) * 1000,
        wire: wire::text(post_payload(post).as_bytes()),
    }
}

pub fn decode_post(body: Bytes) -> Result<PostFrame, CodecError> {
    if body.len() < POST_HEADER {
        return Err(CodecError::TooShort(body.len()));
    }
    let author = UserId::from_uuid(uuid_at(&body, 0));
    let post = PostId::from_uuid(uuid_at(&body, 16));
    let published_at_micros = u64::from_be_bytes(body[32..40].try_into().expect("8 bytes"));
    let payload = &body[POST_HEADER..];
    if std::str::from_utf8(payload).is_err() {
        return Err(CodecError::NotUtf8);
    }
    Ok(PostFrame {
        author,
        post,
        published_at_micros,
        wire: wire::text(payload),
    })
}

/// `follower` started (`follows == true`) or stopped following `author`,
/// at `at_unix_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowChange {
    pub follower: UserId,
    pub author: UserId,
    pub follows: bool,
    pub at_unix_ms: u64,
}

pub fn encode_follow(change: FollowChange) -> Bytes {
    let mut out = BytesMut::with_capacity(FOLLOW_LEN);
    out.put_u8(u8::from(change.follows));
    out.put_slice(change.follower.as_uuid().as_bytes());
    out.put_slice(change.author.as_uuid().as_bytes());
    out.put_u64(change.at_unix_ms);
    out.freeze()
}

pub fn decode_follow(body: &[u8]) -> Result<FollowChange, CodecError> {
    if body.len() < FOLLOW_LEN {
        return Err(CodecError::TooShort(body.len()));
    }
    let follows = match body[0] {
        0 => false,
        1 => true,
        other => return Err(CodecError::UnknownKind(other)),
    };
    Ok(FollowChange {
        follower: UserId::from_uuid(uuid_at(body, 1)),
        author: UserId::from_uuid(uuid_at(body, 17)),
        follows,
        at_unix_ms: u64::from_be_bytes(body[33..41].try_into().expect("8 bytes")),
    })
}

fn uuid_at(bytes: &[u8], at: usize) -> Uuid {
    Uuid::from_bytes(bytes[at..at + 16].try_into().expect("16 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post() -> Post {
        Post {
            id: PostId::new_v7(),
            text: "Привет, \"мир\"".into(),
            author_user_id: UserId::new_v7(),
        }
    }

    #[test]
    fn a_stored_post_was_published_when_its_id_was_made() {
        let post = post();
        let made_ms = post.id.unix_ms().unwrap();
        assert_eq!(stored_post_frame(&post).published_at_micros, made_ms * 1000);
    }

    #[test]
    fn post_round_trips_and_payload_is_the_asyncapi_message() {
        let post = post();
        let frame = decode_post(encode_post(&post, 42)).unwrap();
        assert_eq!(frame.author, post.author_user_id);
        assert_eq!(frame.post, post.id);
        assert_eq!(frame.published_at_micros, 42);
        let json: serde_json::Value = serde_json::from_slice(frame.payload()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "postId": post.id.to_string(),
                "postText": "Привет, \"мир\"",
                "author_user_id": post.author_user_id.to_string(),
            })
        );
    }

    #[test]
    fn the_frame_is_the_payload_behind_a_text_frame_header() {
        let body = encode_post(&post(), 1);
        let frame = decode_post(body.clone()).unwrap();
        assert_eq!(frame.payload(), &body[POST_HEADER..]);
        assert_eq!(frame.wire[0], 0x81, "FIN, text");
        assert_eq!(usize::from(frame.wire[1]), 126, "a 16-bit length follows");
        assert_eq!(frame.wire.len(), 4 + body.len() - POST_HEADER);
    }

    #[test]
    fn refuses_truncated_or_corrupt_events() {
        assert_eq!(
            decode_post(Bytes::from_static(b"short")),
            Err(CodecError::TooShort(5))
        );
        let mut bad = encode_post(&post(), 1).to_vec();
        bad.push(0xff);
        assert_eq!(decode_post(Bytes::from(bad)), Err(CodecError::NotUtf8));
        assert_eq!(decode_follow(&[1; 3]), Err(CodecError::TooShort(3)));
        assert_eq!(decode_follow(&[7; 41]), Err(CodecError::UnknownKind(7)));
    }

    #[test]
    fn follow_change_round_trips() {
        let change = FollowChange {
            follower: UserId::new_v7(),
            author: UserId::new_v7(),
            follows: true,
            at_unix_ms: 1_700_000_000_000,
        };
        assert_eq!(decode_follow(&encode_follow(change)).unwrap(), change);
    }
}

/// Round trips and malformed events over arbitrary input.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn user() -> impl Strategy<Value = UserId> {
        any::<u128>().prop_map(|n| UserId::from_uuid(Uuid::from_u128(n)))
    }

    fn post_id() -> impl Strategy<Value = PostId> {
        any::<u128>().prop_map(|n| PostId::from_uuid(Uuid::from_u128(n)))
    }

    proptest! {
        #[test]
        fn posts_round_trip(
            author in user(),
            post in post_id(),
            text in ".{0,64}",
            at in any::<u64>(),
        ) {
            let original = Post { id: post, text: text.clone(), author_user_id: author };
            let frame = decode_post(encode_post(&original, at)).unwrap();
            prop_assert_eq!(frame.author, author);
            prop_assert_eq!(frame.post, post);
            prop_assert_eq!(frame.published_at_micros, at);
            let payload: serde_json::Value = serde_json::from_slice(frame.payload()).unwrap();
            prop_assert_eq!(
                payload,
                serde_json::json!({
                    "postId": post.to_string(),
                    "postText": text,
                    "author_user_id": author.to_string(),
                })
            );
        }

        #[test]
        fn follow_changes_round_trip(
            follower in user(),
            author in user(),
            follows in any::<bool>(),
            at_unix_ms in any::<u64>(),
        ) {
            let change = FollowChange { follower, author, follows, at_unix_ms };
            let encoded = encode_follow(change);
            prop_assert_eq!(encoded.len(), FOLLOW_LEN);
            prop_assert_eq!(decode_follow(&encoded), Ok(change));
        }

        #[test]
        fn any_bytes_decode_as_a_post_or_a_precise_error(
            body in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            match decode_post(Bytes::from(body.clone())) {
                Ok(frame) => {
                    prop_assert!(body.len() >= POST_HEADER);
                    prop_assert_eq!(frame.author.as_uuid().as_bytes(), &body[..16]);
                    prop_assert_eq!(frame.post.as_uuid().as_bytes(), &body[16..32]);
                    prop_assert_eq!(frame.published_at_micros.to_be_bytes(), &body[32..40]);
                    prop_assert_eq!(frame.payload(), &body[POST_HEADER..]);
                }
                Err(CodecError::TooShort(len)) => {
                    prop_assert_eq!(len, body.len());
                    prop_assert!(len < POST_HEADER);
                }
                Err(CodecError::NotUtf8) => {
                    prop_assert!(body.len() >= POST_HEADER);
                    prop_assert!(std::str::from_utf8(&body[POST_HEADER..]).is_err());
                }
                Err(other) => prop_assert!(false, "{other}"),
            }
        }

        #[test]
        fn any_bytes_decode_as_a_follow_change_or_a_precise_error(
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            match decode_follow(&body) {
                Ok(change) => {
                    prop_assert!(body.len() >= FOLLOW_LEN);
                    prop_assert_eq!(u8::from(change.follows), body[0]);
                    prop_assert_eq!(change.follower.as_uuid().as_bytes(), &body[1..17]);
                    prop_assert_eq!(change.author.as_uuid().as_bytes(), &body[17..33]);
                    prop_assert_eq!(change.at_unix_ms.to_be_bytes(), &body[33..41]);
                }
                Err(CodecError::TooShort(len)) => {
                    prop_assert_eq!(len, body.len());
                    prop_assert!(len < FOLLOW_LEN);
                }
                Err(CodecError::UnknownKind(kind)) => {
                    prop_assert!(body.len() >= FOLLOW_LEN);
                    prop_assert_eq!(kind, body[0]);
                    prop_assert!(kind > 1);
                }
                Err(other) => prop_assert!(false, "{other}"),
            }
        }
    }
}
