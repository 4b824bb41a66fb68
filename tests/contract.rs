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

/// The specs are vendored so the repository builds on its own; where the
/// shared originals are at hand (`shared/spec/` beside the checkout or beside
/// a folder above it, as for a worktree) the copies must match them. A clean
/// clone elsewhere (CI) has no originals: the check says it was skipped
/// rather than passing as if it had compared anything.
#[test]
fn vendored_specs_match_the_shared_originals() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(shared) = manifest
        .ancestors()
        .skip(1)
        .map(|dir| dir.join("shared/spec"))
        .find(|dir| dir.join("openapi.json").is_file())
    else {
        eprintln!(
            "SKIPPED: no shared/spec/openapi.json beside {} or a folder above it; \
             the vendored specs were not compared",
            manifest.display()
        );
        return;
    };
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

/// The page at `/` is a client of the spec like any other: every API path
/// its script names is a path of the spec (an operation of the REST spec or
/// a channel of the async one), every query parameter it spells out is one
/// the operation declares, and every `api(METHOD, path)` call uses a method
/// the spec has for that path.
#[test]
fn the_page_calls_only_what_the_spec_documents() {
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/page/page.js"),
    )
    .expect("the page's script");
    let rest = spec();
    let channels = load("asyncapi.json");
    let literals = path_literals(&script);
    assert!(literals.len() >= 9, "found only {literals:?}");
    for (method, literal) in &literals {
        let (path, query) = literal.split_once('?').unwrap_or((literal, ""));
        if channels["channels"].get(path).is_some() {
            assert!(method.is_none() && query.is_empty(), "{literal}");
            continue;
        }
        let (template, operations) = rest["paths"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(template, _)| matches_template(template, path))
            .unwrap_or_else(|| panic!("the page calls {literal}, which the spec does not have"));
        if let Some(method) = method {
            let operation = &operations[method.to_lowercase()];
            assert!(
                operation.is_object(),
                "{method} {template} is not in the spec"
            );
            let declared: Vec<&str> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str())
                .collect();
            for pair in query.split('&').filter(|pair| pair.contains('=')) {
                let name = pair.split('=').next().unwrap();
                assert!(
                    declared.contains(&name),
                    "{literal}: {name} is not declared"
                );
            }
        }
    }
}

/// Whether `path` (with `*` for what the script fills in) fits `template`.
fn matches_template(template: &str, path: &str) -> bool {
    let (template, path): (Vec<_>, Vec<_>) =
        (template.split('/').collect(), path.split('/').collect());
    template.len() == path.len()
        && template
            .iter()
            .zip(&path)
            .all(|(t, p)| t == p || (t.starts_with('{') && *p == "*"))
}

/// Every string or template literal of `script` that starts with `/` and a
/// letter, with each `${...}` as `*`, and the method when it is the path of
/// an `api('METHOD', ...)` call. Whole-line `//` comments are skipped.
fn path_literals(script: &str) -> Vec<(Option<&'static str>, String)> {
    let code: Vec<char> = script
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
        .chars()
        .collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < code.len() {
        let quote = code[i];
        if !matches!(quote, '\'' | '`' | '"') {
            i += 1;
            continue;
        }
        let before: String = code[..i].iter().collect();
        let mut text = String::new();
        i += 1;
        while i < code.len() && code[i] != quote {
            if code[i] == '\\' {
                i += 2;
                continue;
            }
            if quote == '`' && code[i] == '$' && code.get(i + 1) == Some(&'{') {
                // Skip the interpolation, nested literals and all: their
                // braces balance.
                i += 1;
                let mut depth = 0;
                loop {
                    match code[i] {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    i += 1;
                    if depth == 0 {
                        break;
                    }
                }
                text.push('*');
                continue;
            }
            text.push(code[i]);
            i += 1;
        }
        i += 1;
        if text.starts_with('/') && text[1..].starts_with(|c: char| c.is_ascii_alphabetic()) {
            let method = ["GET", "POST", "PUT", "DELETE"]
                .into_iter()
                .find(|m| before.ends_with(&format!("api('{m}', ")));
            found.push((method, text));
        }
    }
    found
}
