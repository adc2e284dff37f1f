//! Every route of the router, called with every kind of credential: none, a device token, the
//! operator token, a revoked device token, and another user's device token. The table is the
//! router's own route list, so a new route is checked without anyone adding it here.

use keepsake_tests::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Nobody,
    Device,
    Operator,
    Revoked,
    OtherUser,
}

/// Which API a route belongs to, by its path.
#[derive(Debug, PartialEq)]
enum Api {
    Public,
    Device,
    Operator,
}

fn api_of(path: &str) -> Api {
    if path.starts_with("/v1/") {
        Api::Device
    } else if path.starts_with("/admin/v1/") {
        Api::Operator
    } else {
        Api::Public
    }
}

/// The status and code a route must answer `who` with; `None`: anything but 401 and 403.
fn expected(api: &Api, who: Who) -> Option<(StatusCode, &'static str)> {
    let unauthorized = Some((StatusCode::UNAUTHORIZED, "unauthorized"));
    let forbidden = Some((StatusCode::FORBIDDEN, "forbidden"));
    match (api, who) {
        (Api::Public, _) => None,
        (_, Who::Nobody) => unauthorized,
        (Api::Device, Who::Operator) => forbidden,
        (Api::Device, Who::Revoked) => unauthorized,
        (Api::Device, Who::Device | Who::OtherUser) => None,
        (Api::Operator, Who::Operator) => None,
        // A device token, revoked or not, is a device's: it never opens the operator API.
        (Api::Operator, Who::Device | Who::Revoked | Who::OtherUser) => forbidden,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_credential_as_the_contract_says() {
    let env = Env::new(Backend::File).await;
    let s = Server::start(&env, &[("KEEPSAKE_COMPACTION", "false")]).await;
    let (alice, bob) = (uuid(), uuid());
    let alice_phone = s.register(&alice, "phone").await;
    let bob_phone = s.register(&bob, "phone").await;
    let revoked = s.register(&alice, "old phone").await;
    let (_, listed) = s
        .call(
            Method::GET,
            &format!("/admin/v1/users/{alice}/devices"),
            Some(ADMIN),
            None,
        )
        .await;
    let old_phone = listed["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["name"] == "old phone")
        .and_then(|d| d["device_id"].as_str())
        .expect("the old phone")
        .to_string();
    let (st, _) = s
        .call(
            Method::DELETE,
            &format!("/admin/v1/users/{alice}/devices/{old_phone}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // Both users hold an item under the same id.
    let shared = uuid();
    s.push(
        &alice_phone,
        json!([put(&shared, "note", json!({"owner": "alice"}))]),
    )
    .await;
    s.push(
        &bob_phone,
        json!([put(&shared, "note", json!({"owner": "bob"}))]),
    )
    .await;

    let tokens = [
        (Who::Nobody, None),
        (Who::Device, Some(alice_phone.as_str())),
        (Who::Operator, Some(ADMIN)),
        (Who::Revoked, Some(revoked.as_str())),
        (Who::OtherUser, Some(bob_phone.as_str())),
    ];
    let routes = keepsake::api::route_list();
    assert!(routes.len() >= 18, "{routes:?}");
    let mut wrong = Vec::new();
    for (method, template) in &routes {
        let path = template
            .replace("{user_id}", &alice)
            .replace("{item_id}", &shared)
            // never a real device: the operator's call must not revoke one
            .replace("{device_id}", &uuid())
            .replace("{restore_id}", &uuid());
        let api = api_of(template);
        for (who, token) in tokens {
            let body = (*method == Method::POST).then(|| json!({}));
            let mut req = s
                .client
                .request(method.clone(), format!("{}{path}", s.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = &body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let resp = req.send().await.expect("request");
            let status = resp.status();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let text = resp.text().await.expect("body");
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let what = format!("{method} {template} as {who:?}: {status} {text}");
            if !status.is_success() && content_type != "application/problem+json" {
                wrong.push(format!("{what}: content-type {content_type:?}"));
            }
            match expected(&api, who) {
                Some((want, code)) => {
                    if status != want || v["code"] != code {
                        wrong.push(format!("{what}: want {want} {code}"));
                    }
                }
                None => {
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                        wrong.push(format!("{what}: want access"));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The same item id, two users: each token sees its own user's item and history only.
    for (token, owner) in [(&alice_phone, "alice"), (&bob_phone, "bob")] {
        let (st, item) = s
            .call(
                Method::GET,
                &format!("/v1/items/{shared}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{item}");
        assert_eq!(item["document"]["owner"], owner, "{item}");
        let (_, history) = s
            .call(
                Method::GET,
                &format!("/v1/items/{shared}/history"),
                Some(token),
                None,
            )
            .await;
        let owners: Vec<&Value> = history["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| &v["document"]["owner"])
            .collect();
        assert_eq!(owners, vec![&json!(owner)], "{history}");
    }
}
