//! An etcd server for the cluster tests, started on free loopback ports in a fresh data
//! directory and stopped when dropped (or when the test process exits: it runs under a shell
//! that kills it when its stdin, held here, closes). A test may stop it and start it again on
//! the same port and data, as an outage does.
//!
//! etcd is Debian's `etcd-server` (`make etcd` installs it); `KEEPSAKE_ETCD` names another
//! binary.

use std::io::Write;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::free_port;

/// A running (or stopped) etcd.
#[derive(Debug)]
pub struct Etcd {
    /// `etcd://127.0.0.1:<port>`, as `keepsake serve --cluster` takes it.
    pub url: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    running: Option<(Child, ChildStdin)>,
}

impl Etcd {
    /// Starts a one-member etcd.
    pub fn start() -> Result<Etcd> {
        let dir = tempfile::tempdir().context("etcd data directory")?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let mut etcd = Etcd {
            url: format!("etcd://127.0.0.1:{client_port}"),
            client_port,
            peer_port,
            dir,
            running: None,
        };
        etcd.resume()?;
        Ok(etcd)
    }

    /// Starts it again after [`Etcd::stop`], on the same port and data.
    pub fn resume(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let exe = std::env::var("KEEPSAKE_ETCD").unwrap_or_else(|_| "etcd".into());
        let (c, p) = (self.client_port, self.peer_port);
        let data = self.dir.path().join("data");
        let script = format!(
            "{exe} --name t --data-dir '{}' \
             --listen-client-urls http://127.0.0.1:{c} --advertise-client-urls http://127.0.0.1:{c} \
             --listen-peer-urls http://127.0.0.1:{p} --initial-advertise-peer-urls http://127.0.0.1:{p} \
             --initial-cluster t=http://127.0.0.1:{p} >'{}' 2>&1 & pid=$!; \
             trap 'kill $pid 2>/dev/null' EXIT; read _ignored; kill $pid 2>/dev/null; wait $pid",
            data.display(),
            self.dir.path().join("etcd.log").display(),
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn sh for etcd")?;
        let stdin = child.stdin.take().context("etcd stdin")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let health = std::net::TcpStream::connect(("127.0.0.1", c)).is_ok();
            if health {
                self.running = Some((child, stdin));
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "{exe} exited with {status}; is it installed? (Debian: etcd-server; make etcd). Its log: {}",
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{exe} did not listen on 127.0.0.1:{c} within 30 s")
    }

    /// Stops it (its data stays for [`Etcd::resume`]).
    pub fn stop(&mut self) {
        if let Some((mut child, mut stdin)) = self.running.take() {
            let _ = stdin.write_all(b"\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
