//! The file store keeps promise 1 only with fsync (DESIGN.md section 8): a PUT returns once the
//! file and its directory entry are on disk. Checked from the outside: one PUT runs under
//! `strace`, and the trace must show the file and its directory synced before the PUT returned.
//! (`make test` installs strace; without it this test fails rather than pass unseen.)

use std::path::Path;
use std::process::Command;

use object_store::{ObjectStore as _, PutPayload};

const HELPER_DIR: &str = "KEEPSAKE_FSYNC_HELPER_DIR";
const RETURNED: &str = "keepsake-fsync-helper: the put returned";
const SEGMENT: &str = "shards/0/segments/00000000000000000001.parquet";

/// Run by the test below, in a child process under strace: one create-only PUT to the file
/// store at `$KEEPSAKE_FSYNC_HELPER_DIR`, then a line on stderr saying it returned.
#[tokio::test]
#[ignore = "a helper: a_file_store_put_is_synced_before_it_returns runs it under strace"]
async fn fsync_helper_one_put() {
    let Some(dir) = std::env::var_os(HELPER_DIR) else {
        return;
    };
    let url = format!("file://{}", Path::new(&dir).display());
    let store = keepsake_store::open_store(&url).expect("open").inner;
    store
        .put_opts(
            &object_store::path::Path::from(SEGMENT),
            PutPayload::from_static(b"segment bytes"),
            keepsake_store::create_only(),
        )
        .await
        .expect("put");
    eprintln!("{RETURNED}");
}

#[test]
fn a_file_store_put_is_synced_before_it_returns() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let data = std::fs::canonicalize(&data).expect("canonical");
    let trace = tmp.path().join("trace.txt");
    let status = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "200", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat,write",
        ])
        .arg(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "fsync::fsync_helper_one_put", "--ignored"])
        .args(["--nocapture", "--test-threads=1"])
        .env(HELPER_DIR, &data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            panic!("strace is required for this test (make test installs it): {e}")
        });
    assert!(status.success(), "the helper under strace failed: {status}");
    let trace = std::fs::read_to_string(&trace).expect("trace");
    let lines: Vec<&str> = trace.lines().collect();
    let returned = lines
        .iter()
        .position(|l| l.contains(RETURNED))
        .unwrap_or_else(|| panic!("the helper never said the put returned:\n{trace}"));
    let before = &lines[..returned];
    let file = data.join(SEGMENT);
    let dir = file.parent().expect("parent").display().to_string();
    let synced = |what: &dyn Fn(&str) -> bool| {
        before.iter().any(|l| {
            (l.contains("fsync(") || l.contains("fdatasync(")) && {
                // `fsync(7</path/of/the/fd>) = 0`: the path the fd is open on.
                let path = l.split_once('<').and_then(|(_, r)| r.split_once('>'));
                path.is_some_and(|(p, _)| what(p)) && l.trim_end().ends_with("= 0")
            }
        })
    };
    let file_name = file.display().to_string();
    assert!(
        synced(&|p: &str| p.starts_with(&file_name) || p.starts_with(&format!("{dir}/"))),
        "no fsync of the object's file before the PUT returned:\n{trace}"
    );
    assert!(
        synced(&|p: &str| p == dir),
        "no fsync of the object's directory before the PUT returned:\n{trace}"
    );
}
