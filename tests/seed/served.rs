//! What the seeded and warmed data look like from outside: the real server
//! serves the seeded users (login, profile, search, a feed from the cache),
//! and the warmed feeds equal a one-reader build.

use super::*;
use livefeed::cache::{SetState, StoredSet, unpack_users};

/// `cache/generate_data.sh` builds every feed; then the real server on
/// port 0 against the seeded database: a seeded user logs in with the
/// documented password, reads a profile, searches, and reads a feed, which
/// comes from the cache and equals the truth.
pub(super) async fn api_serves_the_seeded_users(database_url: &str, db: &tokio_postgres::Client) {
    let threshold = CELEBRITY_THRESHOLD.to_string();
    // The prefix the test harness gives the server (the database's name).
    let prefix = format!("{}:", database_url.rsplit('/').next().unwrap());
    let warmed = run_script(
        "cache/generate_data.sh",
        database_url,
        &["--celebrity-threshold", &threshold],
        &[("LIVEFEED_REDIS_PREFIX", &prefix)],
    )
    .await;
    assert!(
        warmed.success,
        "cache/generate_data.sh failed\n{}",
        warmed.output()
    );
    assert!(
        warmed.stderr.contains("built 10000 feeds"),
        "{}",
        warmed.output()
    );
    let mut redis = redis::Client::open(
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    )
    .unwrap()
    .get_multiplexed_async_connection()
    .await
    .expect("Redis is reachable");
    let feed_keys: Vec<String> = db
        .query("SELECT id::text FROM users", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| format!("{prefix}feed:{}", row.get::<_, String>(0)))
        .collect();
    let cached: usize = redis::cmd("EXISTS")
        .arg(&feed_keys)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(cached, 10_000, "one cached feed per user");
    warmed_feeds_are_the_truth(db, &mut redis, &prefix).await;

    let app = TestApp::spawn_with(database_url, &["--celebrity-threshold", &threshold]).await;
    let base = app.address.clone();
    let http = app.client.clone();

    // A reader who follows someone who has posted.
    let row = db
        .query_one(
            "SELECT u.id::text, u.first_name, u.second_name, u.birthdate::text, u.city \
             FROM users u WHERE EXISTS ( \
                 SELECT 1 FROM friends f JOIN posts p ON p.author_id = f.friend_id \
                 WHERE f.user_id = u.id) \
             ORDER BY u.id LIMIT 1",
            &[],
        )
        .await
        .expect("a user whose feed is not empty");
    let (id, first_name, second_name): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));
    let (birthdate, city): (String, String) = (row.get(3), row.get(4));

    let login = http
        .post(format!("{base}/login"))
        .json(&json!({ "id": id, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        login.status(),
        StatusCode::OK,
        "{}",
        login.text().await.unwrap()
    );
    let login: Value = login.json().await.unwrap();
    let token = login["token"].as_str().expect("a token").to_owned();

    let profile: Value = ok_json(
        http.get(format!("{base}/user/get/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(profile["id"], id.as_str());
    assert_eq!(profile["first_name"], first_name.as_str());
    assert_eq!(profile["second_name"], second_name.as_str());
    assert_eq!(profile["birthdate"], birthdate.as_str());
    assert_eq!(profile["city"], city.as_str());

    let first_prefix: String = first_name.chars().take(4).collect();
    let last_prefix: String = second_name.chars().take(3).collect();
    let found: Value = ok_json(
        http.get(search_url(&base, &first_name, &second_name))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let found = found.as_array().expect("search answers an array");
    assert!(found.iter().any(|u| u["id"] == id.as_str()), "{found:?}");
    let by_prefix: Value = ok_json(
        http.get(search_url(&base, &first_prefix, &last_prefix))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let by_prefix = by_prefix.as_array().expect("search answers an array");
    assert!(!by_prefix.is_empty() && by_prefix.len() <= 100);
    assert!(by_prefix.iter().all(|u| {
        u["first_name"].as_str().unwrap().starts_with(&first_prefix)
            && u["second_name"].as_str().unwrap().starts_with(&last_prefix)
    }));

    let followed: HashSet<String> = db
        .query(
            "SELECT friend_id::text FROM friends WHERE user_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let feed: Value = ok_json(
        http.get(format!("{base}/post/feed?offset=0&limit=10"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let feed = feed.as_array().expect("the feed is an array");
    assert!(!feed.is_empty(), "the seeded user's feed is empty");
    assert!(feed.len() <= 10);
    for post in feed {
        let author = post["author_user_id"].as_str().expect("an author");
        assert!(
            followed.contains(author),
            "{post} is not by a followed user"
        );
        assert!(!post["text"].as_str().unwrap().is_empty());
    }
    let ids: Vec<String> = feed
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    let truth: Vec<String> = db
        .query(
            "SELECT p.id::text FROM posts p JOIN friends f ON f.friend_id = p.author_id \
             WHERE f.user_id = $1::text::uuid ORDER BY p.id DESC LIMIT 10",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids, truth, "the cached feed is the truth, newest first");
    // Each post came from the cache: the reader's feed, or (celebrities
    // are merged at read time) its author's timeline.
    for post in feed {
        let author = post["author_user_id"].as_str().unwrap();
        let post_id = post["id"].as_str().unwrap();
        let mut holders = Vec::new();
        for key in [
            format!("{prefix}feed:{id}"),
            format!("{prefix}author:{author}"),
        ] {
            let raw: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            let held = raw
                .and_then(|raw| StoredSet::decode(&raw))
                .is_some_and(|set| set.ids.iter().any(|id| id.to_string() == post_id));
            if held {
                holders.push(key);
            }
        }
        assert!(!holders.is_empty(), "{post_id} is in no cached set");
    }

    app.stop().await.expect("the server ran cleanly");
}

/// The warmed feeds of the readers who follow the most others and the most
/// celebrities hold what a one-reader build would: the newest posts of the
/// non-celebrities they follow, the right sentinel, and their celebrities.
async fn warmed_feeds_are_the_truth(
    db: &tokio_postgres::Client,
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) {
    let readers: Vec<String> = db
        .query(
            "(SELECT user_id::text FROM friends GROUP BY user_id ORDER BY count(*) DESC, 1 LIMIT 10) \
             UNION \
             (SELECT f.user_id::text FROM friends f JOIN users u ON u.id = f.friend_id \
              WHERE u.celebrity GROUP BY f.user_id ORDER BY count(*) DESC, 1 LIMIT 10)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(readers.len() >= 10, "{readers:?}");
    let mut with_celebrities = 0;
    for reader in &readers {
        let posts: Vec<String> = db
            .query(
                "SELECT p.id::text FROM posts p JOIN friends f ON f.friend_id = p.author_id \
                 JOIN users u ON u.id = p.author_id AND NOT u.celebrity \
                 WHERE f.user_id = $1::text::uuid ORDER BY p.id DESC LIMIT 1001",
                &[reader],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let state = if posts.len() > 1000 {
            SetState::Partial
        } else {
            SetState::Complete
        };
        let expected: Vec<String> = posts.into_iter().take(1000).collect();
        let raw: Vec<u8> = redis::cmd("GET")
            .arg(format!("{prefix}feed:{reader}"))
            .query_async(redis)
            .await
            .unwrap();
        let stored = StoredSet::decode(&raw).expect("a warmed feed is well formed");
        assert_eq!(stored.state, state, "the warmed feed of {reader}");
        let cached: Vec<String> = stored.ids.iter().map(|id| id.to_string()).collect();
        assert_eq!(cached, expected, "the warmed feed of {reader}");

        let mut celebrities: Vec<String> = db
            .query(
                "SELECT f.friend_id::text FROM friends f JOIN users u ON u.id = f.friend_id \
                 WHERE f.user_id = $1::text::uuid AND u.celebrity",
                &[reader],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        with_celebrities += usize::from(!celebrities.is_empty());
        celebrities.sort();
        let raw: Vec<u8> = redis::cmd("GET")
            .arg(format!("{prefix}celebs:{reader}"))
            .query_async(redis)
            .await
            .unwrap();
        let mut cached: Vec<String> = unpack_users(&raw)
            .expect("whole ids")
            .iter()
            .map(|id| id.to_string())
            .collect();
        cached.sort();
        assert_eq!(cached, celebrities, "the warmed celebrities of {reader}");
    }
    assert!(with_celebrities > 0, "no reader followed a celebrity");
}

fn search_url(base: &str, first_name: &str, last_name: &str) -> url::Url {
    let mut url = url::Url::parse(&format!("{base}/user/search")).unwrap();
    url.query_pairs_mut()
        .append_pair("first_name", first_name)
        .append_pair("last_name", last_name);
    url
}

async fn ok_json(response: reqwest::Response) -> Value {
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}
