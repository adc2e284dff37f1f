//! What the benches share: starting the release `keepsake serve` on 127.0.0.1:0.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts `keepsake serve` listening on a free loopback port with `envs` (the store, tokens and
/// whatever the bench sets); returns the process and its base URL once it says where it
/// listens. Its later output is read and dropped so that it never blocks on a full pipe.
pub fn serve(envs: &[(&str, &str)]) -> (Child, String) {
    // `KEEPSAKE_BENCH_BIN` runs another build of the server (an A/B against an older commit).
    let bin = std::env::var_os("KEEPSAKE_BENCH_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_keepsake").into());
    #[allow(clippy::expect_used)]
    let mut child = Command::new(bin)
        .arg("serve")
        .env("KEEPSAKE_LISTEN", "127.0.0.1:0")
        .env("KEEPSAKE_LOG", "warn,keepsake::server=info")
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keepsake");
    #[allow(clippy::expect_used)]
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let base = loop {
        #[allow(clippy::expect_used)]
        let line = lines.next().expect("server output").expect("line");
        if let Some(rest) = line.split("listening on ").nth(1) {
            #[allow(clippy::expect_used)]
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, base)
}
