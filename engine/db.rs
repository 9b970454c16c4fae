//! Postgres connections: one pool builder for every user (sinks, tenant secrets), with TLS.
//!
//! Supabase's direct and pooled connections require TLS. The `sslmode` of DATABASE_URL decides:
//!
//! | sslmode | connection |
//! |---|---|
//! | `disable` | plain |
//! | `prefer` (default), `require` | TLS, certificate not verified (as libpq does for these modes) |
//! | `verify-ca`, `verify-full` | TLS, certificate verified against the public roots and `sslrootcert` (a PEM file, e.g. Supabase's CA), host name included |
//!
//! tokio-postgres parses only the first three modes, so the verifying ones are read here and
//! removed from the string it parses.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How a URL asks for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    Disable,
    /// Encrypt; do not verify the certificate.
    Encrypt,
    /// Encrypt and verify the certificate and host name.
    Verify,
}

/// Why a Postgres pool or connection could not be made. No variant carries the URL (it may hold
/// a password); each keeps its cause.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid Postgres connection string")]
    BadUrl(#[source] Option<tokio_postgres::Error>),
    #[error("DATABASE_URL: unknown sslmode `{0}`")]
    UnknownSslMode(String),
    #[error("sslrootcert {path}")]
    RootCert {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("TLS setup")]
    Tls(#[source] rustls::Error),
    #[error("the connection pool")]
    Pool(#[source] deadpool_postgres::BuildError),
    #[error("database unavailable")]
    Unavailable(#[source] deadpool_postgres::PoolError),
}

/// Split the TLS options off a connection string: (what tokio-postgres parses, mode, root cert).
pub fn tls_options(url: &str) -> Result<(String, Tls, Option<String>), DbError> {
    let bad = || DbError::BadUrl(None);
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Tls::Encrypt, None));
    };
    let mut mode = Tls::Encrypt;
    let mut root = None;
    let mut kept = Vec::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match (k.as_ref(), v.as_ref()) {
            ("sslmode", "disable") => {
                mode = Tls::Disable;
                kept.push((k.into_owned(), v.into_owned()));
            }
            ("sslmode", "allow" | "prefer" | "require") => {
                mode = Tls::Encrypt;
                kept.push((
                    "sslmode".into(),
                    if v == "allow" {
                        "prefer".into()
                    } else {
                        v.into_owned()
                    },
                ));
            }
            ("sslmode", "verify-ca" | "verify-full") => {
                mode = Tls::Verify;
                kept.push(("sslmode".into(), "require".into()));
            }
            ("sslmode", _) => return Err(DbError::UnknownSslMode(v.into_owned())),
            ("sslrootcert", path) => root = Some(path.to_string()),
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    if base.is_empty() {
        return Err(bad());
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish();
    Ok((
        if query.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{query}")
        },
        mode,
        root,
    ))
}

/// A Postgres error in words: the server's message and code (tokio-postgres's own `Display` says
/// only "db error"). Postgres quotes no parameter values in these messages.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

/// One connection for a one-shot command (migrate, validate --database-url).
pub async fn connect(url: &str) -> Result<deadpool_postgres::Object, DbError> {
    pool(url, 1)?.get().await.map_err(DbError::Unavailable)
}

/// A pool for `url` with at most `max_size` connections; connects lazily.
///
/// Nothing session-level is set on a connection (no `options` startup parameter, no `SET`):
/// behind a transaction-mode pooler (Supabase's port 6543, pgbouncer `pool_mode = transaction`)
/// each transaction may run on another server connection, and PgBouncer refuses `options`.
/// For the same reason every statement the engine sends is unnamed ([`tokio_postgres::Client::
/// query_typed`], `execute_typed`): a named prepared statement lives on one server connection and
/// the next transaction may not find it. A statement timeout is set per transaction
/// (`SET LOCAL`) by whoever needs one.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, DbError> {
    let (plain, mode, root) = tls_options(url)?;
    let config: tokio_postgres::Config = plain.parse().map_err(|e| DbError::BadUrl(Some(e)))?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match mode {
        Tls::Disable => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        Tls::Encrypt | Tls::Verify => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(
                mode,
                root.as_deref(),
            )?);
            Manager::from_config(config, tls, manager_config)
        }
    };
    Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(DbError::Pool)
}

fn client_config(mode: Tls, root: Option<&str>) -> Result<rustls::ClientConfig, DbError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(DbError::Tls)?;
    Ok(match mode {
        Tls::Verify => {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(path) = root {
                let bad = |e: Box<dyn std::error::Error + Send + Sync>| DbError::RootCert {
                    path: path.to_string(),
                    source: e,
                };
                let pem = std::fs::read(path).map_err(|e| bad(e.into()))?;
                for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                    let cert: CertificateDer<'static> = cert.map_err(|e| bad(e.into()))?;
                    roots.add(cert).map_err(|e| bad(e.into()))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    })
}

/// `sslmode=require`: the connection is encrypted, the certificate is not checked (libpq's
/// meaning of `require`; use `verify-full` to check it). Signatures are still verified, so the
/// handshake itself is sound.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a write's answer may take beyond the statement timeout: Postgres cancels a statement at
/// the timeout and answers at once, so a connection silent past this is a stalled or cut link
/// (TCP alone would take ~15 minutes to say so). Writes that wait longer drop their connection
/// and are retried on a new one (the sinks' and the archive's writes: [`write_in_one_round_trip`]).
pub const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// A write transaction in one round trip: `begin` (`BEGIN; SET LOCAL ...`), `statement` and
/// `COMMIT` sent back to back (the client pipelines them; a failed statement turns the COMMIT
/// into a rollback), or with no `begin` the statement alone (its own transaction), its answer
/// awaited for at most the statement timeout + [`ANSWER_MARGIN`].
///
/// A statement sent alone is also cheaper in memory when its parameters are large: the client
/// encodes every message into one buffer and hands out its bytes, so a statement encoded while
/// the `BEGIN` before it is still unsent cannot reuse that buffer and grows a new one from
/// 64 KiB, doubling, on every write (the archive's batches: ~1 MiB of fresh memory per write,
/// the soak's largest churn; docs/benchmarks.md, issue 40). Alone, it reuses the buffer the
/// client kept from its last statement.
/// Without an answer by then the connection is taken out of the pool (the next write must not
/// queue behind this one) and the error says so; a statement that reaches Postgres later meets
/// the writer's conflict key when the batch is retried.
pub async fn write_in_one_round_trip(
    client: deadpool_postgres::Object,
    begin: Option<&str>,
    statement: &str,
    params: &[(
        &(dyn tokio_postgres::types::ToSql + Sync),
        tokio_postgres::types::Type,
    )],
    statement_timeout: Duration,
) -> Result<
    (
        deadpool_postgres::Object,
        Result<u64, tokio_postgres::Error>,
    ),
    Unanswered,
> {
    let within = statement_timeout + ANSWER_MARGIN;
    let answer = tokio::time::timeout(within, async {
        let Some(begin) = begin else {
            return client.execute_typed(statement, params).await;
        };
        let (began, written, committed) = tokio::join!(
            client.batch_execute(begin),
            client.execute_typed(statement, params),
            client.batch_execute("COMMIT")
        );
        began.and(written).and_then(|n| committed.map(|()| n))
    })
    .await;
    match answer {
        Ok(result) => Ok((client, result)),
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(Unanswered(within))
        }
    }
}

/// A write with no answer within its bound ([`write_in_one_round_trip`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "no answer from the database within {} s (statement timeout + {} s): the link is stalled or cut; the connection was dropped and the write is retried on a new one",
    .0.as_secs(),
    ANSWER_MARGIN.as_secs()
)]
pub struct Unanswered(pub Duration);

#[cfg(test)]
mod tests {
    use super::*;

    /// What a refused pool says keeps its cause: the operator reads the file and why.
    #[test]
    fn a_pool_error_keeps_its_cause() {
        let e = pool(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            1,
        )
        .unwrap_err();
        assert!(matches!(e, DbError::RootCert { .. }), "{e:?}");
        let said = crate::diagnostics::chain(&e);
        assert!(
            said.starts_with("sslrootcert /nonexistent/ca.pem: No such file"),
            "{said}"
        );
        let e = pool("postgres://u@h/db?sslmode=sometimes", 1).unwrap_err();
        assert_eq!(e.to_string(), "DATABASE_URL: unknown sslmode `sometimes`");
        let e = pool("postgres://u@h:notaport/db", 1).unwrap_err();
        assert!(matches!(e, DbError::BadUrl(Some(_))), "{e:?}");
        assert!(
            !crate::diagnostics::chain(&e).contains("u@h"),
            "no URL in the words"
        );
    }

    #[test]
    fn modes() {
        let (u, m, r) = tls_options(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&options=-csearch_path%3Dx",
        )
        .unwrap();
        assert_eq!((m, r.as_deref()), (Tls::Verify, Some("/ca.pem")));
        assert_eq!(
            u,
            "postgres://u@h/db?sslmode=require&options=-csearch_path%3Dx"
        );
        assert_eq!(
            tls_options("postgres://u@h/db?sslmode=disable").unwrap().1,
            Tls::Disable
        );
        assert_eq!(tls_options("postgres://u@h/db").unwrap().1, Tls::Encrypt);
        assert!(tls_options("postgres://u@h/db?sslmode=maybe").is_err());
    }
}
