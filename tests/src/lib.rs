//! Test harness: the store backends every integration test runs against.
//!
//! - `memory`: object_store's in-memory store;
//! - `file`: the local file system (fsync on) in a fresh temporary directory;
//! - `s3`: an S3-compatible `moto_server` that this harness starts on a free 127.0.0.1 port, once
//!   per test binary, with a fresh bucket per store. The server is stopped when the test process
//!   exits (it is started under a shell that kills it when its stdin, held by this process,
//!   closes). No test depends on a server started by hand, and nothing but loopback is contacted.
//!
//! - [`etcd::Etcd`]: an etcd server for the cluster tests, one per test, on free loopback ports.
//!
//! `moto_server` comes from PyPI (`pip install 'moto[server]'`; `make test` installs it); without
//! it on PATH the harness runs `python3 -m moto.server`. `KEEPSAKE_MOTO_SERVER` names another
//! command.

pub mod etcd;

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use keepsake_store::open_store_with_env;
use object_store::ObjectStore;

/// Which store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// In memory.
    Memory,
    /// The local file system, fsync on.
    File,
    /// S3 through moto_server.
    S3,
}

/// A store for one test; keeps its temporary directory alive.
#[derive(Debug)]
pub struct TestStore {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The URL it was opened from (for tests that reopen it).
    pub url: String,
    /// `AWS_*` settings that go with the URL (S3 only).
    pub env: Vec<(String, String)>,
    /// How the store's `get_ranges` reaches the backend, for a test's own counting layer.
    pub ranges: keepsake_store::Ranges,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    /// Opens another handle on the same store, as a second process would (for `memory://`,
    /// which no second process can open, the same store).
    pub fn reopen(&self) -> Result<Arc<dyn ObjectStore>> {
        if self.url == "memory://" {
            return Ok(self.store.clone());
        }
        Ok(open_store_with_env(&self.url, self.env.clone())?.inner)
    }
}

/// A fresh, empty store on `backend`.
pub async fn store(backend: Backend) -> Result<TestStore> {
    match backend {
        Backend::Memory => {
            let opened = open_store_with_env("memory://", [])?;
            Ok(TestStore {
                store: opened.inner,
                url: "memory://".into(),
                env: Vec::new(),
                ranges: opened.ranges,
                _dir: None,
            })
        }
        Backend::File => {
            let dir = tempfile::tempdir()?;
            let url = format!("file://{}", dir.path().join("store").display());
            let opened = open_store_with_env(&url, [])?;
            Ok(TestStore {
                store: opened.inner,
                url,
                env: Vec::new(),
                ranges: opened.ranges,
                _dir: Some(dir),
            })
        }
        Backend::S3 => {
            let moto = moto()?;
            let bucket = moto.new_bucket().await?;
            let url = format!("s3://{bucket}/keepsake/test");
            let env = moto.env();
            let opened = open_store_with_env(&url, env.clone())?;
            Ok(TestStore {
                store: opened.inner,
                url,
                env,
                ranges: opened.ranges,
                _dir: None,
            })
        }
    }
}

/// A running moto_server.
#[derive(Debug)]
pub struct Moto {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    _child: Mutex<Child>,
    _stdin: Mutex<ChildStdin>,
    buckets: AtomicU64,
}

impl Moto {
    /// The `AWS_*` settings that point object_store at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "keepsake-test"),
            ("AWS_SECRET_ACCESS_KEY", "keepsake-test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Creates a bucket with a name unique to this process.
    pub async fn new_bucket(&self) -> Result<String> {
        let n = self.buckets.fetch_add(1, Ordering::Relaxed);
        let name = format!("keepsake-{}-{n}", std::process::id());
        let resp = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .context("create bucket on moto_server")?;
        if !resp.status().is_success() {
            bail!("moto_server refused bucket {name}: {}", resp.status());
        }
        Ok(name)
    }
}

static MOTO: OnceLock<Result<Moto, String>> = OnceLock::new();

/// The moto_server of this test binary, started on first use.
pub fn moto() -> Result<&'static Moto> {
    MOTO.get_or_init(|| start_moto().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("moto_server is needed for the S3 tests: {e}"))
}

pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn start_moto() -> Result<Moto> {
    // KEEPSAKE_MOTO_SERVER, else moto_server on PATH, else the module (pip may install moto where
    // no shim puts it on PATH, as under pyenv before a rehash).
    let exe = std::env::var("KEEPSAKE_MOTO_SERVER").unwrap_or_else(|_| {
        let on_path = Command::new("sh")
            .args(["-c", "command -v moto_server"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if on_path {
            "moto_server".into()
        } else {
            "python3 -m moto.server".into()
        }
    });
    let mut last_err = None;
    for _ in 0..3 {
        let port = free_port()?;
        // The shell kills moto when our end of its stdin closes, i.e. when this process exits.
        let script = format!(
            "{exe} -H 127.0.0.1 -p {port} >/dev/null 2>&1 & pid=$!; \
             trap 'kill $pid 2>/dev/null' EXIT; read _ignored; kill $pid 2>/dev/null; wait $pid"
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn sh for moto_server")?;
        let stdin = child.stdin.take().context("moto stdin")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Moto {
                    endpoint: format!("http://127.0.0.1:{port}"),
                    _child: Mutex::new(child),
                    _stdin: Mutex::new(stdin),
                    buckets: AtomicU64::new(0),
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                last_err = Some(anyhow::anyhow!(
                    "{exe} exited with {status}; is it installed? pip install 'moto[server]'"
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut stdin = stdin;
        let _ = stdin.write_all(b"\n");
        let _ = child.kill();
        last_err.get_or_insert_with(|| anyhow::anyhow!("{exe} did not listen on 127.0.0.1:{port}"));
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("moto_server did not start")))
}
