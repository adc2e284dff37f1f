//! CardDAV and CalDAV proven by clients no one here wrote (issue 17): vdirsyncer (PyPI) syncs
//! a local vdir both ways with the real server. `make test` installs the clients; without
//! them these tests fail rather than pass unseen.

use keepsake_tests::Backend;

use crate::harness::*;

macro_rules! file_and_s3 {
    ($($name:ident),* $(,)?) => {
        mod file { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::File).await } )* }
        mod s3 { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::S3).await } )* }
    };
}

file_and_s3!(vdirsyncer_syncs_a_vdir_both_ways);

async fn vdirsyncer_syncs_a_vdir_both_ways(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let token = s.register(&user, "vdirsyncer").await;
    let work = tempfile::tempdir().expect("tempdir");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/dav/vdirsyncer_two_way.py"
    );
    let base = s.base.clone();
    let work_path = work.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .env("KEEPSAKE_URL", &base)
            .env("KEEPSAKE_TOKEN", &token)
            .env("KEEPSAKE_WORK", &work_path)
            .output()
    })
    .await
    .expect("join")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vdirsyncer's two-way sync failed (make test installs vdirsyncer):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: discovery, two-way sync"), "{stdout}");
    s.stop();
}
