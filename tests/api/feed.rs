use reqwest::{Method, StatusCode};

use crate::support::{TestApp, expect_error, fresh_database};

#[tokio::test]
async fn feed_holds_the_followed_users_posts_newest_first() {
    let app = TestApp::spawn().await;
    let reader = app.register("Читатель", "Первый").await;
    let alice = app.register("Алиса", "Селезнёва").await;
    let bob = app.register("Боб", "Марли").await;
    let stranger = app.register("Незнакомец", "Чужой").await;
    app.follow(&reader, &alice).await;
    app.follow(&reader, &bob).await;

    app.create_post(&alice, "a1").await;
    app.create_post(&stranger, "s1").await;
    app.create_post(&bob, "b1").await;
    app.create_post(&reader, "own").await;
    app.create_post(&alice, "a2").await;

    app.feed_settles_to(&reader, "", &["a2", "b1", "a1"]).await;
    let feed = app.feed(&reader, "").await;
    assert_eq!(feed[1]["author_user_id"], bob.id.as_str());
    assert!(app.feed(&stranger, "").await.is_empty());
}

#[tokio::test]
async fn feed_pages_with_offset_and_limit() {
    let app = TestApp::spawn().await;
    let reader = app.register("Читатель", "Второй").await;
    let author = app.register("Писатель", "Плодовитый").await;
    app.follow(&reader, &author).await;
    for n in 0..25 {
        app.create_post(&author, &format!("p{n}")).await;
    }

    let newest: Vec<String> = (15..25).rev().map(|n| format!("p{n}")).collect();
    let newest: Vec<&str> = newest.iter().map(String::as_str).collect();
    app.feed_settles_to(&reader, "", &newest).await;

    app.feed_settles_to(&reader, "?offset=20&limit=3", &["p4", "p3", "p2"])
        .await;
    app.feed_settles_to(&reader, "?offset=23&limit=10", &["p1", "p0"])
        .await;
    app.feed_settles_to(&reader, "?offset=25", &[]).await;
}

/// The feed reaches back `LIVEFEED_FEED_DEPTH` posts, from the cache and
/// from PostgreSQL alike (Redis unreachable): a page is cut there, and one
/// past it is empty, so a deep offset costs PostgreSQL no more than the depth
/// per followed author.
#[tokio::test]
async fn feed_pages_stop_at_the_configured_depth() {
    let database = fresh_database().await;
    for extra in [&[][..], &["--redis-url", "redis://127.0.0.1:1"][..]] {
        let mut args = vec!["--feed-depth", "20"];
        args.extend_from_slice(extra);
        let app = TestApp::spawn_with(&database, &args).await;
        let reader = app.register("Читатель", "Глубокий").await;
        let author = app.register("Писатель", "Давний").await;
        app.follow(&reader, &author).await;
        for n in 0..25 {
            app.create_post(&author, &format!("p{n}")).await;
        }
        let newest: Vec<String> = (5..25).rev().map(|n| format!("p{n}")).collect();
        let newest: Vec<&str> = newest.iter().map(String::as_str).collect();
        app.feed_settles_to(&reader, "?limit=1000", &newest).await;
        app.feed_settles_to(&reader, "?offset=17&limit=10", &["p7", "p6", "p5"])
            .await;
        app.feed_settles_to(&reader, "?offset=20", &[]).await;
        app.feed_settles_to(&reader, "?offset=100000&limit=1000", &[])
            .await;
    }
}

#[tokio::test]
async fn unfollow_removes_the_author_from_the_feed() {
    let app = TestApp::spawn().await;
    let reader = app.register("Читатель", "Третий").await;
    let author = app.register("Автор", "Бывший").await;
    app.follow(&reader, &author).await;
    app.follow(&reader, &author).await; // following twice is harmless
    app.create_post(&author, "hello").await;
    app.feed_settles_to(&reader, "", &["hello"]).await;

    let path = format!("/friend/delete/{}", author.id);
    let response = app
        .call(Method::PUT, &path, Some(&reader.token), None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    app.feed_settles_to(&reader, "", &[]).await;
    // Unfollowing someone not followed is not an error either.
    let again = app
        .call(Method::PUT, &path, Some(&reader.token), None)
        .await;
    assert_eq!(again.status(), StatusCode::OK);
}

#[tokio::test]
async fn friend_changes_refuse_unknown_users_bad_ids_and_self() {
    let app = TestApp::spawn().await;
    let user = app.register("Один", "Одинокий").await;
    let nobody = uuid::Uuid::now_v7();
    for verb in ["set", "delete"] {
        let unknown = app
            .call(
                Method::PUT,
                &format!("/friend/{verb}/{nobody}"),
                Some(&user.token),
                None,
            )
            .await;
        expect_error(unknown, StatusCode::NOT_FOUND).await;
        let bad = app
            .call(
                Method::PUT,
                &format!("/friend/{verb}/xyz"),
                Some(&user.token),
                None,
            )
            .await;
        expect_error(bad, StatusCode::BAD_REQUEST).await;
    }
    let own = app
        .call(
            Method::PUT,
            &format!("/friend/set/{}", user.id),
            Some(&user.token),
            None,
        )
        .await;
    expect_error(own, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn feed_paging_parameters_are_validated() {
    let app = TestApp::spawn().await;
    let user = app.register("Пейджер", "Строгий").await;
    for query in [
        "?limit=0",
        "?limit=1001",
        "?limit=-1",
        "?offset=-5",
        "?offset=100001",
        "?limit=abc",
        "?limit=2.5",
    ] {
        let response = app
            .get(&format!("/post/feed{query}"), Some(&user.token))
            .await;
        let message = expect_error(response, StatusCode::BAD_REQUEST).await;
        assert!(message.starts_with("invalid query"), "{query}: {message}");
    }
}
