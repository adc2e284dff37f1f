//! `schemas/openapi.yaml` and the router list the same routes, with the same methods.
#![allow(clippy::expect_used)]

use std::collections::BTreeSet;

use yaml_rust2::YamlLoader;

#[test]
fn openapi_file_and_router_list_the_same_routes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("schemas/openapi.yaml");
    let docs = YamlLoader::load_from_str(&text).expect("valid YAML");
    let doc = &docs[0];
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
    let paths = doc["paths"].as_hash().expect("paths");
    let mut in_file = BTreeSet::new();
    for (p, ops) in paths {
        let p = p.as_str().expect("path").to_string();
        for (method, _) in ops.as_hash().expect("operations") {
            let m = method.as_str().expect("method");
            if ["get", "put", "post", "delete", "patch", "head", "options"].contains(&m) {
                in_file.insert((m.to_uppercase(), p.clone()));
            }
        }
    }
    let in_router: BTreeSet<(String, String)> = keepsake::api::route_list()
        .into_iter()
        .map(|(m, p)| (m.as_str().to_string(), p.to_string()))
        .collect();
    let only_file: Vec<_> = in_file.difference(&in_router).collect();
    let only_router: Vec<_> = in_router.difference(&in_file).collect();
    assert!(
        only_file.is_empty() && only_router.is_empty(),
        "in the file only: {only_file:?}; in the router only: {only_router:?}"
    );
}
