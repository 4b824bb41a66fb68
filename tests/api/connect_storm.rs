//! Many sockets connecting at once: their follows reads share statements,
//! and each socket still gets exactly its own user's authors.

use futures_util::future::join_all;

use crate::support::{FeedClient, TestApp};

const AUTHORS: usize = 3;
/// Far more than the reads in flight at once, so that reads queue up and
/// share statements.
const READERS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_connecting_together_each_get_their_own_users_authors() {
    let app = TestApp::spawn().await;
    let mut authors = Vec::new();
    for n in 0..AUTHORS {
        authors.push(app.register("Автор", &format!("Номер{n}")).await);
    }
    let mut readers = Vec::new();
    for n in 0..READERS {
        let reader = app.register("Читатель", &format!("Номер{n}")).await;
        app.follow(&reader, &authors[n % AUTHORS]).await;
        readers.push(reader);
    }

    // Two sockets per reader (two tabs), so a statement may ask for the
    // same user twice.
    let mut sockets = join_all(
        readers
            .iter()
            .flat_map(|reader| [reader, reader])
            .map(|reader| FeedClient::connect(&app, &reader.token)),
    )
    .await;
    // In this order, a socket subscribed to another reader's author gets
    // that author's post first, or a post it should never get.
    let mut posts = Vec::new();
    for (n, author) in authors.iter().enumerate() {
        posts.push(app.create_post(author, &format!("пост {n}")).await);
    }
    for (n, socket) in sockets.iter_mut().enumerate() {
        let reader = n / 2;
        assert_eq!(
            socket.next_post().await["postId"],
            posts[reader % AUTHORS].as_str(),
            "reader {reader}, socket {n}"
        );
    }
}
