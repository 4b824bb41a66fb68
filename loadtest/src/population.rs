//! The run's users: seeded straight into PostgreSQL with COPY (thousands of
//! rows in well under a second, no argon2), or borrowed from what the
//! database already holds; removed again at the end unless `--keep`.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use crate::marker::TAG;
use crate::opts::Common;

/// Bytes of COPY data sent per message.
const COPY_CHUNK: usize = 1 << 20;
/// Seeding and cleaning up are bounded like everything else.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(300);
/// Not an argon2 hash: nobody can log in as a seeded user, tokens are minted.
const PLACEHOLDER_HASH: &str = "!loadtest:no-login";

/// An edge `(follower, author)`: indices into [`Population::users`].
pub type Follow = (u32, u32);

pub struct Population {
    db: Client,
    pub run: String,
    pub users: Vec<Uuid>,
    /// Whether the users are this run's own (deleted at the end) or
    /// borrowed (only this run's posts are deleted).
    seeded: bool,
    keep: bool,
}

impl Population {
    /// Inserts `count` users and the `follows` edges among them.
    pub async fn seed(
        common: &Common,
        run: &str,
        count: usize,
        follows: &[Follow],
    ) -> anyhow::Result<Self> {
        let db = connect(&common.database_url).await?;
        let users: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
        let first_name = name_prefix(run);
        let sql = "COPY users (id, first_name, second_name, birthdate, biography, city, \
                   password_hash) FROM STDIN";
        bounded(
            "seeding users",
            copy_lines(&db, sql, users.len(), |i, out| {
                let _ = writeln!(
                    out,
                    "{}\t{first_name}\tU{i:07}\t1990-01-01\t\tLoadtown\t{PLACEHOLDER_HASH}",
                    users[i]
                );
            }),
        )
        .await?;
        let sql = "COPY friends (user_id, friend_id) FROM STDIN";
        bounded(
            "seeding follow edges",
            copy_lines(&db, sql, follows.len(), |i, out| {
                let (follower, author) = follows[i];
                let _ = writeln!(
                    out,
                    "{}\t{}",
                    users[follower as usize], users[author as usize]
                );
            }),
        )
        .await?;
        Ok(Self {
            db,
            run: run.to_owned(),
            users,
            seeded: true,
            keep: common.keep,
        })
    }

    /// The first `limit` users of the database (by id) and the follow edges
    /// among them.
    pub async fn existing(
        common: &Common,
        run: &str,
        limit: usize,
    ) -> anyhow::Result<(Self, Vec<Follow>)> {
        let db = connect(&common.database_url).await?;
        let limit = i64::try_from(limit).context("too many users")?;
        let rows = bounded(
            "reading users",
            db.query("SELECT id FROM users ORDER BY id LIMIT $1", &[&limit]),
        )
        .await?;
        let users: Vec<Uuid> = rows.iter().map(|row| row.get(0)).collect();
        let index: HashMap<Uuid, u32> = users
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as u32))
            .collect();
        let rows = bounded(
            "reading follow edges",
            db.query(
                "SELECT user_id, friend_id FROM friends \
                 WHERE user_id = ANY($1) AND friend_id = ANY($1)",
                &[&users],
            ),
        )
        .await?;
        let follows = rows
            .iter()
            .map(|row| (index[&row.get::<_, Uuid>(0)], index[&row.get::<_, Uuid>(1)]))
            .collect();
        let population = Self {
            db,
            run: run.to_owned(),
            users,
            seeded: false,
            keep: common.keep,
        };
        Ok((population, follows))
    }

    /// The users `ids` of the database's own data set (e.g. the readers a
    /// query picked from `db/generate_data.sh`'s million), as they are:
    /// nothing seeded, only this run's posts deleted at the end.
    pub async fn listed(common: &Common, run: &str, users: Vec<Uuid>) -> anyhow::Result<Self> {
        let db = connect(&common.database_url).await?;
        Ok(Self {
            db,
            run: run.to_owned(),
            users,
            seeded: false,
            keep: common.keep,
        })
    }

    /// Gives every user `per_user` posts (for feeds to read), without
    /// publishing them live.
    pub async fn seed_posts(&self, per_user: usize) -> anyhow::Result<u64> {
        let sql = "COPY posts (id, author_id, text) FROM STDIN";
        let total = self.users.len() * per_user;
        bounded(
            "seeding posts",
            copy_lines(&self.db, sql, total, |i, out| {
                let _ = writeln!(
                    out,
                    "{}\t{}\t{TAG}{}:seeded:{i}",
                    Uuid::now_v7(),
                    self.users[i % self.users.len()],
                    self.run
                );
            }),
        )
        .await
    }

    /// The first name of every seeded user, for `/user/search`.
    pub fn first_name(&self) -> String {
        name_prefix(&self.run)
    }

    /// Deletes what the run wrote, unless `--keep`. Never fails the run:
    /// problems are reported on stderr.
    pub async fn cleanup(self) {
        if self.keep {
            eprintln!(
                "kept run {}: {} users (first_name {}), posts with text {TAG}{}:...",
                self.run,
                self.users.len(),
                self.first_name(),
                self.run
            );
            return;
        }
        let result = if self.seeded {
            // Edges, posts and messages go with their users (ON DELETE CASCADE).
            bounded(
                "deleting the run's users",
                self.db
                    .execute("DELETE FROM users WHERE id = ANY($1)", &[&self.users]),
            )
            .await
        } else {
            let pattern = format!("{TAG}{}:%", self.run);
            bounded(
                "deleting the run's posts",
                self.db
                    .execute("DELETE FROM posts WHERE text LIKE $1", &[&pattern]),
            )
            .await
        };
        if let Err(e) = result {
            eprintln!("warning: cleanup of run {} failed: {e:#}", self.run);
        }
    }
}

fn name_prefix(run: &str) -> String {
    format!("Lt{run}")
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = bounded(
        "connecting to PostgreSQL",
        tokio_postgres::connect(url, NoTls),
    )
    .await
    .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("warning: PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// COPY of `count` rows, each written by `line` as tab-separated text.
async fn copy_lines(
    db: &Client,
    sql: &str,
    count: usize,
    mut line: impl FnMut(usize, &mut String),
) -> Result<u64, tokio_postgres::Error> {
    let sink = db.copy_in::<_, Bytes>(sql).await?;
    futures_util::pin_mut!(sink);
    let mut chunk = String::with_capacity(COPY_CHUNK + 1024);
    for i in 0..count {
        line(i, &mut chunk);
        if chunk.len() >= COPY_CHUNK {
            sink.send(Bytes::from(std::mem::take(&mut chunk))).await?;
        }
    }
    if !chunk.is_empty() {
        sink.send(Bytes::from(chunk)).await?;
    }
    sink.finish().await
}

async fn bounded<T, E>(what: &str, work: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(DATABASE_TIMEOUT, work).await {
        Ok(result) => result.with_context(|| what.to_owned()),
        Err(_) => anyhow::bail!("{what}: no answer from PostgreSQL in {DATABASE_TIMEOUT:?}"),
    }
}
