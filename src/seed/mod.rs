//! `livefeed seed`: fills PostgreSQL with a deterministic data set of the
//! course's scale (a million users, tens of millions of follows, a million
//! posts) for load tests and query plans.
//!
//! - Everything comes from one seed: the same seed and sizes give the same
//!   rows, byte for byte (ChaCha8 keystreams, one per table, and
//!   distributions written in this module).
//! - Every user has the same documented password ([`DEFAULT_PASSWORD`]
//!   unless `--password`), hashed once.
//! - Rows stream through `COPY ... FROM STDIN (FORMAT binary, FREEZE)` in
//!   one transaction; secondary indexes and foreign keys are dropped first
//!   and rebuilt from their own definitions after (see [`schema`]), then the
//!   celebrities are flagged and the tables analysed.
//!
//! Memory: 24 bytes per user (ids, popularity order, follower counts);
//! follows and posts are generated as they are written.

mod copy;
mod graph;
mod ids;
mod names;
mod people;
mod posts;
pub(crate) mod progress;
mod random;
mod schema;

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use argon2::Argon2;
use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::PasswordHash;
use chrono::{NaiveDate, Utc};
use clap::Args;
use uuid::Uuid;

use crate::config::DatabaseConfig;
use copy::{copy_follows, copy_posts, copy_users};
use graph::{FollowCount, Popularity};
use people::{timestamp, user_ids};
use progress::thousands;
use random::{SeedRng, Stream};

/// The password of every seeded user.
pub const DEFAULT_PASSWORD: &str = "livefeed-seed";
/// Posts are dated in the year before this day; see [`SeedArgs::until`].
pub const DEFAULT_UNTIL: &str = "2026-11-01";

const DAY_MS: u64 = 86_400_000;
/// Posts are written over the last year before `--until`...
const POSTS_WINDOW_MS: u64 = 365 * DAY_MS;
/// ...by users who registered in the three years before that.
const USERS_WINDOW_MS: u64 = 3 * 365 * DAY_MS;

#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Users to create.
    #[arg(long, env = "LIVEFEED_SEED_USERS", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub users: u32,

    /// Posts to create.
    #[arg(long, env = "LIVEFEED_SEED_POSTS", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub posts: u64,

    /// Median number of users each user follows (log-normal around it,
    /// at most 1000).
    #[arg(long, env = "LIVEFEED_SEED_FOLLOWS", default_value_t = 25,
          value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub follows: u32,

    /// Seed of every random choice: the same seed and sizes give the same data.
    #[arg(long, env = "LIVEFEED_SEED", default_value_t = 42)]
    pub seed: u64,

    /// The password of every seeded user (at least 8 characters).
    #[arg(long, env = "LIVEFEED_SEED_PASSWORD", default_value = DEFAULT_PASSWORD,
          value_parser = parse_password)]
    pub password: String,

    /// Users with more followers than this get `celebrity = true` (the
    /// service reads the same variable).
    #[arg(long, env = "LIVEFEED_CELEBRITY_THRESHOLD", default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub celebrity_threshold: i64,

    /// Posts are dated over the year before this day (UTC), users registered
    /// over the three years before that. Fixed by default so that the data
    /// do not depend on the day they are generated.
    #[arg(long, env = "LIVEFEED_SEED_UNTIL", default_value = DEFAULT_UNTIL,
          value_parser = parse_until)]
    pub until: NaiveDate,

    /// Delete every user, follow, post, dialog message and outbox event
    /// first; without it, a database that has users is left alone.
    #[arg(long, env = "LIVEFEED_SEED_REPLACE")]
    pub replace: bool,
}

fn parse_password(raw: &str) -> Result<String, String> {
    let chars = raw.chars().count();
    if !(8..=1024).contains(&chars) {
        return Err(format!(
            "the password must be 8 to 1024 characters (what /login accepts), got {chars}"
        ));
    }
    Ok(raw.to_owned())
}

fn parse_until(raw: &str) -> Result<NaiveDate, String> {
    let date = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| format!("expected a day YYYY-MM-DD, got {raw:?}"))?;
    if date < NaiveDate::from_ymd_opt(1975, 1, 1).expect("valid date") {
        return Err("the data need four years after 1970 before --until".into());
    }
    Ok(date)
}

/// What a seed run wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    pub database: String,
    pub users: u64,
    pub follows: u64,
    pub posts: u64,
    /// Users above the celebrity threshold.
    pub celebrities: u64,
    pub celebrity_threshold: i64,
    /// The most followed users and their follower counts, most first.
    pub top_followed: Vec<(Uuid, u32)>,
    /// Median follower count.
    pub median_followers: u32,
    /// A user who follows others, to log in as.
    pub sample_user: Option<Uuid>,
    pub password: String,
    pub elapsed: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seeded database {} in {:.1} s:",
            self.database,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "  users        {:>12}", thousands(self.users))?;
        writeln!(
            f,
            "  follows      {:>12}  ({:.1} per user)",
            thousands(self.follows),
            self.follows as f64 / self.users.max(1) as f64
        )?;
        writeln!(f, "  posts        {:>12}", thousands(self.posts))?;
        writeln!(
            f,
            "  celebrities  {:>12}  (more than {} followers)",
            thousands(self.celebrities),
            thousands(self.celebrity_threshold as u64)
        )?;
        writeln!(
            f,
            "  followers    median {}, most followed:",
            self.median_followers
        )?;
        for (id, followers) in &self.top_followed {
            writeln!(f, "    {id}  {:>10}", thousands(u64::from(*followers)))?;
        }
        if let Some(id) = self.sample_user {
            writeln!(
                f,
                "  log in as any user with password {:?}, e.g. {{\"id\":\"{id}\",\"password\":{:?}}}",
                self.password, self.password
            )?;
        }
        Ok(())
    }
}

/// Creates and migrates the database, then fills it (see the module docs).
pub async fn run(args: &SeedArgs) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let url = &args.database.database_url;
    let (pg, tls) = crate::store::connection(url).context("parsing the database URL")?;
    let database = pg.get_dbname().unwrap_or_default().to_owned();
    let windows = Windows::before(args.until);
    if args.until > Utc::now().date_naive() {
        eprintln!(
            "seed: warning: --until {} is in the future: new posts will sort below seeded ones",
            args.until
        );
    }
    let expected_follows =
        FollowCount::new(args.follows, args.users).mean() * f64::from(args.users);
    eprintln!(
        "seed: {} users, ~{} follows, {} posts into database {database} (seed {}, posts dated {} .. {})",
        thousands(u64::from(args.users)),
        thousands(expected_follows as u64),
        thousands(args.posts),
        args.seed,
        timestamp(windows.posts_from).date_naive(),
        args.until,
    );

    crate::store::migrate(url)
        .await
        .context("creating and migrating the database")?;
    let mut pg = pg;
    pg.application_name("livefeed seed");
    let (mut client, connection) = pg
        .connect(tls)
        .await
        .with_context(|| format!("connecting to database {database}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("seed: database connection closed: {e}");
        }
    });

    let tx = client.transaction().await?;
    // Waits at most this long for the service's transactions to let go.
    tx.batch_execute(
        "SET LOCAL lock_timeout = '60s'; \
         SET LOCAL maintenance_work_mem = '1GB'; \
         LOCK TABLE users, friends, posts IN ACCESS EXCLUSIVE MODE",
    )
    .await
    .context("locking the users, friends and posts tables")?;
    let existing: i64 = tx
        .query_one("SELECT count(*) FROM users", &[])
        .await?
        .get(0);
    if existing > 0 && !args.replace {
        bail!(
            "database {database} already has {} users: refusing to seed over them. \
             Pass --replace (or LIVEFEED_SEED_REPLACE=true) to delete every user, follow, \
             post, dialog message and outbox event first, or choose another --database-url",
            thousands(existing as u64)
        );
    }
    if args.replace {
        tx.batch_execute("TRUNCATE users, friends, posts, dialog_messages, outbox CASCADE")
            .await
            .context("emptying the tables (--replace)")?;
        if existing > 0 {
            eprintln!(
                "seed: --replace: deleted {} users and everything that refers to them",
                thousands(existing as u64)
            );
        }
    } else {
        // Empty already; truncating in this transaction is what lets COPY
        // write the rows frozen (no later vacuum rewrite, no hint-bit writes).
        tx.batch_execute("TRUNCATE users, friends, posts CASCADE")
            .await?;
    }
    let deferred = schema::defer(&tx).await?;

    let password_hash = hash_password(&args.password, args.seed).await?;
    let ids = user_ids(
        args.seed,
        args.users,
        windows.users_from,
        windows.users_until,
    );
    let popularity = Popularity::new(args.seed, args.users);

    copy_users(&tx, args.seed, &ids, &password_hash, started).await?;
    let followers = copy_follows(&tx, args, &ids, &popularity, windows.until, started).await?;
    let posts = copy_posts(&tx, args, &ids, &popularity, &windows, started).await?;

    schema::restore(&tx, &deferred, started).await?;
    let celebrities: Vec<Uuid> = followers
        .iter()
        .zip(&ids)
        .filter(|&(&count, _)| i64::from(count) > args.celebrity_threshold)
        .map(|(_, &id)| id)
        .collect();
    let flagged = tx
        .execute(
            "UPDATE users SET celebrity = true WHERE id = ANY($1)",
            &[&celebrities],
        )
        .await
        .context("flagging the celebrities")?;
    let commit_started = Instant::now();
    tx.commit().await.context("committing the data set")?;
    eprintln!(
        "seed: committed in {:.1} s; analysing",
        commit_started.elapsed().as_secs_f64()
    );
    client
        .batch_execute("ANALYZE users, friends, posts")
        .await
        .context("analysing the seeded tables")?;

    let follows: u64 = followers.iter().map(|&c| u64::from(c)).sum();
    let summary = Summary {
        database,
        users: ids.len() as u64,
        follows,
        posts,
        celebrities: flagged,
        celebrity_threshold: args.celebrity_threshold,
        top_followed: top_followed(&followers, &ids, 5),
        median_followers: median(&followers),
        sample_user: ids.first().copied().filter(|_| follows > 0),
        password: args.password.clone(),
        elapsed: started.elapsed(),
    };
    eprintln!("seed: done in {:.1} s", summary.elapsed.as_secs_f64());
    print!("{summary}");
    Ok(summary)
}

/// The time windows of the data set, in Unix milliseconds.
struct Windows {
    users_from: u64,
    users_until: u64,
    posts_from: u64,
    until: u64,
}

impl Windows {
    fn before(until: NaiveDate) -> Self {
        let until = until
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_millis() as u64;
        let posts_from = until - POSTS_WINDOW_MS;
        Self {
            users_from: posts_from - USERS_WINDOW_MS,
            users_until: posts_from,
            posts_from,
            until,
        }
    }
}

/// Argon2id with the service's default parameters, computed once. The salt
/// comes from the seed so that the data set is the same on every run (it
/// protects nothing here: the password is documented).
async fn hash_password(password: &str, seed: u64) -> anyhow::Result<String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        SeedRng::new(seed, Stream::PasswordSalt).fill(&mut salt);
        let hash: PasswordHash = Argon2::default()
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("hashing the seed password: {e}"))?;
        Ok(hash.to_string())
    })
    .await?
}

fn top_followed(followers: &[u32], ids: &[Uuid], k: usize) -> Vec<(Uuid, u32)> {
    let mut top: Vec<(u32, usize)> = Vec::with_capacity(k + 1);
    for (index, &count) in followers.iter().enumerate() {
        if top.len() < k || count > top[top.len() - 1].0 {
            let at = top.partition_point(|&(c, _)| c >= count);
            top.insert(at, (count, index));
            top.truncate(k);
        }
    }
    top.into_iter()
        .map(|(count, index)| (ids[index], count))
        .collect()
}

fn median(values: &[u32]) -> u32 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    let middle = sorted.len() / 2;
    *sorted.select_nth_unstable(middle).1
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        seed: SeedArgs,
    }

    fn parse(args: &[&str]) -> Result<SeedArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("seed").chain(args.iter().copied())).map(|c| c.seed)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let args = parse(&["--database-url", "postgres://postgres@localhost/x"]).unwrap();
        assert_eq!(args.users, 1_000_000);
        assert_eq!(args.posts, 1_000_000);
        assert_eq!(args.seed, 42);
        assert_eq!(args.password, DEFAULT_PASSWORD);
        assert_eq!(args.celebrity_threshold, 10_000);
        assert!(!args.replace);
        assert_eq!(args.until.to_string(), DEFAULT_UNTIL);
    }

    #[test]
    fn rejects_a_short_password_and_a_zero_size() {
        let short = parse(&["--password", "short"]).unwrap_err();
        assert!(
            short.to_string().contains("8 to 1024 characters"),
            "{short}"
        );
        assert!(parse(&["--users", "0"]).is_err());
        assert!(parse(&["--until", "yesterday"]).is_err());
    }

    #[test]
    fn windows_put_registrations_before_posts() {
        let windows = Windows::before(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
        assert_eq!(windows.until - windows.posts_from, 365 * DAY_MS);
        assert_eq!(windows.users_until, windows.posts_from);
        assert!(windows.users_from < windows.users_until);
    }

    #[test]
    fn top_followed_is_ordered_most_first() {
        let ids: Vec<Uuid> = (0..6).map(Uuid::from_u128).collect();
        let top = top_followed(&[3, 9, 1, 9, 7, 0], &ids, 3);
        assert_eq!(top, vec![(ids[1], 9), (ids[3], 9), (ids[4], 7)]);
        assert_eq!(median(&[5, 1, 3]), 3);
    }

    #[tokio::test]
    async fn password_hash_is_argon2id_verifiable_and_deterministic() {
        use argon2::password_hash::PasswordVerifier;
        let hash = hash_password(DEFAULT_PASSWORD, 42).await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert_eq!(hash, hash_password(DEFAULT_PASSWORD, 42).await.unwrap());
        assert_ne!(hash, hash_password(DEFAULT_PASSWORD, 43).await.unwrap());
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(
            Argon2::default()
                .verify_password(DEFAULT_PASSWORD.as_bytes(), &parsed)
                .is_ok()
        );
    }
}
