//! `keepsake export` and `keepsake import`: vCard and iCalendar files in and out of a user's
//! items through the admin API (`GET /admin/v1/users/{id}/export`,
//! `POST /admin/v1/users/{id}/import`; the rules are `docs/FORMATS.md`).
//!
//! - An export is written as it arrives, to stdout or to `FILE.partial` renamed to `FILE` once
//!   complete: a failed export never leaves a truncated file that looks whole.
//! - An import splits each file into entries here (`keepsake_formats::entries`, the server's own
//!   splitter) and sends them in requests of at most `--batch` entries and [`MAX_REQUEST_TEXT`]
//!   bytes, each one push. An entry's text splits back to itself, so its derived change id is
//!   the same however the file is cut, and running an import again writes nothing. An entry
//!   that does not split is reported here with its line and not sent; the server's answers are
//!   mapped back to the lines of the file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use keepsake_formats::Format;
use serde_json::{Value, json};

use crate::admin_client::{Client, enc, print_table};

/// What `keepsake export` asks for.
pub(crate) struct ExportArgs {
    pub(crate) user: String,
    pub(crate) format: String,
    pub(crate) kind: Option<String>,
    pub(crate) as_of: Option<String>,
    pub(crate) output: Option<PathBuf>,
}

/// `keepsake export`: the admin export, written as it arrives.
pub(crate) async fn export(c: &Client, a: ExportArgs) -> Result<()> {
    let mut q = format!("format={}", enc(&a.format));
    if let Some(k) = &a.kind {
        q.push_str(&format!("&kind={}", enc(k)));
    }
    if let Some(t) = &a.as_of {
        q.push_str(&format!("&as_of={}", enc(t)));
    }
    let mut resp = c
        .get_stream(&format!("/admin/v1/users/{}/export?{q}", enc(&a.user)))
        .await?;
    let skipped: u64 = resp
        .headers()
        .get("x-keepsake-skipped")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let partial = a.output.as_deref().map(partial_path);
    let mut out: Box<dyn std::io::Write> = match &partial {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let copied = async {
        let mut bytes = 0u64;
        while let Some(chunk) = resp.chunk().await.context("read the export")? {
            out.write_all(&chunk).context("write the export")?;
            bytes += chunk.len() as u64;
        }
        out.flush().context("write the export")?;
        anyhow::Ok(bytes)
    }
    .await;
    drop(out);
    let bytes = match (copied, &partial, &a.output) {
        (Ok(bytes), Some(p), Some(path)) => {
            std::fs::rename(p, path)
                .with_context(|| format!("rename {} to {}", p.display(), path.display()))?;
            bytes
        }
        (Ok(bytes), _, _) => bytes,
        (Err(e), Some(p), _) => {
            let _ = std::fs::remove_file(p);
            return Err(e);
        }
        (Err(e), None, _) => return Err(e),
    };
    let mut err = std::io::stderr().lock();
    writeln!(err, "exported {bytes} bytes")?;
    if skipped > 0 {
        writeln!(
            err,
            "{skipped} item(s) could not be written as {} and were left out",
            a.format
        )?;
    }
    Ok(())
}

/// `FILE.partial`, beside `FILE`.
fn partial_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// The most text one import request carries (the server's default request limit is 16 MiB): a
/// batch is cut before it would pass this; one larger entry goes alone.
pub const MAX_REQUEST_TEXT: usize = 8 << 20;

/// What `keepsake import` asks for.
pub(crate) struct ImportArgs {
    pub(crate) user: String,
    pub(crate) format: Option<String>,
    pub(crate) batch: u64,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) json: bool,
}

/// One entry's outcome, with its place in the file.
struct Row {
    file: String,
    line: u64,
    uid: Value,
    status: String,
    detail: String,
    answer: Value,
}

/// The format of `path`: `--format`, else its extension.
fn format_of(path: &Path, asked: Option<&str>) -> Result<Format> {
    let name = match asked {
        Some(f) => f.to_ascii_lowercase(),
        None => path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default(),
    };
    match name.as_str() {
        "vcard" | "vcf" => Ok(Format::VCard),
        "icalendar" | "ics" | "ical" => Ok(Format::ICalendar),
        _ => anyhow::bail!(
            "{}: cannot tell vCard from iCalendar (extension .vcf or .ics, or give --format vcard|icalendar)",
            path.display()
        ),
    }
}

fn media_type(format: Format) -> &'static str {
    match format {
        Format::VCard => "text/vcard",
        Format::ICalendar => "text/calendar",
    }
}

/// `keepsake import`.
pub(crate) async fn import(c: &Client, a: ImportArgs) -> Result<()> {
    let mut rows = Vec::new();
    let mut failed_files = 0usize;
    for path in &a.files {
        if let Err(e) = import_file(c, &a, path, &mut rows).await {
            failed_files += 1;
            writeln!(std::io::stderr().lock(), "{}: {e:#}", path.display())?;
        }
    }
    let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
    let (applied, duplicate, rejected) = (count("applied"), count("duplicate"), count("rejected"));
    if a.json {
        let answers: Vec<Value> = rows.iter().map(|r| r.answer.clone()).collect();
        writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(&json!({"results": answers}))?
        )?;
    } else {
        // Every rejected entry with its line; the others are counted.
        let mut table = vec![vec![
            "FILE".into(),
            "LINE".into(),
            "UID".into(),
            "STATUS".into(),
            "DETAIL".into(),
        ]];
        for r in rows.iter().filter(|r| r.status == "rejected") {
            table.push(vec![
                r.file.clone(),
                r.line.to_string(),
                text(&r.uid),
                r.status.clone(),
                r.detail.clone(),
            ]);
        }
        if table.len() > 1 {
            print_table(&table)?;
        }
    }
    writeln!(
        std::io::stderr().lock(),
        "{} entries: {applied} applied, {duplicate} duplicate, {rejected} rejected; {} of {} files imported",
        rows.len(),
        a.files.len() - failed_files,
        a.files.len()
    )?;
    if rejected > 0 || failed_files > 0 {
        anyhow::bail!(
            "not everything was imported ({rejected} entries rejected, {failed_files} files failed); what was imported stays, and running the import again after a fix writes only what is new"
        );
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Imports one file, appending a row per entry to `rows`.
async fn import_file(c: &Client, a: &ImportArgs, path: &Path, rows: &mut Vec<Row>) -> Result<()> {
    let format = format_of(path, a.format.as_deref())?;
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let text = keepsake_formats::utf8_text(&bytes).map_err(|line| {
        anyhow::anyhow!("line {line} is not valid UTF-8; the file must be UTF-8")
    })?;
    let file = path.display().to_string();
    // The entries that split, as (line, uid, text); the others are rows already.
    let mut pending: Vec<(usize, Option<String>, String)> = Vec::new();
    for entry in keepsake_formats::entries(text, format) {
        match entry {
            Ok(e) => {
                let mut t = e.text.into_owned();
                if !t.ends_with('\n') {
                    t.push_str("\r\n");
                }
                pending.push((e.line, e.uid, t));
            }
            Err(e) => rows.push(Row {
                file: file.clone(),
                line: e.line as u64,
                uid: e.uid.clone().map_or(Value::Null, Value::String),
                status: "rejected".into(),
                detail: format!("{} (invalid_entry)", e.reason),
                answer: json!({"file": file, "line": e.line, "uid": e.uid, "status": "rejected",
                    "error": {"code": "invalid_entry", "detail": e.reason.to_string()}}),
            }),
        }
    }
    let total = pending.len();
    let path_q = format!("/admin/v1/users/{}/import", enc(&a.user));
    let mut sent = 0usize;
    let mut rest = pending.as_slice();
    while !rest.is_empty() {
        // As many entries as --batch and the request size allow; at least one.
        let mut n = 0usize;
        let mut size = 0usize;
        while n < rest.len() && (n as u64) < a.batch {
            let len = rest[n].2.len();
            if n > 0 && size + len > MAX_REQUEST_TEXT {
                break;
            }
            size += len;
            n += 1;
        }
        let (chunk, after) = rest.split_at(n);
        rest = after;
        let body: String = chunk.iter().map(|(_, _, t)| t.as_str()).collect();
        let answer = c
            .post_text(&path_q, media_type(format), body)
            .await
            .with_context(|| {
                format!(
                    "entries from line {} ({sent} of {total} entries sent before)",
                    chunk[0].0
                )
            })?;
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        if results.len() != chunk.len() {
            anyhow::bail!(
                "the server answered {} results for {} entries from line {}",
                results.len(),
                chunk.len(),
                chunk[0].0
            );
        }
        for ((line, uid, _), r) in chunk.iter().zip(results) {
            let mut answer = r.clone();
            answer["file"] = json!(file);
            answer["line"] = json!(line);
            rows.push(Row {
                file: file.clone(),
                line: *line as u64,
                uid: uid.clone().map_or(Value::Null, Value::String),
                status: r["status"].as_str().unwrap_or("?").to_string(),
                detail: format!(
                    "{} ({})",
                    r["error"]["detail"].as_str().unwrap_or(""),
                    r["error"]["code"].as_str().unwrap_or("")
                ),
                answer,
            });
        }
        sent += n;
        if total > n {
            writeln!(
                std::io::stderr().lock(),
                "{file}: {sent} of {total} entries sent"
            )?;
        }
    }
    Ok(())
}
