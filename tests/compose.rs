//! `docker-compose.yml` and the files it mounts, checked on a machine without
//! a Docker engine: the YAML and what it references, the app environment
//! against the names the binary itself accepts, `.env.example` against the
//! variables the file reads, the deploy configurations run by their own
//! programs (nginx, HAProxy), the healthcheck commands run against a
//! real instance and a real nginx, and the served process's memory setting. tests/compose_data.rs runs the data
//! scripts through `docker compose`.

#[allow(dead_code, unused_imports)]
#[path = "api/support/mod.rs"]
mod support;

#[allow(dead_code, reason = "the access log is read by tests/nginx.rs only")]
#[path = "support/nginx.rs"]
mod nginx;

#[allow(dead_code)]
#[path = "support/compose.rs"]
mod stack;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_norway::Value;

use nginx::Nginx;
use stack::{ROOT, app_services, compose, depends_on, environment, read, services, strings};
use support::TestApp;
use support::free_local_port;

/// Bound on one healthcheck command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

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

/// The binary as compose runs it keeps its heap out of transparent huge
/// pages (`memory::small_pages_only`, BENCHMARKS.md §23): read off a
/// `serve` still waiting for its database. Until the exec is done and
/// `main` has run, /proc shows the forked test process's own flag, so the
/// flag is polled: the kernel offers nothing to wait on.
#[test]
fn the_served_binary_keeps_its_heap_in_small_pages() {
    let closed = free_local_port().port();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_livefeed"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url"])
        .arg(format!("postgres://nobody@127.0.0.1:{closed}/none"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting livefeed serve");
    let status = format!("/proc/{}/status", serve.id());
    let thp_enabled = || {
        std::fs::read_to_string(&status)
            .ok()?
            .lines()
            .find_map(|line| {
                line.strip_prefix("THP_enabled:")
                    .map(|v| v.trim().to_owned())
            })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = thp_enabled();
    while seen.as_deref() != Some("0") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        seen = thp_enabled();
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
    assert_eq!(
        seen.as_deref(),
        Some("0"),
        "THP_enabled of the serving process"
    );
}
