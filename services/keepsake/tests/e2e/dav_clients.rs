//! CardDAV and CalDAV proven by clients no one here wrote (issue 17): vdirsyncer (PyPI) syncs
//! a local vdir both ways with the real server, and the `caldav` library (PyPI) discovers,
//! saves, searches and syncs by token. `make test` installs both in a venv of their own
//! (`make dav-clients`; `KEEPSAKE_DAV_CLIENTS` names it, default
//! `~/.cache/keepsake-dav-clients`); without them these tests fail rather than pass unseen.

use keepsake_tests::Backend;

use crate::harness::*;

macro_rules! file_and_s3 {
    ($($name:ident),* $(,)?) => {
        mod file { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::File).await } )* }
        mod s3 { $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(keepsake_tests::Backend::S3).await } )* }
    };
}

file_and_s3!(
    vdirsyncer_syncs_a_vdir_both_ways,
    the_caldav_library_saves_searches_and_syncs
);

/// The venv holding the DAV clients.
fn clients_venv() -> std::path::PathBuf {
    match std::env::var_os("KEEPSAKE_DAV_CLIENTS") {
        Some(dir) => dir.into(),
        None => std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/keepsake-dav-clients"),
    }
}

/// Runs `tests/dav/<script>` against a fresh server with a fresh device of a fresh user; the
/// script's stdout, after asserting it exited 0 and printed `ok:`.
async fn run_client(backend: Backend, script: &str, device: &str) -> String {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let token = s.register(&uuid(), device).await;
    let work = tempfile::tempdir().expect("tempdir");
    let path = format!("{}/tests/dav/{script}", env!("CARGO_MANIFEST_DIR"));
    let base = s.base.clone();
    let work_path = work.path().to_path_buf();
    let bin = clients_venv().join("bin");
    let python = bin.join("python3");
    assert!(
        python.exists(),
        "{} is missing: `make dav-clients` installs the DAV clients there",
        python.display()
    );
    let search = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(path)
            .env("PATH", search)
            .env("KEEPSAKE_URL", &base)
            .env("KEEPSAKE_TOKEN", &token)
            .env("KEEPSAKE_WORK", &work_path)
            .output()
    })
    .await
    .expect("join")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{script} failed (make test installs the DAV clients):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok: "), "{stdout}");
    s.stop();
    stdout
}

async fn vdirsyncer_syncs_a_vdir_both_ways(backend: Backend) {
    let out = run_client(backend, "vdirsyncer_two_way.py", "vdirsyncer").await;
    assert!(out.contains("ok: discovery, two-way sync"), "{out}");
}

async fn the_caldav_library_saves_searches_and_syncs(backend: Backend) {
    let out = run_client(backend, "caldav_library.py", "caldav library").await;
    assert!(out.contains("ok: caldav discovery"), "{out}");
}
