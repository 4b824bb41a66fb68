//! `db/generate_data.sh` and `cache/generate_data.sh` end to end, at a small
//! size: the script runs the real `livefeed seed` binary into fresh
//! databases named `livefeed_test_*` (which `scripts/test` drops if a run
//! leaves them behind), the data are checked in SQL, a second seed refuses
//! without `--replace`, the same seed gives the same rows; the cache script
//! then builds every feed in Redis, and the real server serves the seeded
//! users from there.

#[allow(dead_code, unused_imports)]
#[path = "api/support/mod.rs"]
mod support;

#[path = "seed/served.rs"]
mod served;

use std::collections::HashSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::TestApp;
use tokio_postgres::NoTls;

const USERS: &str = "10000";
const POSTS: &str = "20000";
/// Low enough that 10,000 users have a few celebrities.
const CELEBRITY_THRESHOLD: i64 = 1_000;
/// The documented password of every seeded user.
const PASSWORD: &str = "livefeed-seed";
/// Bound on one run of the script (a debug build seeding 10,000 users takes
/// seconds); the child is killed past it.
const SEED_TIMEOUT: Duration = Duration::from_secs(240);

fn base_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn fresh_database_url() -> String {
    let mut url = url::Url::parse(&base_database_url()).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&format!("livefeed_test_{}", uuid::Uuid::new_v4().simple()));
    url.to_string()
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn output(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// Runs the data script `script` (relative to the repository) with ARGS and
/// the test's binary against `database_url`, killing it if it outlives
/// [`SEED_TIMEOUT`].
fn generate_data(script: &str, database_url: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let script = format!("{}/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .args(args)
        .env("LIVEFEED_BIN", env!("CARGO_BIN_EXE_livefeed"))
        .env("DATABASE_URL", database_url)
        .env("LIVEFEED_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in [
        "LIVEFEED_SEED_USERS",
        "LIVEFEED_SEED_POSTS",
        "LIVEFEED_SEED_FOLLOWS",
        "LIVEFEED_SEED",
        "LIVEFEED_SEED_PASSWORD",
        "LIVEFEED_SEED_REPLACE",
        "LIVEFEED_SEED_UNTIL",
        "LIVEFEED_CELEBRITY_THRESHOLD",
        "LIVEFEED_REDIS_PREFIX",
        "LIVEFEED_WARM_USERS",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let mut child = command.spawn().expect("starting the data script");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + SEED_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling the seed") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{script} {args:?} did not finish within {SEED_TIMEOUT:?}; stderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        success: status.success(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

async fn seed(database_url: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    run_script("db/generate_data.sh", database_url, args, env).await
}

async fn run_script(
    script: &'static str,
    database_url: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Run {
    let (url, args, env) = (
        database_url.to_owned(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        generate_data(script, &url, &args, &env)
    })
    .await
    .expect("the seed thread did not panic")
}

async fn sql(database_url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .expect("connecting to the seeded database");
    tokio::spawn(connection);
    client
}

async fn count(db: &tokio_postgres::Client, query: &str) -> i64 {
    db.query_one(query, &[])
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .get(0)
}

/// A digest of every seeded row, in key order.
async fn digest(db: &tokio_postgres::Client) -> Vec<String> {
    let mut digests = Vec::new();
    for query in [
        "SELECT md5(string_agg(concat_ws('|', id, first_name, second_name, birthdate, biography, \
         city, password_hash, created_at, celebrity), ',' ORDER BY id)) FROM users",
        "SELECT md5(string_agg(concat_ws('|', user_id, friend_id, created_at), ',' \
         ORDER BY user_id, friend_id)) FROM friends",
        "SELECT md5(string_agg(concat_ws('|', id, author_id, text, created_at, updated_at), ',' \
         ORDER BY id)) FROM posts",
    ] {
        let row = db.query_one(query, &[]).await.expect(query);
        digests.push(row.get::<_, Option<String>>(0).expect("a non-empty table"));
    }
    digests
}

/// The secondary index definitions and foreign keys of the seeded tables.
async fn schema(db: &tokio_postgres::Client) -> Vec<String> {
    let rows = db
        .query(
            "SELECT indexdef FROM pg_indexes \
             WHERE schemaname = 'public' AND tablename IN ('users', 'friends', 'posts') \
             UNION ALL \
             SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) \
             FROM pg_constraint \
             WHERE conrelid IN ('users'::regclass, 'friends'::regclass, 'posts'::regclass) \
             ORDER BY 1",
            &[],
        )
        .await
        .expect("reading the schema");
    rows.iter().map(|row| row.get(0)).collect()
}

async fn drop_database(database_url: &str) {
    let name = database_url.rsplit('/').next().unwrap().to_owned();
    let admin = sql(&base_database_url()).await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_data_seeds_a_deterministic_data_set_the_api_serves() {
    let threshold = CELEBRITY_THRESHOLD.to_string();
    let flags = [
        "--users",
        USERS,
        "--posts",
        POSTS,
        "--celebrity-threshold",
        &threshold,
    ];

    // Sizes from the environment, the threshold as a flag.
    let first = fresh_database_url();
    let run = seed(
        &first,
        &["--celebrity-threshold", &threshold],
        &[
            ("LIVEFEED_SEED_USERS", USERS),
            ("LIVEFEED_SEED_POSTS", POSTS),
        ],
    )
    .await;
    assert!(run.success, "the first seed failed\n{}", run.output());
    assert!(run.stdout.contains("most followed"), "{}", run.output());
    assert!(
        run.stderr.contains("rows/s"),
        "progress on stderr\n{}",
        run.output()
    );

    let db = sql(&first).await;
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 10_000);
    assert_eq!(count(&db, "SELECT count(*) FROM posts").await, 20_000);
    let follows = count(&db, "SELECT count(*) FROM friends").await;
    assert!(
        (200_000..450_000).contains(&follows),
        "{follows} follows for 10,000 users"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM friends WHERE user_id = friend_id"
        )
        .await,
        0,
        "self-follows"
    );
    // Most users follow tens of others; a few are followed by thousands.
    let typical = count(
        &db,
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY n) FROM \
         (SELECT count(*) AS n FROM friends GROUP BY user_id) c",
    )
    .await;
    assert!((15..=40).contains(&typical), "median follows {typical}");
    let most = count(
        &db,
        "SELECT max(n) FROM (SELECT count(*) AS n FROM friends GROUP BY friend_id) c",
    )
    .await;
    assert!(most > 2_000, "the most followed user has {most} followers");
    for table in ["users", "posts"] {
        let not_v7 = count(
            &db,
            &format!(
                "SELECT count(*) FROM {table} WHERE substr(id::text, 15, 1) <> '7' \
                 OR substr(id::text, 20, 1) NOT IN ('8', '9', 'a', 'b')"
            ),
        )
        .await;
        assert_eq!(not_v7, 0, "{table} ids that are not UUIDv7");
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT password_hash) FROM users WHERE password_hash LIKE '$argon2id$%'"
        )
        .await,
        1,
        "one argon2id hash for everybody"
    );
    let celebrities = count(&db, "SELECT count(*) FROM users WHERE celebrity").await;
    assert!(celebrities > 0, "no user above {threshold} followers");
    let misflagged = count(
        &db,
        &format!(
            "SELECT count(*) FROM users u WHERE u.celebrity <> \
             ((SELECT count(*) FROM friends f WHERE f.friend_id = u.id) > {threshold})"
        ),
    )
    .await;
    assert_eq!(
        misflagged, 0,
        "celebrity flags disagree with follower counts"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM posts WHERE created_at > now()").await,
        0,
        "posts from the future"
    );
    // The indexes and foreign keys dropped for the load are all back.
    let migrated_only = fresh_database_url();
    livefeed::store::migrate(&migrated_only)
        .await
        .expect("migrating an empty database");
    let reference = schema(&sql(&migrated_only).await).await;
    drop_database(&migrated_only).await;
    assert_eq!(schema(&db).await, reference);
    let first_digest = digest(&db).await;

    // A second seed refuses to write over the users...
    let refused = seed(&first, &flags, &[]).await;
    assert!(
        !refused.success,
        "seeded over existing users\n{}",
        refused.output()
    );
    let output = refused.output();
    assert!(
        output.contains("already has 10,000 users") && output.contains("--replace"),
        "not the clear refusal:\n{output}"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 10_000);
    // ...unless told to replace them: the same seed writes the same rows.
    let replaced = seed(&first, &[&flags[..], &["--replace"][..]].concat(), &[]).await;
    assert!(replaced.success, "--replace failed\n{}", replaced.output());
    assert_eq!(
        digest(&db).await,
        first_digest,
        "--replace changed the data"
    );

    // Another database seeded alike holds identical data.
    let second = fresh_database_url();
    let run = seed(&second, &flags, &[]).await;
    assert!(run.success, "the second database failed\n{}", run.output());
    assert_eq!(
        digest(&sql(&second).await).await,
        first_digest,
        "the same seed gave different data"
    );
    drop_database(&second).await;

    served::api_serves_the_seeded_users(&first, &db).await;
    drop(db);
    drop_database(&first).await;
}
