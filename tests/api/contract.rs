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

struct Contract<'a> {
    app: &'a TestApp,
    spec: Value,
    exercised: BTreeSet<(String, String)>,
}

impl<'a> Contract<'a> {
    fn new(app: &'a TestApp) -> Self {
        let mut spec = spec();
        strict(&mut spec);
        Self {
            app,
            spec,
            exercised: BTreeSet::new(),
        }
    }

    /// Sends `method path` and [`Contract::check`]s the answer against the
    /// spec's operation `template`.
    async fn exchange(
        &mut self,
        method: Method,
        template: &str,
        path: String,
        token: Option<String>,
        body: Option<Value>,
        status: StatusCode,
    ) -> Value {
        let operation = method.as_str().to_ascii_lowercase();
        let response = self
            .app
            .request(method, &path, token.as_deref(), body)
            .send()
            .await
            .expect("request reaches the server");
        self.check(&operation, template, response, status).await
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
    let mut contract = Contract::new(&app);

    let registered = contract
        .exchange(
            Method::POST,
            "/user/register",
            "/user/register".into(),
            None,
            Some(json!({
                "first_name": "Схема", "second_name": "Строгая", "birthdate": "1990-01-02",
                "biography": "", "city": "Тверь", "password": PASSWORD,
            })),
            StatusCode::OK,
        )
        .await;
    let me = registered["user_id"].as_str().unwrap().to_owned();
    let login = contract
        .exchange(
            Method::POST,
            "/login",
            "/login".into(),
            None,
            Some(json!({ "id": me, "password": PASSWORD })),
            StatusCode::OK,
        )
        .await;
    let token = Some(login["token"].as_str().unwrap().to_owned());
    let other = app.register("Другой", "Собеседник").await;

    contract
        .exchange(
            Method::POST,
            "/login",
            "/login".into(),
            None,
            Some(json!({ "id": me, "password": "not the one" })),
            StatusCode::BAD_REQUEST,
        )
        .await;
    for (template, path, status) in [
        ("/user/get/{id}", format!("/user/get/{me}"), StatusCode::OK),
        (
            "/user/get/{id}",
            "/user/get/nope".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/user/search",
            "/user/search?first_name=Сх&last_name=Стр".to_owned(),
            StatusCode::OK,
        ),
        (
            "/user/search",
            "/user/search?first_name=Сх".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        contract
            .exchange(Method::GET, template, path, None, None, status)
            .await;
    }
    let follow = format!("/friend/set/{}", other.id);
    contract
        .exchange(
            Method::PUT,
            "/friend/set/{user_id}",
            follow.clone(),
            None,
            None,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    contract
        .exchange(
            Method::PUT,
            "/friend/set/{user_id}",
            follow,
            token.clone(),
            None,
            StatusCode::OK,
        )
        .await;

    let post = contract
        .exchange(
            Method::POST,
            "/post/create",
            "/post/create".into(),
            token.clone(),
            Some(json!({ "text": "по схеме" })),
            StatusCode::OK,
        )
        .await;
    let post = post.as_str().unwrap().to_owned();
    contract
        .exchange(
            Method::POST,
            "/post/create",
            "/post/create".into(),
            token.clone(),
            Some(json!({ "text": "" })),
            StatusCode::BAD_REQUEST,
        )
        .await;
    contract
        .exchange(
            Method::PUT,
            "/post/update",
            "/post/update".into(),
            token.clone(),
            Some(json!({ "id": post, "text": "правка" })),
            StatusCode::OK,
        )
        .await;
    contract
        .exchange(
            Method::GET,
            "/post/get/{id}",
            format!("/post/get/{post}"),
            token.clone(),
            None,
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
        .exchange(
            Method::GET,
            "/post/feed",
            "/post/feed".into(),
            Some(other.token.clone()),
            None,
            StatusCode::OK,
        )
        .await;
    contract
        .exchange(
            Method::GET,
            "/post/feed",
            "/post/feed?limit=0".into(),
            Some(other.token.clone()),
            None,
            StatusCode::BAD_REQUEST,
        )
        .await;
    contract
        .exchange(
            Method::PUT,
            "/post/delete/{id}",
            format!("/post/delete/{post}"),
            token.clone(),
            None,
            StatusCode::OK,
        )
        .await;
    contract
        .exchange(
            Method::GET,
            "/post/get/{id}",
            format!("/post/get/{post}"),
            token.clone(),
            None,
            StatusCode::NOT_FOUND,
        )
        .await;

    let send = format!("/dialog/{}/send", other.id);
    contract
        .exchange(
            Method::POST,
            "/dialog/{user_id}/send",
            send,
            token.clone(),
            Some(json!({ "text": "привет" })),
            StatusCode::OK,
        )
        .await;
    let list = contract
        .exchange(
            Method::GET,
            "/dialog/{user_id}/list",
            format!("/dialog/{}/list", other.id),
            token.clone(),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(list[0]["text"], "привет");
    contract
        .exchange(
            Method::PUT,
            "/friend/delete/{user_id}",
            format!("/friend/delete/{}", other.id),
            token.clone(),
            None,
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
