//! Server-wide settings: `engine.yaml` in the pipelines directory.
//!
//! Layered with figment: built-in defaults < the settings file < the environment. The environment
//! layer uses the seed deployment's variable names (`PORT`, `CORS_ORIGIN`, `MAINTENANCE_MODE`,
//! `REDIS_URL`, `DATABASE_URL`, `BACKEND_URL`), taken from the validated [`Env`], so only variables
//! declared in the env schema can change settings.

use std::fmt;

use figment::Figment;
use figment::providers::Serialized;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::units::ByteSize;
use crate::env::Env;

/// Engine settings.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(title = "Engine settings")]
pub struct Settings {
    /// Interface (IP address) to listen on. Environment: `HOST`; `engine serve --host`.
    pub host: String,
    /// TCP port to listen on. Environment: `PORT`.
    pub port: u16,
    /// Public base URL of this service, e.g. `https://api.example.com`. Environment: `BACKEND_URL`.
    pub public_url: Option<String>,
    /// Cross-origin requests from browsers.
    pub cors: CorsSettings,
    /// Maintenance mode: pipeline routes answer 503, `/health` stays up.
    pub maintenance: MaintenanceSettings,
    /// Largest request body accepted by any pipeline (a pipeline may set its own).
    pub body_limit: ByteSize,
    /// Default rate limit for every route (`/health` included unless listed in `exempt`);
    /// a pipeline's own `rate_limit` replaces it. Shared through Redis when `redis_url` is set.
    pub rate_limit: Option<super::rate_limit::RateLimit>,
    /// Redis connection URL. Environment: `REDIS_URL`.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key the engine writes (several deployments can share one Redis).
    pub redis_key_prefix: String,
    /// Postgres connection URL for the sinks. Environment: `DATABASE_URL`.
    pub database_url: Option<String>,
    /// Proxies (IP addresses or CIDR ranges) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// Seconds in-flight requests get to finish after SIGTERM before connections are closed.
    pub shutdown_grace_secs: u64,
    /// Connection timeouts against slow or stalled clients (slow-loris).
    pub timeouts: Timeouts,
    /// How many connections are held open at once, in all and per client address.
    pub connections: ConnectionsConfig,
    /// Where Postgres sinks write JSON lines when DATABASE_URL is not set (development only).
    pub data_dir: String,
    /// Postgres connections per engine process.
    #[schemars(range(min = 1, max = 200))]
    pub database_pool_size: usize,
    /// Longest a sink statement may run before Postgres cancels it (then the event is retried).
    #[schemars(range(min = 100, max = 600000))]
    pub statement_timeout_ms: u64,
}

/// Connection timeouts. Webhook providers are servers that send a request at once; nothing here
/// streams, so tight limits cost legitimate callers nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Seconds a client has to send the request line and headers.
    #[schemars(range(min = 1, max = 300))]
    pub header_secs: u64,
    /// Seconds a client has to send the whole body.
    #[schemars(range(min = 1, max = 600))]
    pub body_secs: u64,
    /// Seconds a kept-alive connection may sit idle between requests.
    #[schemars(range(min = 1, max = 3600))]
    pub idle_secs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            header_secs: 10,
            body_secs: 30,
            idle_secs: 120,
        }
    }
}

/// Caps on open connections: a client holding many connections open (each within its timeouts)
/// cannot take every socket the process has. A connection over a cap is closed at once, before
/// anything is read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
#[schemars(rename = "Connections")]
pub struct ConnectionsConfig {
    /// Connections open at once, in all.
    #[schemars(range(min = 1, max = 1000000))]
    pub max: usize,
    /// Connections open at once from one socket peer address (an IPv6 peer by its /64). Peers in
    /// `trusted_proxies` are not capped: a proxy carries many clients' connections.
    #[schemars(range(min = 1, max = 1000000))]
    pub per_ip: usize,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max: 10_000,
            per_ip: 256,
        }
    }
}

/// CORS allow-list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSettings {
    /// Origins allowed to call the engine from a browser, e.g. `https://app.example.com`; `*`
    /// allows any (refused in production). Environment: `CORS_ORIGIN` (comma-separated).
    pub allow_origins: Vec<String>,
}

/// Maintenance mode.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceSettings {
    /// Turn maintenance on. Environment: `MAINTENANCE_MODE=true`.
    pub enabled: bool,
    /// Message in the 503 body.
    pub message: String,
    /// `Retry-After` seconds sent with the 503.
    pub retry_after_secs: u32,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        MaintenanceSettings {
            enabled: false,
            message: "The service is under maintenance. Please retry later.".to_string(),
            retry_after_secs: 120,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: "0.0.0.0".to_string(),
            port: 3001,
            public_url: None,
            cors: CorsSettings::default(),
            maintenance: MaintenanceSettings::default(),
            body_limit: ByteSize(ByteSize::MIB),
            rate_limit: None,
            redis_url: None,
            redis_key_prefix: "engine".to_string(),
            database_url: None,
            trusted_proxies: Vec::new(),
            shutdown_grace_secs: 25,
            timeouts: Timeouts::default(),
            connections: ConnectionsConfig::default(),
            data_dir: "data".to_string(),
            database_pool_size: 8,
            statement_timeout_ms: 10_000,
        }
    }
}

impl fmt::Debug for Settings {
    // URLs may embed passwords: print only whether they are set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("public_url", &self.public_url)
            .field("cors", &self.cors)
            .field("maintenance", &self.maintenance)
            .field("body_limit", &self.body_limit)
            .field("rate_limit", &self.rate_limit)
            .field("redis_key_prefix", &self.redis_key_prefix)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("trusted_proxies", &self.trusted_proxies)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .field("timeouts", &self.timeouts)
            .field("connections", &self.connections)
            .finish()
    }
}

impl Settings {
    /// The default rate limit when it is on and counts the client IP: what is kept under a
    /// pipeline's own limit whose key a sender chooses (`RateLimit::keyed_by_sender`).
    pub fn ip_floor(&self) -> Option<&super::rate_limit::RateLimit> {
        self.rate_limit
            .as_ref()
            .filter(|d| d.enabled && d.counts_ip())
    }
}

/// Environment variables that override settings, and the settings key each one sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("HOST", "host"),
    ("PORT", "port"),
    ("CORS_ORIGIN", "cors.allow_origins"),
    ("MAINTENANCE_MODE", "maintenance.enabled"),
    ("REDIS_URL", "redis_url"),
    ("DATABASE_URL", "database_url"),
    ("BACKEND_URL", "public_url"),
    ("TRUSTED_PROXIES", "trusted_proxies"),
];

/// The environment layer: the override variables that are set, as a settings-shaped value.
fn env_layer(env: &Env) -> Value {
    let mut layer = json!({});
    for (var, key) in ENV_OVERRIDES {
        let Some(v) = env.get(var) else { continue };
        let v = match (*key, v) {
            ("cors.allow_origins" | "trusted_proxies", Value::String(s)) => Value::Array(
                s.split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(|o| Value::String(o.to_string()))
                    .collect(),
            ),
            ("port", Value::String(s)) => s.trim().parse::<u16>().map_or(v.clone(), Value::from),
            ("maintenance.enabled", Value::String(s)) => Value::Bool(matches!(
                s.trim().to_ascii_lowercase().as_str(),
                "true" | "1" | "yes" | "on"
            )),
            _ => v.clone(),
        };
        let mut target = &mut layer;
        let parts: Vec<&str> = key.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            target = target
                .as_object_mut()
                .expect("layer nodes are objects")
                .entry(part.to_string())
                .or_insert_with(|| json!({}));
        }
        target[parts[parts.len() - 1]] = v;
    }
    layer
}

/// Layer defaults < file < environment. Returns the settings key path of a value that does not
/// fit (figment's messages may repeat the value, so callers word the error themselves).
pub fn layer(file: Option<&Value>, env: &Env) -> Result<Settings, (String, String)> {
    let mut fig = Figment::from(Serialized::defaults(Settings::default()));
    if let Some(file) = file {
        fig = fig.merge(Serialized::defaults(file));
    }
    fig = fig.merge(Serialized::defaults(env_layer(env)));
    let mut settings: Settings = fig.extract().map_err(|e| {
        let expected = match &e.kind {
            figment::error::Kind::InvalidType(_, exp) => format!("expected {exp}"),
            figment::error::Kind::InvalidValue(_, exp) => format!("expected {exp}"),
            _ => "has an unusable value".to_string(),
        };
        (e.path.join("."), expected)
    })?;
    // An optional URL interpolated from an unset variable is absent, not empty.
    for url in [
        &mut settings.public_url,
        &mut settings.redis_url,
        &mut settings.database_url,
    ] {
        if url.as_deref().is_some_and(|u| u.trim().is_empty()) {
            *url = None;
        }
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{EnvSchema, EnvSource};

    fn env(pairs: &[(&str, &str)]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.schema.yaml");
        std::fs::write(
            &path,
            "properties:\n  HOST: {type: string}\n  PORT: {type: integer}\n  CORS_ORIGIN: {type: string}\n  MAINTENANCE_MODE: {type: boolean}\n  REDIS_URL: {type: string}\n",
        )
        .unwrap();
        EnvSchema::load(&path)
            .unwrap()
            .validate(&EnvSource::from_pairs(pairs.iter().copied()))
            .unwrap()
    }

    #[test]
    fn defaults_file_env_layering() {
        let s = layer(None, &env(&[])).unwrap();
        assert_eq!(s.port, 3001);
        assert_eq!(s.body_limit, ByteSize(1 << 20));

        let file = json!({"port": 4000, "cors": {"allow_origins": ["https://a.example"]}, "maintenance": {"message": "brb"}});
        let s = layer(Some(&file), &env(&[])).unwrap();
        assert_eq!(s.port, 4000);
        assert_eq!(s.maintenance.message, "brb");
        assert!(!s.maintenance.enabled);

        let s = layer(
            Some(&file),
            &env(&[
                ("HOST", "127.0.0.1"),
                ("PORT", "5000"),
                ("CORS_ORIGIN", "https://b.example, https://c.example"),
                ("MAINTENANCE_MODE", "true"),
                ("REDIS_URL", "redis://127.0.0.1:6379"),
            ]),
        )
        .unwrap();
        assert_eq!(s.port, 5000);
        assert_eq!(s.host, "127.0.0.1");
        assert_eq!(
            s.cors.allow_origins,
            ["https://b.example", "https://c.example"]
        );
        assert!(s.maintenance.enabled);
        assert_eq!(s.maintenance.message, "brb", "deep merge keeps file keys");
        assert_eq!(s.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert!(!format!("{s:?}").contains("6379"), "Debug hides URLs");
    }
}
