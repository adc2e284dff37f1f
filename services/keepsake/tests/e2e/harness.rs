//! Starts the real server binary and talks to it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use keepsake_tests::Backend;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

pub const ADMIN: &str = "e2e-operator-token-0123456789";
// id:base64url of 32 bytes
pub const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// Where a test's server keeps its data, so a restart finds it again.
pub struct Env {
    pub url: String,
    pub env: Vec<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Env {
    pub async fn new(backend: Backend) -> Env {
        match backend {
            // The server is another process, restarted by many tests: a memory store would not
            // outlive it. Say so rather than run on the file store under the name "memory".
            Backend::Memory => panic!(
                "the e2e harness has no memory backend (the server process owns its memory): \
                 use Backend::File"
            ),
            Backend::File => {
                let dir = tempfile::tempdir().expect("tempdir");
                Env {
                    url: dir.path().join("data").display().to_string(),
                    env: Vec::new(),
                    _dir: Some(dir),
                }
            }
            Backend::S3 => {
                let ts = keepsake_tests::store(Backend::S3).await.expect("s3 store");
                Env {
                    url: ts.url.clone(),
                    env: ts.env.clone(),
                    _dir: None,
                }
            }
        }
    }
}

pub struct Server {
    pub base: String,
    child: Child,
    pub client: Client,
    log: std::sync::Mutex<mpsc::Receiver<String>>,
}

impl Server {
    pub async fn start(env: &Env, extra: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keepsake"));
        cmd.arg("serve")
            .env("KEEPSAKE_STORE", &env.url)
            .env("KEEPSAKE_LISTEN", "127.0.0.1:0")
            .env("KEEPSAKE_ADMIN_TOKEN", ADMIN)
            .env("KEEPSAKE_TOKEN_KEYS", KEYS)
            .env("KEEPSAKE_SHARDS", "2")
            .env("KEEPSAKE_LOG", "info")
            .envs(env.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn keepsake");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut base = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while base.is_none() && std::time::Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    base = rest.split_whitespace().next().map(String::from);
                }
            }
        }
        let base = base.expect("the server logs the address it listens on");
        let server = Server {
            base,
            child,
            client: Client::new(),
            log: std::sync::Mutex::new(rx),
        };
        for _ in 0..300 {
            if let Ok(r) = server
                .client
                .get(format!("{}/readyz", server.base))
                .send()
                .await
                && r.status() == StatusCode::OK
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not become ready");
    }

    /// Everything the server has logged so far.
    pub fn logged(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|rx| rx.try_iter().collect())
            .unwrap_or_default()
    }

    /// Waits (at most 20 s) until the `/metrics` value `name` reads at least `want`.
    pub async fn until_metric(&self, name: &str, want: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.metric(name).await < want {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never reached {want}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (at most 20 s) for a log line containing every one of `needles`, and returns it.
    /// Lines read while waiting are consumed.
    pub async fn until_logged(&self, needles: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self
                .logged()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server never logged {needles:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate();
        self.child.wait().expect("wait for the server")
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, ...) without waiting.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// kill -9: what a crash does.
    pub fn kill(&self) {
        self.signal("KILL");
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for the server")
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn register(&self, user: &str, name: &str) -> String {
        let (s, v) = self
            .call(
                Method::POST,
                &format!("/admin/v1/users/{user}/devices"),
                Some(ADMIN),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().expect("token").to_string()
    }

    pub async fn push(&self, token: &str, changes: Value) -> Value {
        let (s, v) = self
            .call(
                Method::POST,
                "/v1/changes",
                Some(token),
                Some(json!({"changes": changes})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    pub async fn pull(&self, token: &str, query: &str) -> Value {
        let (s, v) = self
            .call(
                Method::GET,
                &format!("/v1/changes{query}"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// A counter or gauge from `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} in /metrics"))
    }

    /// The server's count of committed segments.
    pub async fn segments(&self) -> u64 {
        self.metric("keepsake_segments_total").await
    }
}

/// Runs `keepsake serve` on `env` expecting it to stop by itself (within 60 s) rather than
/// become ready; returns how it exited and what it wrote to stderr.
pub fn serve_expecting_exit(
    env: &Env,
    extra: &[(&str, &str)],
) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keepsake"))
        .arg("serve")
        .env("KEEPSAKE_STORE", &env.url)
        .env("KEEPSAKE_LISTEN", "127.0.0.1:0")
        .env("KEEPSAKE_ADMIN_TOKEN", ADMIN)
        .env("KEEPSAKE_TOKEN_KEYS", KEYS)
        .env("KEEPSAKE_SHARDS", "2")
        .env("KEEPSAKE_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .envs(env.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keepsake");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait for keepsake") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status, err);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keepsake serve kept running; it was expected to stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a `keepsake` command (not serve) on `env`'s store settings; returns its output.
pub fn keepsake(env: &Env, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keepsake"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("KEEPSAKE_SHARDS")
        .envs(env.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run keepsake")
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn uuid() -> String {
    keepsake_model::IdGenerator::random(&keepsake_model::RandomIds).to_string()
}

pub fn put(item: &str, kind: &str, doc: Value) -> Value {
    json!({"change_id": uuid(), "kind": kind, "item_id": item, "op": "put", "document": doc})
}
