//! The Keepsake server: REST sync for handsets over the event log (`keepsake-log`).
//!
//! - [`api`]: routes, authentication, handlers, problem+json errors.
//! - [`dav`]: CardDAV and CalDAV on the same log; [`delete_guard`]: the mass-delete guard
//!   for clients that delete one item per request.
//! - [`auth`]: signed device tokens and the operator token; [`devices`]: the device registry.
//! - [`sync_token`]: the tokens pulls hand out. [`metrics`]: `/metrics`.
//! - [`memory`]: the process's allocator (jemalloc) and what it holds, for `/metrics`;
//!   [`resident`]: the views give way when the process is resident past budget plus overhead.
//! - [`server`]: startup, the embedded default's secrets, graceful shutdown. [`cli`]: flags.
//! - [`cluster`]: many servers on one store (etcd or static shard ownership, forwarding).
//! - [`recover`]: `keepsake recover-descriptor`, writing a lost store descriptor back.

pub mod admin_client;
pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dav;
pub mod delete_guard;
pub mod device_events;
pub mod devices;
pub mod fleet;
pub mod fleet_record;
pub mod fleet_remote;
pub mod memory;
pub mod metrics;
pub mod operator;
pub mod recover;
pub mod resident;
pub mod restore;
pub mod restore_record;
pub mod server;
pub mod sync_token;
pub mod transfer;
