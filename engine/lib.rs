//! `engine`: a webhook pipeline engine.
//!
//! Users describe each webhook route in a YAML file; the engine checks every file against JSON
//! schemas at boot and serves the routes. The modules follow the path a request takes.
//!
//! ```text
//! loading (boot, `engine validate`)
//!   yaml           YAML -> JSON value + line/column of every value; bounds hostile input
//!   schema         JSON-schema checks -> positioned, value-free messages
//!   env            env.schema.yaml: declared variables, typed, defaulted, checklist rules
//!   config         pipelines directory -> Project (settings, pipelines, route table) or every error
//!   plan           Project -> Plan: every verifier, transform program and responder compiled once
//!   table_check    each postgres sink's table against what its pipeline writes (fixtures tried)
//!   diagnostics    file:line:col findings; text / json / github output
//!
//! the request path (serving)
//!   server         salvo service, CORS hoop, graceful shutdown; server::dispatch: route ->
//!                  maintenance -> size limit -> rate limit -> verify -> respond -> enqueue
//!   route          method + path -> pipeline (404 / 405)
//!   client_ip      client address and public URL behind trusted proxies
//!   rate_limit     GCRA per key, in memory (governor) or shared through Redis
//!   verify         provider signatures, rotation, per-tenant secrets (verify::tenant)
//!   request_field  a named header / path / query / form / JSON field of a request
//!   respond        static / templated / scripted synchronous responses
//!   redis_conn     REDIS_URL (one node or a Redis Cluster) and the one connection type for both;
//!                  redis_conn::group_commit: the request path's one connection, limits and
//!                  appends of concurrent requests sent together
//!   queue          durable queue on Redis Streams: dedupe+append, group reads, ack/retry/dead letters
//!
//! the worker
//!   worker         dequeue -> transform -> sink -> ack / retry / dead-letter; reaper, promoter
//!   transform      Rhai sandbox, compiled steps, event view; rows for sinks
//!   sink           postgres (typed by jsonb_populate_recordset, idempotent), HTTP, file / stdout
//!   archive        every event's request and story, searched and replayed (engine events)
//!
//! around them
//!   db             Postgres pools with TLS (sslmode: disable / require / verify-full)
//!   crypto         AES-256-GCM for stored secrets, key rotation
//!   clock          the time and minted event ids (frozen by replay)
//!   oauth          authorization-code flows with PKCE: start, callback, encrypted tokens
//!   connection     outbound calls of respond scripts: declared hosts, tenants' OAuth tokens
//!   fixture        the fixture format: a recorded request and what it should produce;
//!                  fixture::record writes them (engine serve --record), fixture::redact a
//!                  pipeline's `redact` applied to a body shown or kept outside the queue
//!   replay         fixtures run in process through the real pipelines (engine replay)
//!   ops            /metrics, /ready, logs, traces (OpenTelemetry), outages, Slack alerts, Sentry
//!   console        /console: pipelines, live traffic, queues, dead letters, the event archive
//!   migrate        migrations/ applied in order under an advisory lock (refinery history)
//!   cli            engine serve | worker | validate | replay | queue | dlq | events | migrate |
//!                  secrets | tenants | schema
//! ```
//!
//! `docs/architecture.md` has the longer map.

#![forbid(unsafe_code)]

pub mod archive;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod connection;
pub mod console;
pub mod crypto;
pub mod db;
pub mod diagnostics;
pub mod env;
pub mod fixture;
pub mod migrate;
pub mod oauth;
pub mod ops;
pub mod plan;
pub mod queue;
pub mod rate_limit;
pub mod redis_conn;
pub mod replay;
pub mod request_field;
pub mod respond;
pub mod route;
pub mod schema;
pub mod server;
pub mod sink;
pub mod table_check;
pub mod transform;
pub mod verify;
pub mod worker;
pub mod yaml;
