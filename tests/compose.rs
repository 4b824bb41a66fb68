//! `docker-compose.yml` and the files it mounts, checked on a machine without
//! a Docker engine: the YAML and what it references, the app environment
//! against the names the binary itself accepts, `.env.example` against the
//! variables the file reads, the deploy configurations run by their own
//! programs (nginx, HAProxy), the healthcheck commands run against a real
//! instance and a real nginx, and the documented data scripts driven
//! through `docker compose` with the stack's stores stood in for by the
//! local PostgreSQL and Redis.

#[allow(dead_code, unused_imports)]
#[path = "api/support/mod.rs"]
mod support;

#[path = "support/nginx.rs"]
mod nginx;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_norway::Value;

use nginx::{Nginx, free_local_port};
use support::{TestApp, fresh_database, sql};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Bound on one healthcheck command and on one run of a data script (a
/// debug build seeding a few thousand users takes seconds).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// docker-compose.yml with its `<<` merge keys applied, as compose sees it.
fn compose() -> Value {
    let mut value: Value =
        serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    value
        .apply_merge()
        .expect("the merge keys of docker-compose.yml apply");
    value
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("services is a mapping")
        .iter()
        .map(|(name, service)| (name.as_str().unwrap().to_owned(), service.clone()))
        .collect()
}

/// The services that run the livefeed image (built from this repository).
fn app_services(compose: &Value) -> BTreeMap<String, Value> {
    services(compose)
        .into_iter()
        .filter(|(_, service)| service["build"].as_str() == Some("."))
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().expect("a string item").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `depends_on` in either of its forms: a list, or a mapping with conditions.
fn depends_on(service: &Value) -> BTreeMap<String, Option<String>> {
    match &service["depends_on"] {
        Value::Sequence(_) => strings(&service["depends_on"])
            .into_iter()
            .map(|name| (name, None))
            .collect(),
        Value::Mapping(map) => map
            .iter()
            .map(|(name, how)| {
                let condition = how["condition"].as_str().map(str::to_owned);
                (name.as_str().unwrap().to_owned(), condition)
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .map(|map| {
            map.iter()
                .map(|(name, value)| {
                    let value = match value {
                        Value::String(s) => with_defaults(s),
                        other => serde_norway::to_string(other).unwrap().trim().to_owned(),
                    };
                    (name.as_str().unwrap().to_owned(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `text` with each `${NAME:-default}` replaced by its default, as compose
/// does without a `.env` or such a variable in its environment.
fn with_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("an unclosed ${") + start;
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, default)| default));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The names inside `${NAME...}` in `text` (not `$${...}`, which compose
/// leaves to the container's shell).
fn interpolated(text: &str) -> BTreeSet<String> {
    text.match_indices("${")
        .filter(|(at, _)| !text[..*at].ends_with('$'))
        .map(|(at, _)| {
            text[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// The environment variables `livefeed ARGS --help` lists (`[env: NAME...]`).
fn env_names_in_help(args: &[&str]) -> BTreeSet<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_livefeed"))
        .args(args)
        .arg("--help")
        .output()
        .expect("running livefeed --help");
    assert!(output.status.success(), "livefeed {args:?} --help failed");
    let help = String::from_utf8(output.stdout).unwrap();
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_service_volume_and_mounted_file_referenced_exists() {
    let compose = compose();
    let services = services(&compose);
    let volumes: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .expect("top-level volumes")
        .keys()
        .map(|name| name.as_str().unwrap().to_owned())
        .collect();
    let networks: BTreeSet<String> = compose["networks"]
        .as_mapping()
        .map(|map| map.keys().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    let mut used_volumes = BTreeSet::new();
    for (name, service) in &services {
        assert!(
            service["image"].is_string() || service["build"].is_string(),
            "service {name} has neither an image nor a build"
        );
        for dependency in depends_on(service).keys() {
            assert!(
                services.contains_key(dependency),
                "service {name} depends on {dependency}, which is no service"
            );
            // A service that is left out by default cannot be waited for by
            // one that is not.
            if service["profiles"].is_null() {
                assert!(
                    services[dependency]["profiles"].is_null(),
                    "{name} (always started) depends on {dependency}, which only starts with a profile"
                );
            }
        }
        for profile in strings(&service["profiles"]) {
            assert_eq!(profile, "monitoring", "{name}: unknown profile {profile}");
        }
        for network in strings(&service["networks"]) {
            assert!(networks.contains(&network), "{name}: no network {network}");
        }
        for mount in strings(&service["volumes"]) {
            let source = mount.split(':').next().unwrap();
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    Path::new(ROOT).join(source).exists(),
                    "{name} mounts {source}, which is not in the repository"
                );
            } else {
                assert!(
                    volumes.contains(source),
                    "{name} mounts the volume {source}, which is not declared"
                );
                used_volumes.insert(source.to_owned());
            }
        }
    }
    assert_eq!(
        used_volumes, volumes,
        "declared volumes that no service uses"
    );
}

#[test]
fn the_app_environment_is_what_the_binary_accepts() {
    let mut accepted = env_names_in_help(&["serve"]);
    accepted.extend(env_names_in_help(&[]));
    // The parse must see the flags' names, else every check below is empty.
    for name in ["DATABASE_URL", "LIVEFEED_LISTEN", "LIVEFEED_LOG"] {
        assert!(
            accepted.contains(name),
            "{name} not found in `livefeed serve --help`"
        );
    }
    let compose = compose();
    let apps = app_services(&compose);
    assert!(
        apps.len() >= 2,
        "expected the instances app1 and app2, found {:?}",
        apps.keys()
    );
    let mut instance_ids = BTreeSet::new();
    for (name, service) in &apps {
        let env = environment(service);
        for variable in env.keys() {
            assert!(
                accepted.contains(variable),
                "{name} is given {variable}, which `livefeed serve` does not read"
            );
        }
        assert!(
            instance_ids.insert(env.get("LIVEFEED_INSTANCE_ID").cloned()),
            "{name} shares its LIVEFEED_INSTANCE_ID (its queue name) with another instance"
        );
    }
}

#[test]
fn env_example_lists_every_variable_the_file_reads() {
    let read_by_compose = interpolated(&read("docker-compose.yml"));
    let listed: BTreeSet<String> = read(".env.example")
        .lines()
        .filter_map(|line| {
            let line = line.trim_start_matches('#').trim();
            let (name, _) = line.split_once('=')?;
            (!name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()))
            .then(|| name.to_owned())
        })
        .filter(|name| !name.starts_with("COMPOSE_"))
        .collect();
    assert!(read_by_compose.contains("LIVEFEED_JWT_SECRET"));
    assert_eq!(
        listed, read_by_compose,
        ".env.example (left) and the ${{...}} of docker-compose.yml (right) differ"
    );
}

#[test]
fn only_the_api_is_published_beyond_loopback() {
    let compose = compose();
    let mut published = 0;
    for (name, service) in services(&compose) {
        for port in strings(&service["ports"]) {
            published += 1;
            if name == "nginx" {
                continue;
            }
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} on every interface; the stores and tools are for this host only"
            );
        }
        if service["build"].as_str() == Some(".") {
            assert!(
                service["ports"].is_null(),
                "{name}: the instances are reached through nginx"
            );
        }
    }
    assert!(
        published >= 5,
        "PostgreSQL, Redis, AMQP, the management UI and the API"
    );
}

#[test]
fn nginx_prometheus_and_haproxy_point_at_services_that_exist() {
    let compose = compose();
    let services = services(&compose);
    let apps: BTreeSet<String> = app_services(&compose).into_keys().collect();
    // The port the instances listen on, which nginx and Prometheus must use.
    let listen_ports: BTreeSet<String> = app_services(&compose)
        .values()
        .map(|app| {
            let listen = environment(app)["LIVEFEED_LISTEN"].clone();
            listen.rsplit(':').next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        listen_ports.len(),
        1,
        "the instances listen on {listen_ports:?}"
    );
    let port = listen_ports.first().unwrap();
    let port_of = |address: &str| address.rsplit(':').next().unwrap().to_owned();

    // nginx: every upstream is an instance, re-resolved, and waited for
    // until healthy.
    let upstreams = read("deploy/nginx-upstreams.conf");
    assert!(upstreams.contains("resolver 127.0.0.11"), "Docker's DNS");
    let nginx_hosts: BTreeSet<String> = upstreams
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("server "))
        .map(|line| {
            assert!(
                line.split_whitespace().any(|word| word == "resolve"),
                "{line}: without `resolve` nginx keeps the address it saw at start"
            );
            let address = line.split_whitespace().nth(1).unwrap();
            assert_eq!(&port_of(address), port, "{line}");
            address.split(':').next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        nginx_hosts, apps,
        "nginx's upstream servers and the app services"
    );
    let nginx_waits = depends_on(&services["nginx"]);
    for app in &apps {
        assert_eq!(
            nginx_waits.get(app),
            Some(&Some("service_healthy".to_owned())),
            "nginx starts once {app} is healthy"
        );
    }

    // Prometheus scrapes every instance.
    let prometheus: Value = serde_norway::from_str(&read("deploy/prometheus.yml")).unwrap();
    let targets: BTreeSet<String> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| job["static_configs"].as_sequence().unwrap().iter())
        .flat_map(|config| strings(&config["targets"]))
        .map(|target| {
            assert_eq!(&port_of(&target), port, "Prometheus target {target}");
            target.split(':').next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(targets, apps, "Prometheus targets and the app services");

    // HAProxy balances the RabbitMQ node services.
    let haproxy_hosts: BTreeSet<String> = read("deploy/haproxy.cfg")
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("server "))
        .map(|line| {
            let address = line.split_whitespace().nth(2).unwrap();
            address.split(':').next().unwrap().to_owned()
        })
        .collect();
    assert!(!haproxy_hosts.is_empty());
    for host in &haproxy_hosts {
        assert!(
            services.contains_key(host),
            "HAProxy balances {host}, which is no service"
        );
    }
}

#[test]
fn haproxy_accepts_its_configuration() {
    let output = Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(Path::new(ROOT).join("deploy/haproxy.cfg"))
        .output()
        .expect("running haproxy -c (scripts/test installs haproxy)");
    assert!(
        output.status.success(),
        "haproxy -c:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every metric the Grafana dashboard queries is one the code exports
/// (histograms by their `_bucket`/`_sum`/`_count` series). The per-route
/// HTTP metrics come with the observe branch (issue 12's operator's view).
#[test]
fn the_dashboard_queries_metrics_that_exist() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/livefeed.json"))
            .expect("the dashboard is JSON");
    let datasource: Value = serde_norway::from_str(&read(
        "deploy/grafana/provisioning/datasources/prometheus.yml",
    ))
    .unwrap();
    let uid = datasource["datasources"][0]["uid"].as_str().unwrap();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("livefeed_") {
                    let name = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| word.strip_suffix(suffix))
                        .unwrap_or(word);
                    queried.insert(name.to_owned());
                }
            }
        }
    }
    assert!(queried.len() >= 8, "the dashboard queries {queried:?}");
    let mut sources = String::new();
    collect_sources(&Path::new(ROOT).join("src"), &mut sources);
    // A counter may be registered without the `_total` its encoder appends.
    let exported = |name: &str| {
        [Some(name), name.strip_suffix("_total")]
            .into_iter()
            .flatten()
            .any(|name| sources.contains(&format!("\"{name}\"")))
    };
    let missing: Vec<&String> = queried.iter().filter(|name| !exported(name)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no code exports: {missing:?}"
    );
}

fn collect_sources(dir: &Path, into: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The `healthcheck.test` of `service`, `["CMD", program, args...]`.
fn healthcheck(service: &Value) -> Vec<String> {
    let test = strings(&service["healthcheck"]["test"]);
    assert_eq!(test.first().map(String::as_str), Some("CMD"), "{test:?}");
    test[1..].to_vec()
}

/// Runs a healthcheck command with `from` (the address inside the
/// container) replaced by `to`; answers whether it passed.
fn run_healthcheck(command: &[String], from: &str, to: &str) -> bool {
    let command: Vec<String> = command.iter().map(|arg| arg.replace(from, to)).collect();
    assert!(
        command.iter().any(|arg| arg.contains(to)),
        "the healthcheck {command:?} does not name {from}"
    );
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running the healthcheck");
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the healthcheck {command:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthchecks_pass_on_a_ready_instance_and_fail_without_one() {
    let compose = compose();
    let services = services(&compose);
    let app_check = healthcheck(&services["app1"]);
    let nginx_check = healthcheck(&services["nginx"]);

    let app = TestApp::spawn().await;
    let app_address: std::net::SocketAddr =
        app.address.trim_start_matches("http://").parse().unwrap();
    let nobody = free_local_port();
    let nginx = Nginx::start(&[app_address]).await;

    let (app_port, nobody_port) = (app_address.port().to_string(), nobody.port().to_string());
    let nginx_address = nginx.address.to_string();
    let (app_ok, app_down, nginx_ok) = tokio::task::spawn_blocking(move || {
        (
            run_healthcheck(
                &app_check,
                "127.0.0.1/8080",
                &format!("127.0.0.1/{app_port}"),
            ),
            run_healthcheck(
                &app_check,
                "127.0.0.1/8080",
                &format!("127.0.0.1/{nobody_port}"),
            ),
            run_healthcheck(
                &nginx_check,
                "http://127.0.0.1/",
                &format!("http://{nginx_address}/"),
            ),
        )
    })
    .await
    .unwrap();
    assert!(app_ok, "the app healthcheck fails on a ready instance");
    assert!(
        !app_down,
        "the app healthcheck passes with no instance listening"
    );
    assert!(
        nginx_ok,
        "the nginx healthcheck fails:\n{}",
        nginx.error_log()
    );
    drop(nginx);
    app.stop().await.unwrap();
}

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
