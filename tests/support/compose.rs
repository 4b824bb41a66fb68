//! docker-compose.yml as compose sees it (merge keys applied, `${VAR:-default}`
//! resolved to defaults), for tests/compose.rs and tests/compose_data.rs.

use std::collections::BTreeMap;
use std::path::Path;

use serde_norway::Value;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// docker-compose.yml with its `<<` merge keys applied, as compose sees it.
pub fn compose() -> Value {
    let mut value: Value =
        serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    value
        .apply_merge()
        .expect("the merge keys of docker-compose.yml apply");
    value
}

pub fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("services is a mapping")
        .iter()
        .map(|(name, service)| (name.as_str().unwrap().to_owned(), service.clone()))
        .collect()
}

/// The services that run the livefeed image (built from this repository).
pub fn app_services(compose: &Value) -> BTreeMap<String, Value> {
    services(compose)
        .into_iter()
        .filter(|(_, service)| service["build"].as_str() == Some("."))
        .collect()
}

pub fn strings(value: &Value) -> Vec<String> {
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
pub fn depends_on(service: &Value) -> BTreeMap<String, Option<String>> {
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

pub fn environment(service: &Value) -> BTreeMap<String, String> {
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
pub fn with_defaults(text: &str) -> String {
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
