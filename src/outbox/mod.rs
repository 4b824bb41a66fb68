//! What a write announces, and how it is published.
//!
//! Each change a handler makes has one function here returning the events
//! that announce it: the live event the hubs fan out to sockets and the
//! feed event that brings the Redis cache up to date. The store writes them
//! in the same transaction as the change; the [`Relay`] publishes them after
//! commit. Nothing here touches the database or the broker directly: the
//! store persists whatever it is handed (the topic as a code), and the relay
//! moves rows from one to the other.
//!
//! ```text
//! handler ─▶ Announcer::<change>() ─▶ store.<write>(change, events) ─▶ outbox table
//! outbox table ─▶ Relay (one instance at a time) ─▶ broker
//! ```

mod relay;

use bytes::Bytes;

pub use self::relay::Relay;
use crate::broker::Topic;
use crate::cache::FeedEvent;
use crate::domain::{Post, PostId, UserId};
use crate::realtime::codec::{self, FollowChange};
use crate::realtime::{Routing, unix_micros};

/// An event to publish once the transaction that wrote it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    topic: Topic,
    routing_key: String,
    body: Bytes,
}

impl OutboxMessage {
    /// How the outbox table keeps the topic.
    pub(crate) fn topic_code(&self) -> i16 {
        match self.topic {
            Topic::Posts => 1,
            Topic::Control => 2,
            Topic::Materialize => 3,
        }
    }

    /// A stored row back as a message; `None` for a topic code this build
    /// does not know.
    pub(crate) fn from_stored(topic_code: i16, routing_key: String, body: Bytes) -> Option<Self> {
        let topic = match topic_code {
            1 => Topic::Posts,
            2 => Topic::Control,
            3 => Topic::Materialize,
            _ => return None,
        };
        Some(Self {
            topic,
            routing_key,
            body,
        })
    }

    pub(crate) fn routing_key(&self) -> &str {
        &self.routing_key
    }

    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }

    fn feed(event: FeedEvent) -> Self {
        Self {
            topic: Topic::Materialize,
            routing_key: String::new(),
            body: event.encode(),
        }
    }
}

/// Builds the events of each change; created once per instance, since the
/// routing of live posts is a deployment setting.
#[derive(Debug, Clone, Copy)]
pub struct Announcer {
    routing: Routing,
}

impl Announcer {
    pub fn new(routing: Routing) -> Self {
        Self { routing }
    }

    /// A new post: live to its author's followers, and into their feeds.
    pub fn post_created(&self, post: &Post) -> Vec<OutboxMessage> {
        vec![
            OutboxMessage {
                topic: Topic::Posts,
                routing_key: self.routing.key(post.author_user_id),
                body: codec::encode_post(post, unix_micros()),
            },
            OutboxMessage::feed(FeedEvent::PostCreated { post: post.id }),
        ]
    }

    /// An edited post: cached feeds show the new text (live clients were
    /// sent the post when it was created and are not told again).
    pub fn post_updated(&self, post: PostId) -> Vec<OutboxMessage> {
        vec![OutboxMessage::feed(FeedEvent::PostUpdated { post })]
    }

    pub fn post_deleted(&self, post: PostId, author: UserId) -> Vec<OutboxMessage> {
        vec![OutboxMessage::feed(FeedEvent::PostDeleted { post, author })]
    }

    /// `follower` started (`follows`) or stopped following `author`: every
    /// instance rebinds the follower's sockets, and the feed is rebuilt.
    pub fn follow_changed(
        &self,
        follower: UserId,
        author: UserId,
        follows: bool,
    ) -> Vec<OutboxMessage> {
        let change = FollowChange {
            follower,
            author,
            follows,
            at_unix_ms: unix_micros() / 1000,
        };
        vec![
            OutboxMessage {
                topic: Topic::Control,
                routing_key: String::new(),
                body: codec::encode_follow(change),
            },
            OutboxMessage::feed(FeedEvent::FollowChanged {
                user: follower,
                author,
            }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcer() -> Announcer {
        Announcer::new("bucket:16".parse().unwrap())
    }

    fn feed_event(message: &OutboxMessage) -> FeedEvent {
        assert_eq!(message.topic, Topic::Materialize);
        assert_eq!(message.routing_key, "");
        FeedEvent::decode(&message.body).unwrap()
    }

    #[test]
    fn topic_codes_round_trip() {
        for topic in [Topic::Posts, Topic::Control, Topic::Materialize] {
            let message = OutboxMessage {
                topic,
                routing_key: "k".into(),
                body: Bytes::from_static(b"b"),
            };
            let stored = OutboxMessage::from_stored(
                message.topic_code(),
                message.routing_key.clone(),
                message.body.clone(),
            );
            assert_eq!(stored, Some(message));
        }
        assert_eq!(
            OutboxMessage::from_stored(0, String::new(), Bytes::new()),
            None
        );
    }

    #[test]
    fn a_new_post_goes_live_under_its_authors_key_and_into_feeds() {
        let announcer = announcer();
        let post = Post {
            id: PostId::new_v7(),
            text: "первый".into(),
            author_user_id: UserId::new_v7(),
        };
        let before = unix_micros();
        let events = announcer.post_created(&post);
        let after = unix_micros();

        assert_eq!(events.len(), 2);
        let live = &events[0];
        assert_eq!(live.topic, Topic::Posts);
        assert_eq!(live.routing_key, announcer.routing.key(post.author_user_id));
        let frame = codec::decode_post(live.body.clone()).unwrap();
        assert_eq!(frame.payload(), codec::post_payload(&post).as_bytes());
        assert_eq!((frame.author, frame.post), (post.author_user_id, post.id));
        assert!((before..=after).contains(&frame.published_at_micros));
        assert_eq!(
            feed_event(&events[1]),
            FeedEvent::PostCreated { post: post.id }
        );
    }

    #[test]
    fn edits_and_deletions_only_touch_feeds() {
        let announcer = announcer();
        let (post, author) = (PostId::new_v7(), UserId::new_v7());
        let updated = announcer.post_updated(post);
        assert_eq!(updated.len(), 1);
        assert_eq!(feed_event(&updated[0]), FeedEvent::PostUpdated { post });
        let deleted = announcer.post_deleted(post, author);
        assert_eq!(deleted.len(), 1);
        assert_eq!(
            feed_event(&deleted[0]),
            FeedEvent::PostDeleted { post, author }
        );
    }

    #[test]
    fn a_follow_change_reaches_every_instance_and_the_feed() {
        let announcer = announcer();
        let (follower, author) = (UserId::new_v7(), UserId::new_v7());
        for follows in [true, false] {
            let events = announcer.follow_changed(follower, author, follows);
            assert_eq!(events.len(), 2);
            assert_eq!(events[0].topic, Topic::Control);
            assert_eq!(events[0].routing_key, "");
            let change = codec::decode_follow(&events[0].body).unwrap();
            assert_eq!(
                (change.follower, change.author, change.follows),
                (follower, author, follows)
            );
            assert_eq!(
                feed_event(&events[1]),
                FeedEvent::FollowChanged {
                    user: follower,
                    author
                }
            );
        }
    }
}
