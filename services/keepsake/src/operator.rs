//! The operator CLI: `keepsake state | events | diff | export | import | restore | restore-all |
//! rebuild | compact` talk to a running server's admin API (URL and operator token from flags or
//! `KEEPSAKE_URL` / `KEEPSAKE_ADMIN_TOKEN`). Data goes to stdout — a readable table, or the
//! server's JSON with `--json`; `export` writes the vCard/iCalendar text itself (`transfer.rs`).
//! Progress and errors go to stderr.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::admin_client::{Client, enc, print_table};
use crate::transfer;

pub use crate::admin_client::Conn;

/// Operator commands.
#[derive(Subcommand, Debug)]
pub enum Op {
    /// A user's live items as they were at a moment.
    State {
        #[command(flatten)]
        conn: Conn,
        /// The user.
        #[arg(long)]
        user: String,
        /// RFC 3339 time.
        #[arg(long, conflicts_with = "as_of_seq")]
        as_of: Option<String>,
        /// A seq of the user's log.
        #[arg(long)]
        as_of_seq: Option<u64>,
        /// Only these kinds (comma-separated).
        #[arg(long)]
        kind: Option<String>,
    },
    /// A user's raw events, oldest first.
    Events {
        #[command(flatten)]
        conn: Conn,
        /// The user.
        #[arg(long)]
        user: String,
        /// Only events after this seq.
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Items added, removed and changed between two moments.
    Diff {
        #[command(flatten)]
        conn: Conn,
        /// The user.
        #[arg(long)]
        user: String,
        /// RFC 3339 time.
        #[arg(long)]
        from: String,
        /// RFC 3339 time.
        #[arg(long)]
        to: String,
    },
    /// A user's items as one vCard or iCalendar file, live or as they were at a moment, written
    /// as the server sends it to stdout (or to --output).
    Export {
        #[command(flatten)]
        conn: Conn,
        /// The user.
        #[arg(long)]
        user: String,
        /// vcard (contacts) or icalendar (events, tasks, notes).
        #[arg(long)]
        format: String,
        /// Only this kind (of the format's kinds).
        #[arg(long)]
        kind: Option<String>,
        /// RFC 3339 time: the items as they were then.
        #[arg(long)]
        as_of: Option<String>,
        /// Write to this file instead of stdout. It appears only once the export is complete
        /// (written beside it as FILE.partial, then renamed), so a failed export never leaves a
        /// truncated file that looks whole.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Import .vcf and .ics files into a user's items, recorded with origin `import`. Safe to
    /// run again: an entry imported before is a duplicate and writes nothing. Exits 1 if an
    /// entry was rejected or a file could not be imported.
    Import {
        #[command(flatten)]
        conn: Conn,
        /// The user.
        #[arg(long)]
        user: String,
        /// vcard or icalendar (default: from each file's extension: .vcf, .vcard; .ics, .ical).
        #[arg(long)]
        format: Option<String>,
        /// Entries per request (one push each); at most the server's max_changes_per_push.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        batch: u64,
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Restore one user to a moment (appends changes; never rewrites).
    Restore {
        #[command(flatten)]
        conn: Conn,
        /// The user.
        #[arg(long)]
        user: String,
        /// RFC 3339 time.
        #[arg(long, conflicts_with = "as_of_seq")]
        as_of: Option<String>,
        /// A seq of the user's log.
        #[arg(long)]
        as_of_seq: Option<u64>,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
        /// Only these kinds (comma-separated).
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        /// Show what would change without writing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore every user (or a list) to a moment, as a background job, with progress.
    RestoreAll {
        #[command(flatten)]
        conn: Conn,
        /// RFC 3339 time.
        #[arg(long)]
        as_of: String,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
        /// Only these users (comma-separated); default every user.
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
        /// Only these kinds (comma-separated).
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        /// Start the job and print its id without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Rebuild every view from the log and compare state hashes.
    Rebuild {
        #[command(flatten)]
        conn: Conn,
    },
    /// Checkpoint every shard now and move every segment up to it into history objects.
    Compact {
        #[command(flatten)]
        conn: Conn,
    },
}

impl Op {
    /// The server this command talks to.
    fn conn(&self) -> &Conn {
        match self {
            Op::State { conn, .. }
            | Op::Events { conn, .. }
            | Op::Diff { conn, .. }
            | Op::Export { conn, .. }
            | Op::Import { conn, .. }
            | Op::Restore { conn, .. }
            | Op::RestoreAll { conn, .. }
            | Op::Rebuild { conn }
            | Op::Compact { conn } => conn,
        }
    }
}

fn moment_query(as_of: &Option<String>, as_of_seq: Option<u64>) -> Result<String> {
    match (as_of, as_of_seq) {
        (Some(t), None) => Ok(format!("as_of={}", enc(t))),
        (None, Some(n)) => Ok(format!("as_of_seq={n}")),
        _ => bail!("give --as-of or --as-of-seq"),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Runs an operator command.
pub fn run(op: Op) -> Result<()> {
    let conn = op.conn().clone();
    let conn = &conn;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let c = Client::new(conn)?;
        let get = reqwest::Method::GET;
        let post = reqwest::Method::POST;
        let (v, rows): (Value, Vec<Vec<String>>) = match op {
            Op::State { user, as_of, as_of_seq, kind, .. } => {
                let mut q = moment_query(&as_of, as_of_seq)?;
                if let Some(k) = kind {
                    q.push_str(&format!("&kind={}", enc(&k)));
                }
                let v = c.call(get, &format!("/admin/v1/users/{user}/items?{q}"), None).await?;
                let mut rows = vec![vec!["ITEM".into(), "KIND".into(), "VERSION".into(), "SEQ".into(), "CHANGED AT".into(), "BYTES".into()]];
                for i in v["items"].as_array().into_iter().flatten() {
                    rows.push(vec![s(&i["item_id"]), s(&i["kind"]), s(&i["version"]), s(&i["seq"]), s(&i["changed_at"]), i["document"].to_string().len().to_string()]);
                }
                (v, rows)
            }
            Op::Events { user, after_seq, limit, .. } => {
                let v = c.call(get, &format!("/admin/v1/users/{user}/events?after_seq={after_seq}&limit={limit}"), None).await?;
                let mut rows = vec![vec!["SEQ".into(), "OP".into(), "KIND".into(), "ITEM".into(), "VERSION".into(), "ORIGIN".into(), "DEVICE".into(), "RECORDED AT".into()]];
                for e in v["events"].as_array().into_iter().flatten() {
                    rows.push(vec![s(&e["seq"]), s(&e["op"]), s(&e["kind"]), s(&e["item_id"]), s(&e["version"]), s(&e["origin"]), s(&e["device_id"]), s(&e["recorded_at"])]);
                }
                (v, rows)
            }
            Op::Diff { user, from, to, .. } => {
                let v = c.call(get, &format!("/admin/v1/users/{user}/diff?from={}&to={}", enc(&from), enc(&to)), None).await?;
                let mut rows = vec![vec!["".into(), "ITEM".into(), "KIND".into(), "VERSION".into()]];
                for (mark, key) in [("+", "added"), ("-", "removed")] {
                    for i in v[key].as_array().into_iter().flatten() {
                        rows.push(vec![mark.into(), s(&i["item_id"]), s(&i["kind"]), s(&i["version"])]);
                    }
                }
                for ch in v["changed"].as_array().into_iter().flatten() {
                    rows.push(vec!["~".into(), s(&ch["after"]["item_id"]), s(&ch["after"]["kind"]), format!("{} -> {}", s(&ch["before"]["version"]), s(&ch["after"]["version"]))]);
                }
                (v, rows)
            }
            Op::Export { user, format, kind, as_of, output, .. } => {
                let args = transfer::ExportArgs { user, format, kind, as_of, output };
                return transfer::export(&c, args).await;
            }
            Op::Import { user, format, batch, files, .. } => {
                let args = transfer::ImportArgs { user, format, batch, files, json: conn.json };
                return transfer::import(&c, args).await;
            }
            Op::Restore { user, as_of, as_of_seq, reason, kinds, dry_run, .. } => {
                moment_query(&as_of, as_of_seq)?;
                let mut body = json!({"reason": reason, "dry_run": dry_run});
                if let Some(t) = as_of {
                    body["as_of"] = json!(t);
                }
                if let Some(n) = as_of_seq {
                    body["as_of_seq"] = json!(n);
                }
                if !kinds.is_empty() {
                    body["kinds"] = json!(kinds);
                }
                let v = c.call(post, &format!("/admin/v1/users/{user}/restore"), Some(body)).await?;
                let rows = vec![
                    vec!["RESTORE".into(), "DRY RUN".into(), "RESTORED".into(), "REVERTED".into(), "REMOVED".into(), "SEQ".into()],
                    vec![s(&v["restore_id"]), s(&v["dry_run"]), s(&v["restored"]), s(&v["reverted"]), s(&v["removed"]), s(&v["seq"])],
                ];
                (v, rows)
            }
            Op::RestoreAll { as_of, reason, users, kinds, no_wait, .. } => {
                let mut body = json!({"as_of": as_of, "reason": reason, "users": if users.is_empty() { json!("all") } else { json!(users) }});
                if !kinds.is_empty() {
                    body["kinds"] = json!(kinds);
                }
                let started = c.call(post, "/admin/v1/restores", Some(body)).await?;
                let id = s(&started["restore_id"]);
                if no_wait {
                    (started.clone(), vec![vec!["RESTORE".into()], vec![id]])
                } else {
                    let bar = indicatif::ProgressBar::new(0);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template("{spinner} restoring users {pos}/{len} [{bar:40}] {per_sec} {msg}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    let v = loop {
                        let p = c.call(get.clone(), &format!("/admin/v1/restores/{id}"), None).await?;
                        bar.set_length(p["users_total"].as_u64().unwrap_or(0));
                        bar.set_position(p["users_done"].as_u64().unwrap_or(0));
                        bar.set_message(format!("{} changes", p["changes_written"]));
                        if p["state"] != "running" {
                            bar.finish();
                            break p;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    };
                    if v["state"] == "failed" {
                        bail!("fleet restore {id} failed: {}", s(&v["error"]));
                    }
                    let rows = vec![
                        vec!["RESTORE".into(), "STATE".into(), "USERS".into(), "CHANGES".into(), "FINISHED AT".into()],
                        vec![id, s(&v["state"]), format!("{}/{}", s(&v["users_done"]), s(&v["users_total"])), s(&v["changes_written"]), s(&v["finished_at"])],
                    ];
                    (v, rows)
                }
            }
            Op::Compact { .. } => {
                let v = c.call(post.clone(), "/admin/v1/compact", None).await?;
                let rows = vec![
                    vec!["HISTORY OBJECTS".into(), "SEGMENTS".into(), "EVENTS".into(), "BYTES WRITTEN".into(), "OBJECTS DELETED".into(), "BYTES DELETED".into()],
                    vec![s(&v["history_objects_written"]), s(&v["segments_compacted"]), s(&v["events_compacted"]), s(&v["bytes_written"]), s(&v["objects_deleted"]), s(&v["bytes_deleted"])],
                ];
                (v, rows)
            }
            Op::Rebuild { .. } => {
                let v = c.call(post, "/admin/v1/rebuild", None).await?;
                let rows = vec![
                    vec!["EQUAL".into(), "USERS".into(), "EVENTS".into(), "HASH BEFORE".into(), "HASH AFTER".into()],
                    vec![s(&v["equal"]), s(&v["users"]), s(&v["events"]), s(&v["state_hash_before"]), s(&v["state_hash_after"])],
                ];
                (v, rows)
            }
        };
        if conn.json {
            writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&v)?)?;
        } else {
            print_table(&rows)?;
        }
        anyhow::Ok(())
    })
}
