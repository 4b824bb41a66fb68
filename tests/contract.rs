//! The API cannot drift from the spec: every path and method of
//! `spec/openapi.json`, and every channel of `spec/asyncapi.json`, must
//! resolve to a route.

use std::path::Path;

use hyper::Method;
use livefeed::http::router::{RouteError, resolve};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("spec")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("vendored spec")).unwrap()
}

fn spec() -> Value {
    load("openapi.json")
}

#[test]
fn every_path_and_method_of_the_spec_has_a_route() {
    let spec = spec();
    let paths = spec["paths"].as_object().expect("spec has paths");
    assert!(paths.len() >= 13, "the spec lists the whole API");
    for (template, operations) in paths {
        // Any placeholder value exercises the route: ids are parsed later.
        let path = template
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "e4d2e6b0-cde2-42c5-aac3-0b8316f21e58"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in operations.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resolved = resolve(&method, &path);
            assert!(
                resolved.is_ok(),
                "{method} {template} has no route: {resolved:?}"
            );
            // And no other method is silently accepted on that path.
            let other = if method == Method::GET {
                Method::POST
            } else {
                Method::GET
            };
            assert_eq!(
                resolve(&other, &path),
                Err(RouteError::MethodNotAllowed(method.clone())),
                "{other} {template}"
            );
        }
    }
}

/// Websocket channels are opened with a GET (the upgrade request).
#[test]
fn every_channel_of_the_async_spec_has_a_websocket_route() {
    let spec = load("asyncapi.json");
    let channels = spec["channels"].as_object().expect("spec has channels");
    assert!(!channels.is_empty());
    for channel in channels.keys() {
        assert!(
            resolve(&Method::GET, channel).is_ok(),
            "{channel} has no route"
        );
    }
}

/// The specs are vendored so the repository builds on its own; the shared
/// originals (`shared/spec/` beside the checkout or beside a folder above
/// it, as for a worktree) must be there and the copies must match them: a
/// missing original fails rather than passing unchecked.
#[test]
fn vendored_specs_match_the_shared_originals() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = manifest
        .ancestors()
        .skip(1)
        .map(|dir| dir.join("shared/spec"))
        .find(|dir| dir.join("openapi.json").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no shared/spec/openapi.json beside {} or a folder above it",
                manifest.display()
            )
        });
    for name in ["openapi.json", "asyncapi.json"] {
        let path = shared.join(name);
        let original = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let original: Value = serde_json::from_str(&original).unwrap();
        assert_eq!(
            original,
            load(name),
            "spec/{name} differs from {}",
            path.display()
        );
    }
}
