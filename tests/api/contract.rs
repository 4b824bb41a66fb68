//! Every operation of `spec/openapi.json` answers bodies its schemas allow.
//!
//! The spec's object schemas list their properties but neither require
//! them nor forbid others; here they are made strict (every listed
//! property required, no other allowed), so a renamed, missing or extra
//! field fails, as does a wrong type. Error bodies, whatever their status,
//! are checked against the spec's error schema.

use std::collections::BTreeSet;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::support::{PASSWORD, TestApp, TestUser};

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/spec/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("spec/openapi.json")).unwrap()
}

/// Requires every listed property and allows no other, at every depth.
fn strict(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if let Some(Value::Object(properties)) = object.get("properties") {
                let names: Vec<Value> = properties.keys().cloned().map(Value::String).collect();
                object.insert("required".into(), Value::Array(names));
                object.insert("additionalProperties".into(), Value::Bool(false));
            }
            object.values_mut().for_each(strict);
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

struct Contract {
    spec: Value,
    exercised: BTreeSet<(String, String)>,
}

impl Contract {
    fn new() -> Self {
        let mut spec = spec();
        strict(&mut spec);
        Self {
            spec,
            exercised: BTreeSet::new(),
        }
    }

    /// Asserts `response` has `status` and a body the spec allows for
    /// `method template` with that status; returns the body.
    async fn check(
        &mut self,
        method: &str,
        template: &str,
        response: Response,
        status: StatusCode,
    ) -> Value {
        assert_eq!(response.status(), status, "{method} {template}");
        let text = response.text().await.unwrap();
        let operation = &self.spec["paths"][template][method];
        assert!(
            operation.is_object(),
            "{method} {template} is not in the spec"
        );
        self.exercised
            .insert((method.to_owned(), template.to_owned()));
        let schema = if status.is_success() {
            operation["responses"][status.as_str()]["content"]["application/json"]["schema"].clone()
        } else {
            self.spec["components"]["responses"]["5xx"]["content"]["application/json"]["schema"]
                .clone()
        };
        if schema.is_null() {
            assert!(
                text.is_empty(),
                "{method} {template}: the spec gives no body, got {text}"
            );
            return Value::Null;
        }
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {template}: not JSON ({e}): {text}"));
        // `$ref`s point into the spec's components: validate within a
        // document that has them.
        let document = json!({ "components": self.spec["components"], "allOf": [schema] });
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&document)
            .expect("the spec's schemas compile");
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status}: {body}\n{errors:#?}"
        );
        body
    }
}

#[tokio::test]
async fn every_operation_answers_what_the_spec_allows() {
    let app = TestApp::spawn().await;
    let mut contract = Contract::new();
    let call = |method: Method, path: String, token: Option<String>, body: Option<Value>| {
        let request = app.request(method, &path, token.as_deref(), body);
        async move { request.send().await.expect("request reaches the server") }
    };

    let registered = contract
        .check(
            "post",
            "/user/register",
            call(
                Method::POST,
                "/user/register".into(),
                None,
                Some(json!({
                    "first_name": "Схема", "second_name": "Строгая", "birthdate": "1990-01-02",
                    "biography": "", "city": "Тверь", "password": PASSWORD,
                })),
            )
            .await,
            StatusCode::OK,
        )
        .await;
    let me = registered["user_id"].as_str().unwrap().to_owned();
    let login = contract
        .check(
            "post",
            "/login",
            call(
                Method::POST,
                "/login".into(),
                None,
                Some(json!({ "id": me, "password": PASSWORD })),
            )
            .await,
            StatusCode::OK,
        )
        .await;
    let token = Some(login["token"].as_str().unwrap().to_owned());
    let other = app.register("Другой", "Собеседник").await;

    let wrong_password = call(
        Method::POST,
        "/login".into(),
        None,
        Some(json!({ "id": me, "password": "not the one" })),
    );
    contract
        .check(
            "post",
            "/login",
            wrong_password.await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    for (method, template, path, status) in [
        (
            "get",
            "/user/get/{id}",
            format!("/user/get/{me}"),
            StatusCode::OK,
        ),
        (
            "get",
            "/user/get/{id}",
            "/user/get/nope".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "get",
            "/user/search",
            "/user/search?first_name=Сх&last_name=Стр".to_owned(),
            StatusCode::OK,
        ),
        (
            "get",
            "/user/search",
            "/user/search?first_name=Сх".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        contract
            .check(
                method,
                template,
                call(Method::GET, path, None, None).await,
                status,
            )
            .await;
    }
    let follow = format!("/friend/set/{}", other.id);
    contract
        .check(
            "put",
            "/friend/set/{user_id}",
            call(Method::PUT, follow.clone(), None, None).await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    contract
        .check(
            "put",
            "/friend/set/{user_id}",
            call(Method::PUT, follow, token.clone(), None).await,
            StatusCode::OK,
        )
        .await;

    let post = contract
        .check(
            "post",
            "/post/create",
            call(
                Method::POST,
                "/post/create".into(),
                token.clone(),
                Some(json!({ "text": "по схеме" })),
            )
            .await,
            StatusCode::OK,
        )
        .await;
    let post = post.as_str().unwrap().to_owned();
    contract
        .check(
            "post",
            "/post/create",
            call(
                Method::POST,
                "/post/create".into(),
                token.clone(),
                Some(json!({ "text": "" })),
            )
            .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    contract
        .check(
            "put",
            "/post/update",
            call(
                Method::PUT,
                "/post/update".into(),
                token.clone(),
                Some(json!({ "id": post, "text": "правка" })),
            )
            .await,
            StatusCode::OK,
        )
        .await;
    contract
        .check(
            "get",
            "/post/get/{id}",
            call(
                Method::GET,
                format!("/post/get/{post}"),
                token.clone(),
                None,
            )
            .await,
            StatusCode::OK,
        )
        .await;
    // The author's own post reaches the feed of someone who follows them.
    let me_user = TestUser {
        id: me.clone(),
        token: token.clone().unwrap(),
    };
    app.follow(&other, &me_user).await;
    app.feed_settles_to(&other, "", &["правка"]).await;
    contract
        .check(
            "get",
            "/post/feed",
            call(
                Method::GET,
                "/post/feed".into(),
                Some(other.token.clone()),
                None,
            )
            .await,
            StatusCode::OK,
        )
        .await;
    contract
        .check(
            "get",
            "/post/feed",
            call(
                Method::GET,
                "/post/feed?limit=0".into(),
                Some(other.token.clone()),
                None,
            )
            .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    contract
        .check(
            "put",
            "/post/delete/{id}",
            call(
                Method::PUT,
                format!("/post/delete/{post}"),
                token.clone(),
                None,
            )
            .await,
            StatusCode::OK,
        )
        .await;
    contract
        .check(
            "get",
            "/post/get/{id}",
            call(
                Method::GET,
                format!("/post/get/{post}"),
                token.clone(),
                None,
            )
            .await,
            StatusCode::NOT_FOUND,
        )
        .await;

    let send = format!("/dialog/{}/send", other.id);
    contract
        .check(
            "post",
            "/dialog/{user_id}/send",
            call(
                Method::POST,
                send,
                token.clone(),
                Some(json!({ "text": "привет" })),
            )
            .await,
            StatusCode::OK,
        )
        .await;
    let list = contract
        .check(
            "get",
            "/dialog/{user_id}/list",
            call(
                Method::GET,
                format!("/dialog/{}/list", other.id),
                token.clone(),
                None,
            )
            .await,
            StatusCode::OK,
        )
        .await;
    assert_eq!(list[0]["text"], "привет");
    contract
        .check(
            "put",
            "/friend/delete/{user_id}",
            call(
                Method::PUT,
                format!("/friend/delete/{}", other.id),
                token.clone(),
                None,
            )
            .await,
            StatusCode::OK,
        )
        .await;

    let spec = spec();
    let every: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, operations)| {
            operations
                .as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    assert_eq!(
        contract.exercised, every,
        "every operation of the spec was checked"
    );
}
