//! A Keepsake server run as a child of the load generator: started on a free loopback port
//! (`KEEPSAKE_LISTEN=127.0.0.1:0`, the address read from its log), timed until `/readyz`
//! answers, its resident memory read from `/proc`, stopped with SIGTERM (a clean shutdown, as a
//! deploy does) and waited for. Its log is kept in a file for the reader of a failed run.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How a server of the run is started.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// The `keepsake` binary.
    pub bin: PathBuf,
    /// Its store (`KEEPSAKE_STORE`).
    pub store: String,
    /// Its operator token.
    pub admin_token: String,
    /// Where its log goes (appended to, one run after another).
    pub log: PathBuf,
    /// How long start-up may take before the run gives up.
    pub ready_within: Duration,
    /// Further settings (`KEEPSAKE_*`); the rest of its environment is the load generator's.
    pub env: Vec<(String, String)>,
}

/// A running server.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// Its base URL.
    pub url: String,
    /// From spawning the process to `/readyz` answering 200.
    pub ready_after: Duration,
}

impl ServerProcess {
    /// Starts a server and waits until it is ready.
    pub async fn start(spec: &ServerSpec, http: &reqwest::Client) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut child = Command::new(&spec.bin)
            .arg("serve")
            .env("KEEPSAKE_STORE", &spec.store)
            .env("KEEPSAKE_LISTEN", "127.0.0.1:0")
            .env("KEEPSAKE_ADMIN_TOKEN", &spec.admin_token)
            .env("KEEPSAKE_LOG", "warn,keepsake::server=info")
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))?;
        let Some(stderr) = child.stderr.take() else {
            bail!("the server's log is not readable");
        };
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        // The address is in the log; the rest of the log is copied to the file as it comes, so
        // that the server never blocks on a full pipe.
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Some(tx) = addr_tx.take()
                {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.trim_end_matches(['"', ',']).to_string());
                }
            }
        });
        let url = match tokio::time::timeout(spec.ready_within, addr_rx).await {
            Ok(Ok(url)) => url,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the server did not say where it listens within {:?}: see {}",
                    spec.ready_within,
                    spec.log.display()
                );
            }
        };
        let mut server = Self {
            child,
            url,
            ready_after: Duration::ZERO,
        };
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!(
                    "the server exited ({status}) before it was ready: see {}",
                    spec.log.display()
                );
            }
            let ready = http
                .get(format!("{}/readyz", server.url))
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if started.elapsed() > spec.ready_within {
                server.kill();
                bail!(
                    "the server was not ready within {:?}: see {}",
                    spec.ready_within,
                    spec.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.ready_after = started.elapsed();
        Ok(server)
    }

    /// Its resident memory now, in bytes (`VmRSS`), if the system says.
    pub fn resident_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// Stops it as a deploy does (SIGTERM: it finishes what it holds) and waits up to
    /// `within`; then kills it. Returns how long the stop took.
    pub async fn stop(mut self, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let pid = self.child.id().to_string();
        let signalled = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("running kill -TERM")?;
        if !signalled.success() {
            bail!("kill -TERM {pid}: {signalled}");
        }
        while started.elapsed() < within {
            if self
                .child
                .try_wait()
                .context("waiting for the server")?
                .is_some()
            {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
        bail!("the server did not stop within {within:?} of SIGTERM (killed)")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    /// A run that fails leaves no server behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}
