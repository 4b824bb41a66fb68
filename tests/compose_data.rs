//! The documented data scripts against the compose stack, without a Docker
//! engine: db/generate_data.sh and cache/generate_data.sh run with a
//! `docker` stand-in that reports the stack up and runs `docker compose run
//! app1 ...` as the livefeed binary with app1's compose environment, the
//! local PostgreSQL and Redis standing in for the stack's. Rows and keys
//! must land there, and the host's store addresses must not reach the stack.

#[allow(dead_code, unused_imports)]
#[path = "api/support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "support/compose.rs"]
mod stack;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use stack::{ROOT, compose, environment, services};
use support::{fresh_database, sql};

/// Bound on one run of a data script (a debug build seeding a few thousand
/// users takes seconds), and on one Redis command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

/// Stands in for `docker`: `docker compose ps` reports the stack running,
/// `docker compose run ... SERVICE ARGS` runs the livefeed binary with the
/// environment the test derived from that service (`SERVICE.env`) plus the
/// variables passed by name with `-e`, and nothing else from the caller.
/// Every call is appended to `calls`.
const DOCKER_SHIM: &str = r#"#!/usr/bin/env bash
set -euo pipefail
dir="$(dirname "$0")"
printf '%s\n' "$*" >> "$dir/calls"
[[ $1 == compose ]] || exit 1
shift
while [[ $1 == --project-directory || $1 == -f ]]; do shift 2; done
case $1 in
  ps) printf '%s\n' postgres redis rabbitmq app1 app2 nginx ;;
  run)
    shift
    passed=()
    while [[ $1 == -* ]]; do
      if [[ $1 == -e ]]; then passed+=("$2=${!2-}"); shift 2; else shift; fi
    done
    service=$1
    shift
    mapfile -t stack < "$dir/$service.env"
    exec env -i PATH="$PATH" "${stack[@]}" "${passed[@]}" "$SHIM_LIVEFEED_BIN" "$@"
    ;;
  *) exit 1 ;;
esac
"#;

struct Script {
    success: bool,
    stderr: String,
}

fn run_script(shim: &Path, script: &str, args: &[&str], env: &[(&str, &str)]) -> Script {
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap());
    let mut command = Command::new("bash");
    command
        .arg(Path::new(ROOT).join(script))
        .args(args)
        .env_clear()
        .env("PATH", path)
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("SHIM_LIVEFEED_BIN", env!("CARGO_BIN_EXE_livefeed"))
        // The host's addresses, which must not reach the stack.
        .env(
            "DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/not_the_stack",
        )
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("starting the data script");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done.send(());
        output
    });
    if finished.recv_timeout(COMMAND_TIMEOUT).is_err() {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        panic!("{script} {args:?} did not finish within {COMMAND_TIMEOUT:?}");
    }
    let output = waiter.join().unwrap().expect("waiting for the script");
    Script {
        success: output.status.success(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The stack's URL `stack_url` with its address (and credentials) replaced
/// by those of the local service standing in for it.
fn stood_in(stack_url: &str, local: &url::Url, path: &str) -> String {
    let mut url = url::Url::parse(stack_url).expect("a URL in docker-compose.yml");
    url.set_host(local.host_str()).unwrap();
    url.set_port(local.port()).unwrap();
    url.set_username(local.username()).unwrap();
    url.set_password(local.password()).unwrap();
    url.set_path(path);
    url.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_scripts_fill_the_running_stack_through_docker_compose() {
    let database_url = fresh_database().await;
    let local_database = url::Url::parse(&database_url).unwrap();
    let local_redis = url::Url::parse(
        &std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    )
    .unwrap();
    let prefix = format!("lf_compose_test_{}:", uuid::Uuid::new_v4().simple());

    let shim = std::env::temp_dir().join(format!("livefeed-docker-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&shim).unwrap();
    let docker = shim.join("docker");
    std::fs::write(&docker, DOCKER_SHIM).unwrap();
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut app1 = environment(&services(&compose())["app1"]);
    let stack_database = app1["DATABASE_URL"].clone();
    let stack_redis = app1["REDIS_URL"].clone();
    app1.insert(
        "DATABASE_URL".into(),
        stood_in(&stack_database, &local_database, local_database.path()),
    );
    app1.insert("REDIS_URL".into(), stood_in(&stack_redis, &local_redis, ""));
    // The shared Redis of this machine: a prefix of the test's own.
    app1.insert("LIVEFEED_REDIS_PREFIX".into(), prefix.clone());
    let env_file: String = app1
        .iter()
        .map(|(name, value)| format!("{name}={value}\n"))
        .collect();
    std::fs::write(shim.join("app1.env"), env_file).unwrap();

    let shim_dir = shim.clone();
    let (seeded, warmed) = tokio::task::spawn_blocking(move || {
        let env = [("LIVEFEED_SEED_USERS", "2000"), ("LIVEFEED_LOG", "warn")];
        let seeded = run_script(&shim_dir, "db/generate_data.sh", &["--posts", "3000"], &env);
        let warmed = if seeded.success {
            run_script(&shim_dir, "cache/generate_data.sh", &[], &env)
        } else {
            Script {
                success: false,
                stderr: String::new(),
            }
        };
        (seeded, warmed)
    })
    .await
    .unwrap();
    let calls = std::fs::read_to_string(shim.join("calls")).unwrap_or_default();
    assert!(
        seeded.success,
        "db/generate_data.sh failed:\n{}\ncalls:\n{calls}",
        seeded.stderr
    );
    assert!(
        warmed.success,
        "cache/generate_data.sh failed:\n{}\ncalls:\n{calls}",
        warmed.stderr
    );
    assert!(
        seeded.stderr.contains("the compose stack is up"),
        "the script did not notice the stack:\n{}",
        seeded.stderr
    );
    let runs: Vec<&str> = calls
        .lines()
        .filter(|call| call.contains(" run "))
        .collect();
    assert_eq!(
        runs.len(),
        2,
        "one `docker compose run` per script:\n{calls}"
    );
    assert!(
        runs[0].contains("-e LIVEFEED_SEED_USERS") && runs[0].ends_with("app1 seed --posts 3000"),
        "{}",
        runs[0]
    );
    assert!(runs[1].ends_with("app1 warm-cache"), "{}", runs[1]);
    for run in &runs {
        assert!(
            !run.contains("DATABASE_URL") && !run.contains("REDIS_URL"),
            "the host's store addresses were passed into the stack: {run}"
        );
    }

    let db = sql(&database_url).await;
    let users: i64 = db
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    let posts: i64 = db
        .query_one("SELECT count(*) FROM posts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((users, posts), (2000, 3000), "rows in the stack's database");

    let redis = redis::Client::open(app1["REDIS_URL"].as_str()).unwrap();
    // This Redis is shared and may hold millions of keys: SCAN in steps, not
    // KEYS, each step given far longer than the client's default.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(COMMAND_TIMEOUT));
    let mut redis = redis
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let (mut cursor, mut keys) = (0_u64, Vec::<String>::new());
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut redis)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("UNLINK")
            .arg(chunk)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(&shim);
    let name = local_database.path().trim_start_matches('/');
    let admin = sql(&support::base_database_url()).await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await;
    assert!(
        keys.len() > 1000,
        "the warmed feeds in the stack's Redis: {} keys under {prefix}",
        keys.len()
    );
}
