//! The three bulk loads of `livefeed seed`: users, follows and posts, each
//! streamed through one `COPY ... FROM STDIN (FORMAT binary, FREEZE)` inside
//! the seed's transaction, generated row by row as they are written.
//! It owns the column lists and their binary types; it never decides what a
//! row holds (that is `people`, `graph` and `posts`) nor touches the schema.

use std::pin::pin;
use std::time::Instant;

use anyhow::Context;
use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use super::graph::{Authors, Follows, Popularity};
use super::people::{Lexicon, Users, timestamp};
use super::posts::Posts;
use super::progress::Progress;
use super::random::{SeedRng, Stream};
use super::{SeedArgs, Windows, ids};

pub(super) async fn copy_users(
    tx: &Transaction<'_>,
    seed: u64,
    ids: &[Uuid],
    password_hash: &str,
    started: Instant,
) -> anyhow::Result<()> {
    let sink = tx
        .copy_in(
            "COPY users (id, first_name, second_name, birthdate, biography, city, password_hash, created_at) \
             FROM STDIN (FORMAT binary, FREEZE)",
        )
        .await
        .context("starting COPY users")?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[
            Type::UUID,
            Type::TEXT,
            Type::TEXT,
            Type::DATE,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TIMESTAMPTZ,
        ],
    ));
    let lexicon = Lexicon::new();
    let mut users = Users::new(seed, &lexicon);
    let mut progress = Progress::new("users", "users", ids.len() as u64, started);
    for &id in ids {
        let row = users.row(id);
        let values: [&(dyn ToSql + Sync); 8] = [
            &row.id,
            &row.first_name,
            &row.second_name,
            &row.birthdate,
            &row.biography,
            &row.city,
            &password_hash,
            &row.created_at,
        ];
        writer
            .as_mut()
            .write(&values)
            .await
            .context("writing users")?;
        progress.add(1);
    }
    writer.finish().await.context("finishing COPY users")?;
    progress.finish();
    Ok(())
}

/// Answers each user's follower count.
pub(super) async fn copy_follows(
    tx: &Transaction<'_>,
    args: &SeedArgs,
    ids: &[Uuid],
    popularity: &Popularity,
    until_ms: u64,
    started: Instant,
) -> anyhow::Result<Vec<u32>> {
    let sink = tx
        .copy_in("COPY friends (user_id, friend_id, created_at) FROM STDIN (FORMAT binary, FREEZE)")
        .await
        .context("starting COPY friends")?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[Type::UUID, Type::UUID, Type::TIMESTAMPTZ],
    ));
    let mut follows = Follows::new(args.seed, args.follows, popularity);
    let mut dates = SeedRng::new(args.seed, Stream::FollowDates);
    let mut followers = vec![0u32; ids.len()];
    let mut list = Vec::new();
    let mut progress = Progress::new("friends", "followers", ids.len() as u64, started);
    for (follower, follower_id) in ids.iter().enumerate() {
        follows.of(follower as u32, &mut list);
        let joined = ids::unix_ms(follower_id);
        for &followed in &list {
            followers[followed as usize] += 1;
            let followed_id = &ids[followed as usize];
            // Some time after both had registered.
            let since = joined.max(ids::unix_ms(followed_id));
            let created_at = timestamp(since + dates.below(until_ms.saturating_sub(since).max(1)));
            let values: [&(dyn ToSql + Sync); 3] = [follower_id, followed_id, &created_at];
            writer
                .as_mut()
                .write(&values)
                .await
                .context("writing follows")?;
        }
        progress.add(list.len() as u64);
    }
    writer.finish().await.context("finishing COPY friends")?;
    progress.finish();
    Ok(followers)
}

/// Answers the number of posts written.
pub(super) async fn copy_posts(
    tx: &Transaction<'_>,
    args: &SeedArgs,
    ids: &[Uuid],
    popularity: &Popularity,
    windows: &Windows,
    started: Instant,
) -> anyhow::Result<u64> {
    let sink = tx
        .copy_in(
            "COPY posts (id, author_id, text, created_at, updated_at) \
             FROM STDIN (FORMAT binary, FREEZE)",
        )
        .await
        .context("starting COPY posts")?;
    let mut writer = pin!(BinaryCopyInWriter::new(
        sink,
        &[
            Type::UUID,
            Type::UUID,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
        ],
    ));
    let mut posts = Posts::new(
        args.seed,
        args.posts,
        windows.posts_from,
        windows.until,
        Authors::new(popularity),
    );
    let mut progress = Progress::new("posts", "posts", args.posts, started);
    for index in 0..args.posts {
        let row = posts.row(index);
        let values: [&(dyn ToSql + Sync); 5] = [
            &row.id,
            &ids[row.author as usize],
            &row.text,
            &row.created_at,
            &row.created_at,
        ];
        writer
            .as_mut()
            .write(&values)
            .await
            .context("writing posts")?;
        progress.add(1);
    }
    let written = writer.finish().await.context("finishing COPY posts")?;
    progress.finish();
    Ok(written)
}
