//! `keepsake recover-descriptor`: writes a lost store descriptor (`keepsake.json`) back, on an
//! operator's word, against the store directly (no server).
//!
//! A server refuses to start on a store that holds data but no descriptor
//! (`StoreError::DescriptorMissing`): creating one would start a new store on top of the old.
//! This command writes the old store's descriptor back instead:
//!
//! - the **shard count** from the listing (`shards/<s>/`: the highest shard holding data, plus
//!   one) when every shard below the highest holds data; otherwise, or to say so explicitly,
//!   from `--shards`, which must cover every shard holding data. Either way one segment of each
//!   shard is read and its users must hash to that shard with that count;
//! - the **store id** from `--store-id` or a device's sync token (`--from-sync-token`), so that
//!   devices' sync tokens keep working; or a new one with `--new-store-id`: devices are then told
//!   `token_from_other_store` and sync again from the data that is there (not from an empty
//!   account);
//! - written create-only: a descriptor that exists (or appears meanwhile) is never replaced.
//!   Its `created_at` is the time of the recovery (the original is not known).
//!
//! What was written goes to stdout as JSON; logs go to stderr.

use std::io::Write as _;

use anyhow::{Context, Result, bail};
use clap::Args;
use keepsake_log::verify::{Placement, check_placement};
use keepsake_model::{Clock, IdGenerator, RandomIds, StoreId, SystemClock};
use keepsake_store::recover::{CountFrom, RecoverOptions, Recovered, recover_descriptor};
use object_store::ObjectStore;
use serde::Serialize;
use std::sync::Arc;

use crate::sync_token::SyncToken;

/// `keepsake recover-descriptor` flags.
#[derive(Args, Debug, Clone)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub store: crate::config::StoreArgs,
    /// The store's old id, so that devices' sync tokens keep working (every server start logged
    /// it as store_id).
    #[arg(long, env = "KEEPSAKE_RECOVER_STORE_ID")]
    pub store_id: Option<String>,
    /// Take the old store id from a sync token that a device holds (the `token` of a pull).
    #[arg(long, env = "KEEPSAKE_RECOVER_FROM_SYNC_TOKEN", hide_env_values = true)]
    pub from_sync_token: Option<String>,
    /// Give the store a new id: devices' sync tokens stop working, and every device syncs again
    /// from the data that is there.
    #[arg(long, env = "KEEPSAKE_RECOVER_NEW_STORE_ID")]
    pub new_store_id: bool,
    /// The shard count the store was created with. Needed when the listing cannot tell it (a
    /// shard below the highest one holding data holds nothing). Deliberately not KEEPSAKE_SHARDS:
    /// a server's setting must not confirm a recovery by accident.
    #[arg(long, env = "KEEPSAKE_RECOVER_SHARDS")]
    pub shards: Option<u32>,
    /// Work out the descriptor and check it, but do not write it.
    #[arg(long, env = "KEEPSAKE_RECOVER_DRY_RUN")]
    pub dry_run: bool,
}

/// Where the recovered store id came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdFrom {
    /// `--store-id`.
    StoreId,
    /// `--from-sync-token`.
    SyncToken,
    /// `--new-store-id`.
    New,
}

/// What `recover-descriptor` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What was worked out and written (or, on a dry run, would be).
    #[serde(flatten)]
    pub recovered: Recovered,
    /// Where the store id came from.
    pub store_id_from: IdFrom,
    /// The check of the shard count against the users of one segment per shard.
    pub placement: Placement,
}

impl RecoverArgs {
    /// The store id the operator chose: exactly one of the three ways.
    pub fn chosen_id(&self, ids: &dyn IdGenerator) -> Result<(StoreId, IdFrom)> {
        match (&self.store_id, &self.from_sync_token, self.new_store_id) {
            (Some(id), None, false) => {
                let id = id
                    .parse::<StoreId>()
                    .with_context(|| format!("--store-id {id:?} is not a UUID"))?;
                Ok((id, IdFrom::StoreId))
            }
            (None, Some(t), false) => {
                let token = SyncToken::decode(t.trim())
                    .context("--from-sync-token: not a Keepsake sync token")?;
                Ok((token.store_id, IdFrom::SyncToken))
            }
            (None, None, true) => Ok((StoreId(ids.random()), IdFrom::New)),
            (None, None, false) => bail!(
                "which store id? Pass --store-id <the old id> (every server start logged it as \
                 store_id) or --from-sync-token <a device's sync token>, so that devices' sync \
                 tokens keep working; or --new-store-id (every device then syncs again from the \
                 data that is there)"
            ),
            _ => bail!("pass only one of --store-id, --from-sync-token and --new-store-id"),
        }
    }
}

/// Works out, checks and (unless a dry run) writes the descriptor of `store`.
pub async fn recover(
    store: &Arc<dyn ObjectStore>,
    args: &RecoverArgs,
    clock: &dyn Clock,
    ids: &dyn IdGenerator,
) -> Result<Report> {
    let (store_id, store_id_from) = args.chosen_id(ids)?;
    let opts = RecoverOptions {
        store_id,
        shards: args.shards,
        dry_run: args.dry_run,
    };
    let (recovered, placement) = recover_descriptor(store.as_ref(), opts, clock, |d, survey| {
        let store = store.clone();
        async move {
            let placement =
                check_placement(&store, d.shard_count, survey.present.iter().copied()).await?;
            if let Some((shard, user, to)) = placement.misplaced.first() {
                bail!(
                    "the store was not written with {} shards: user {user}, in shard {shard}, \
                     would hash to shard {to} ({} of the {} users read are in the wrong shard). \
                     Pass --shards with the count the store was created with",
                    d.shard_count,
                    placement.misplaced.len(),
                    placement.users_checked
                );
            }
            anyhow::Ok(placement)
        }
    })
    .await?;
    Ok(Report {
        recovered,
        store_id_from,
        placement,
    })
}

/// Installs a stderr log subscriber (the command's output is stdout's JSON).
fn log_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEEPSAKE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// `keepsake recover-descriptor`.
pub fn main(args: RecoverArgs) -> Result<std::process::ExitCode> {
    log_to_stderr();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let store = keepsake_store::open_store_opts(&args.store.url, args.store.open_options())
            .with_context(|| format!("open store {}", args.store.url))?;
        recover(
            &store.retrying(args.store.retry()),
            &args,
            &SystemClock,
            &RandomIds,
        )
        .await
        .with_context(|| format!("recover the descriptor of {}", store.description))
    })?;
    let mut err = std::io::stderr().lock();
    let d = &report.recovered.descriptor;
    writeln!(
        err,
        "{} keepsake.json: store id {} (from {}), {} shards (from {}); shards holding data: {:?}; \
         users read and found in their shards: {}",
        if report.recovered.written {
            "wrote"
        } else {
            "dry run, would write"
        },
        d.store_id,
        match report.store_id_from {
            IdFrom::StoreId => "--store-id",
            IdFrom::SyncToken => "the sync token",
            IdFrom::New => "--new-store-id",
        },
        d.shard_count,
        match report.recovered.shard_count_from {
            CountFrom::Listing => "the highest shard holding data, plus one",
            CountFrom::Operator => "--shards",
        },
        report.recovered.survey.present,
        report.placement.users_checked
    )?;
    if !report.recovered.survey.foreign.is_empty() {
        writeln!(
            err,
            "ignored under shards/ (not Keepsake's): {:?}",
            report.recovered.survey.foreign
        )?;
    }
    if report.store_id_from == IdFrom::New {
        writeln!(
            err,
            "a new store id: devices are told token_from_other_store and sync again from the data \
             that is there"
        )?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    Ok(std::process::ExitCode::SUCCESS)
}
