//! The admin API's client for the operator commands (`operator.rs`, `transfer.rs`): where the
//! server is and the operator token (`Conn`), requests that turn a refusal into the server's
//! problem detail (`Client`), and the plain tables the commands print.

use std::io::Write as _;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

/// Where the server is and how to authenticate.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The server's base URL.
    #[arg(long, env = "KEEPSAKE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The operator token the server was started with (default:
    /// ./data/.secrets/admin-token, as the embedded default writes).
    #[arg(long, env = "KEEPSAKE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub(crate) struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    pub(crate) fn new(c: &Conn) -> Result<Self> {
        let token = match &c.admin_token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string("data/.secrets/admin-token")
                .map(|t| t.trim().to_string())
                .context("no operator token: pass --admin-token or set KEEPSAKE_ADMIN_TOKEN")?,
        };
        Ok(Self {
            http: reqwest::Client::new(),
            url: c.url.trim_end_matches('/').to_string(),
            token,
        })
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        self.json_answer(req).await
    }

    /// A request to `path` with the operator token.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    /// Sends `req`; its JSON answer, or the server's refusal as an error.
    async fn json_answer(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("reach {}", self.url))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(refused(status, &v));
        }
        Ok(v)
    }

    /// A GET whose body is not JSON: the response, to read as it arrives.
    pub(crate) async fn get_stream(&self, path: &str) -> Result<reqwest::Response> {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .with_context(|| format!("reach {}", self.url))?;
        let status = resp.status();
        if !status.is_success() {
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(refused(status, &v));
        }
        Ok(resp)
    }

    /// A POST of a text body (`content_type`) whose answer is JSON.
    pub(crate) async fn post_text(
        &self,
        path: &str,
        content_type: &str,
        body: String,
    ) -> Result<Value> {
        let req = self
            .request(reqwest::Method::POST, path)
            .header("content-type", content_type)
            .body(body);
        self.json_answer(req).await
    }
}

/// The server's refusal (a problem document) as an error.
fn refused(status: reqwest::StatusCode, v: &Value) -> anyhow::Error {
    anyhow::anyhow!(
        "{status}: {} ({})",
        v["detail"].as_str().unwrap_or("no detail"),
        v["code"].as_str().unwrap_or("?")
    )
}

/// A query-string value, percent-encoded (times carry '+' and ':').
pub(crate) fn enc(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

pub(crate) fn print_table(rows: &[Vec<String>]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        writeln!(out, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}
