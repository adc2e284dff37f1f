//! CardDAV and CalDAV proven by clients no one here wrote (issue 17): vdirsyncer (PyPI) syncs
//! a local vdir both ways with the real server, the `caldav` library (PyPI) discovers, saves,
//! searches and syncs by token, tsdav (npm) creates, updates, deletes and syncs contacts and
//! events, and caldav-server-tester's feature profile may not get worse. `make test` installs both in a venv of their own
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
    vdirsyncer_s_own_storage_suite_passes,
    the_caldav_library_saves_searches_and_syncs,
    tsdav_creates_updates_deletes_and_syncs
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caldav_server_tester_finds_no_feature_worse_than_its_recorded_profile() {
    caldav_server_tester_profile(Backend::File).await
}

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
    let venv = clients_venv();
    let bin = venv.join("bin");
    // A `.py` script runs on the venv's Python; a `.js` one on node with tsdav on NODE_PATH.
    let (program, node_path) = if script.ends_with(".js") {
        (
            std::path::PathBuf::from("node"),
            venv.join("node/node_modules"),
        )
    } else {
        (bin.join("python3"), std::path::PathBuf::new())
    };
    let needed = if script.ends_with(".js") {
        &node_path
    } else {
        &program
    };
    assert!(
        needed.exists(),
        "{} is missing: `make dav-clients` installs the DAV clients there",
        needed.display()
    );
    let search = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(program)
            .arg(path)
            .env("PATH", search)
            .env("NODE_PATH", node_path)
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

async fn tsdav_creates_updates_deletes_and_syncs(backend: Backend) {
    let out = run_client(backend, "tsdav_client.js", "tsdav").await;
    assert!(out.contains("ok: tsdav discovery"), "{out}");
}

async fn vdirsyncer_syncs_a_vdir_both_ways(backend: Backend) {
    let out = run_client(backend, "vdirsyncer_two_way.py", "vdirsyncer").await;
    assert!(out.contains("ok: discovery, two-way sync"), "{out}");
}

/// vdirsyncer's own storage test suite (`tests/storage/dav` of its 0.21.0 sdist, which
/// `make dav-clients` unpacks), pointed at the server through `tests/dav/vdirsyncer_suite_server.py`:
/// every test makes its own collection (extended MKCOL) and deletes it after. The suite
/// deletes hundreds of items in a few seconds, which is what the mass-delete guard stops: the
/// user confirms from a REST device first, as docs/DAV.md tells users to. Every test must pass;
/// the only skips allowed are the four the suite makes for any named server (metadata left
/// empty, and recurring events for VTODO and VCARD).
async fn vdirsyncer_s_own_storage_suite_passes(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let user = uuid();
    let token = s.register(&user, "vdirsyncer suite").await;
    let (st, v) = s
        .call(
            reqwest::Method::POST,
            "/v1/mass-delete-confirmation",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(st, reqwest::StatusCode::OK, "{v}");
    let venv = clients_venv();
    let sdist = venv.join("vdirsyncer-0.21.0");
    assert!(
        sdist.join("tests/storage/dav").is_dir(),
        "{} is missing: `make dav-clients` unpacks vdirsyncer's sdist there",
        sdist.display()
    );
    let server_dir = sdist.join("tests/storage/servers/keepsake");
    std::fs::create_dir_all(&server_dir).expect("server dir");
    std::fs::copy(
        format!(
            "{}/tests/dav/vdirsyncer_suite_server.py",
            env!("CARGO_MANIFEST_DIR")
        ),
        server_dir.join("__init__.py"),
    )
    .expect("install the server fixture");
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(venv.join("bin/python3"))
            .args([
                "-m",
                "pytest",
                "-o",
                "addopts=",
                "-p",
                "no:cacheprovider",
                "-q",
                "-rfEs",
            ])
            .args(["-p", "no:logging", "--tb=short", "tests/storage/dav"])
            .current_dir(&sdist)
            .env("DAV_SERVER", "keepsake")
            .env("DETERMINISTIC_TESTS", "true")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("KEEPSAKE_DAV_URL", format!("{base}/"))
            .env("KEEPSAKE_DAV_USER", &user)
            .env("KEEPSAKE_DAV_TOKEN", &token)
            .output()
    })
    .await
    .expect("join")
    .expect("pytest runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        out.status.success(),
        "vdirsyncer's storage suite failed: {summary}\n{stdout}\n{stderr}"
    );
    // "131 passed, 4 skipped in 8.22s"
    let counts = summary
        .rsplit_once(" in ")
        .map_or(summary.as_str(), |(c, _)| c);
    let count = |what: &str| {
        counts
            .split(", ")
            .find_map(|part| {
                part.trim()
                    .strip_suffix(what)?
                    .trim()
                    .rsplit(' ')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .unwrap_or(0)
    };
    assert!(count("passed") >= 100, "too few tests ran: {summary}");
    assert_eq!(
        count("failed") + count("error") + count("errors"),
        0,
        "{summary}"
    );
    assert_eq!(
        count("skipped"),
        4,
        "the suite skips four tests for any server, and no others: {summary}\n{stdout}"
    );
    s.stop();
}

async fn the_caldav_library_saves_searches_and_syncs(backend: Backend) {
    let out = run_client(backend, "caldav_library.py", "caldav library").await;
    assert!(out.contains("ok: caldav discovery"), "{out}");
}

/// How good a caldav-server-tester support level is; `None` for `unknown` (not probed).
fn rank(support: &str) -> Option<u8> {
    match support {
        "full" => Some(4),
        "quirk" => Some(3),
        "fragile" => Some(2),
        "unsupported" | "ungraceful" => Some(1),
        "broken" => Some(0),
        _ => None,
    }
}

/// caldav-server-tester (PyPI, on the caldav library) probes the server's CalDAV features; its
/// profile is recorded in `docs/dav/caldav-server-tester.json`. The test fails on any feature
/// that is worse than recorded (a `full` that is no longer `full`, or a lower level), and
/// prints what improved, so the recorded profile is moved up with the code.
async fn caldav_server_tester_profile(backend: Backend) {
    let env = Env::new(backend).await;
    let s = Server::start(&env, &[]).await;
    let token = s.register(&uuid(), "caldav-server-tester").await;
    let tester = clients_venv().join("bin/caldav-server-tester");
    assert!(
        tester.exists(),
        "{} is missing: `make dav-clients` installs it",
        tester.display()
    );
    let base = format!("{}/", s.base);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(tester)
            .args(["--caldav-url", &base, "--caldav-username", "tester"])
            // No calendar named: the tester makes its own (MKCALENDAR), probes it, deletes it.
            .args(["--caldav-password", &token])
            .args(["--format", "json"])
            .output()
    })
    .await
    .expect("join")
    .expect("caldav-server-tester runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "caldav-server-tester failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let observed: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON profile");
    let recorded_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/dav/caldav-server-tester.json"
    );
    let recorded: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(recorded_path).expect("the recorded profile"),
    )
    .expect("the recorded profile is JSON");
    // A profile lists the features that differ from what the tester expects of a server,
    // which is `full`: a feature it does not list is `full`.
    let support = |profile: &serde_json::Value, feature: &str| -> String {
        match profile["features"].get(feature) {
            None => "full".to_string(),
            Some(f) => f["support"].as_str().unwrap_or("unknown").to_string(),
        }
    };
    let mut worse = Vec::new();
    let mut better = Vec::new();
    let listed = |p: &serde_json::Value| -> Vec<String> {
        p["features"]
            .as_object()
            .map(|f| f.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut features = listed(&recorded);
    features.extend(listed(&observed));
    features.sort();
    features.dedup();
    for feature in &features {
        let (was, now) = (support(&recorded, feature), support(&observed, feature));
        let regressed = match (rank(&was), rank(&now)) {
            (Some(4), _) => now != "full",
            (Some(a), Some(b)) => b < a,
            _ => false,
        };
        if regressed {
            worse.push(format!(
                "{feature}: {was} -> {now} ({})",
                observed["features"][feature]
            ));
        } else if rank(&now) > rank(&was) {
            better.push(format!("{feature}: {was} -> {now}"));
        }
    }
    if !better.is_empty() {
        eprintln!(
            "better than recorded (move docs/dav/caldav-server-tester.json up):\n{}",
            better.join("\n")
        );
    }
    assert!(
        worse.is_empty(),
        "features worse than recorded in docs/dav/caldav-server-tester.json:\n{}",
        worse.join("\n")
    );
    s.stop();
}
