//! The contract, checked by a schema fuzzer no one here wrote: schemathesis (PyPI) generates
//! requests for every route of `schemas/openapi.yaml` and checks each answer against it — no
//! 5xx, every status documented, the documented content type and body schema. Against the real
//! server, on the file store and on S3, with a device token and with the operator token.
//! (`make test` installs schemathesis; without it this test fails rather than pass unseen.)

use keepsake_tests::Backend;

use crate::harness::*;

mod file {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_keeps_its_openapi_contract_under_a_fuzzer() {
        super::fuzz(keepsake_tests::Backend::File).await
    }
}
mod s3 {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_keeps_its_openapi_contract_under_a_fuzzer() {
        super::fuzz(keepsake_tests::Backend::S3).await
    }
}

async fn fuzz(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let phone = s.register(&uuid(), "fuzzed phone").await;
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/openapi.yaml");
    let report = tempfile::tempdir().expect("tempdir");
    for (who, token) in [("device", phone.as_str()), ("operator", ADMIN)] {
        let out = std::process::Command::new("schemathesis")
            .current_dir(report.path())
            .args(["run", schema, "--url", &s.base])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            ])
            .args(["--max-examples", "20", "--seed", "20261130"])
            .env("NO_COLOR", "1")
            .output()
            .unwrap_or_else(|e| {
                panic!("schemathesis is required for this test (make test installs it): {e}")
            });
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the fuzzer found answers outside the contract ({who} token):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("passed"), "{text}");
    }
}
