//! Database access shared by `registry`, `migrate` and `devices`:
//! connecting (plain or TLS, from the URL's libpq parameters: [`tls`]),
//! the embedded migrations ([`migrate`]), the batch writer ([`write`]) and
//! the queries ([`read`]).
//!
//! Invariants: all SQL runs unchanged on PostgreSQL and CockroachDB (rules
//! in docs/CLOUD.md); errors say which step failed. The registry retries
//! every failed batch with backoff (a conflict, [`DbError::is_conflict`],
//! keeps the connection); no error class is given up on.

pub mod migrate;
pub mod read;
pub mod tls;
pub mod write;

use crate::config::Settings;
use anyhow::Context as _;
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls, Socket};

/// A database failure, with the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The message carries the driver error's whole cause chain (the
    /// driver's own text is only its kind, e.g. "error performing TLS
    /// handshake"), so log lines with just `{e}` say why; hence no
    /// `#[source]`, which would print the chain twice.
    #[error("cannot connect to the database: {}", with_causes(.0))]
    Connect(tokio_postgres::Error),
    #[error("invalid database.url: {0}")]
    Url(String),
    #[error("database TLS: {0}")]
    Tls(rae_tls::TlsError),
    /// Like `Connect`, the message carries the server's own text (a bare
    /// `tokio_postgres::Error` prints only "db error").
    #[error("{step}: {}", with_causes(.error))]
    Sql {
        step: &'static str,
        error: tokio_postgres::Error,
    },
    #[error("{step}: no answer from the database within {secs} s (database.timeout_secs)")]
    Timeout { step: &'static str, secs: u64 },
    #[error("the database schema is at version {found}, newer than this binary knows ({known}); upgrade rae-cloud-ingest")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("the database schema is not migrated (version {found}, need {needed}); run `rae-cloud-ingest migrate`")]
    SchemaTooOld { found: i64, needed: i64 },
    /// A compare-and-set of sessions this pipeline knew missed
    /// (`registry::known`): another writer changed them since.
    #[error("{changed} of {expected} device sessions changed since this pipeline committed them (another consumer of the partition during a rebalance, or a commit whose answer was lost); the batch is planned again from loaded rows")]
    SessionsChanged { expected: usize, changed: usize },
}

/// `e` and its sources, joined by ": ".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Attaches the failing step to a driver error.
pub(crate) fn sql(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
    move |error| DbError::Sql { step, error }
}

/// Column `idx` of `row` (`Row::try_get`): a column of another type or an
/// unexpected NULL (a schema changed by hand, an engine that sizes a type
/// differently) is a [`DbError`] naming `step`, never a panic (which
/// `Row::get` would be).
pub(crate) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    idx: usize,
    step: &'static str,
) -> Result<T, DbError> {
    row.try_get(idx).map_err(sql(step))
}

impl DbError {
    /// The driver error, if any.
    pub fn source_pg(&self) -> Option<&tokio_postgres::Error> {
        match self {
            DbError::Connect(e) | DbError::Sql { error: e, .. } => Some(e),
            _ => None,
        }
    }

    /// A unique violation (SQLSTATE 23505).
    pub fn is_unique_violation(&self) -> bool {
        self.source_pg()
            .and_then(|e| e.code())
            .is_some_and(|c| *c == SqlState::UNIQUE_VIOLATION)
    }

    /// A serialization failure or deadlock (retry at once, with backoff).
    pub fn is_conflict(&self) -> bool {
        self.source_pg().and_then(|e| e.code()).is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        })
    }

    /// What a schema statement returns when another session ran the same
    /// one at the same time ([`is_schema_race`]).
    pub fn is_schema_race(&self) -> bool {
        self.source_pg()
            .and_then(|e| e.code())
            .is_some_and(is_schema_race)
    }
}

/// SQLSTATEs of two sessions racing on one idempotent schema statement:
/// PostgreSQL's `CREATE TABLE IF NOT EXISTS` checks for the table before
/// it inserts into its catalog, so the loser of a race fails with a
/// unique violation on the catalog (23505, `pg_type_typname_nsp_index`)
/// or duplicate table/object (42P07, 42710); CockroachDB reports a
/// serialization failure (40001); either may report a deadlock (40P01).
/// Running the statement again then finds what the winner made.
pub fn is_schema_race(code: &SqlState) -> bool {
    [
        SqlState::UNIQUE_VIOLATION,
        SqlState::DUPLICATE_TABLE,
        SqlState::DUPLICATE_OBJECT,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
    ]
    .contains(code)
}

/// Connects and spawns the connection task; the task ends when the client
/// is dropped or the connection breaks (then queries fail with a closed
/// error). TLS as the URL's `sslmode` says
/// ([`tls`]); with TLS there is no fallback to plain TCP. Given up after
/// `timeout_secs` (TCP, TLS and login together; `database.timeout_secs`).
pub async fn connect(url: &str, timeout_secs: u64) -> Result<Client, DbError> {
    tokio::time::timeout(
        std::time::Duration::from_secs(timeout_secs),
        connect_now(url),
    )
    .await
    .map_err(|_| DbError::Timeout {
        step: "connect to the database",
        secs: timeout_secs,
    })?
}

/// Makes the server abort this session's open transaction (and end the
/// session) when the client stays silent inside it for `secs`: the row
/// locks of a registry connection lost mid-batch (a network partition the
/// server does not notice, since it is only waiting for the next command)
/// are then released, and the batch's retry on a new connection is not
/// blocked behind them. `idle_in_transaction_session_timeout` is a session
/// setting on PostgreSQL and CockroachDB alike.
pub async fn limit_idle_transactions(client: &Client, secs: u64) -> Result<(), DbError> {
    client
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = '{secs}s'"
        ))
        .await
        .map_err(sql("set idle_in_transaction_session_timeout"))
}

async fn connect_now(url: &str) -> Result<Client, DbError> {
    let target = tls::DbTarget::parse(url).map_err(DbError::Url)?;
    let mut config: tokio_postgres::Config = target.conn.parse().map_err(DbError::Connect)?;
    match tls::client_config(&target.tls).map_err(DbError::Tls)? {
        None => {
            config.ssl_mode(SslMode::Disable);
            spawn_connection(&config, NoTls).await
        }
        Some(rustls) => {
            config.ssl_mode(SslMode::Require);
            let make = tokio_postgres_rustls::MakeRustlsConnect::new(Arc::unwrap_or_clone(rustls));
            spawn_connection(&config, make).await
        }
    }
}

async fn spawn_connection<T>(config: &tokio_postgres::Config, tls: T) -> Result<Client, DbError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await.map_err(DbError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("database connection ended: {e}");
        }
    });
    Ok(client)
}

/// `rae-cloud-ingest migrate`.
pub async fn migrate_command(settings: Settings) -> anyhow::Result<()> {
    let client = connect(&settings.database.url, settings.database.timeout_secs)
        .await
        .with_context(|| format!("database {}", redact(&settings.database.url)))?;
    let outcome = migrate::migrate(&client).await.context("migrate")?;
    if outcome.applied.is_empty() {
        println!("schema is up to date (version {})", outcome.version);
    } else {
        for (version, name) in &outcome.applied {
            println!("applied migration {version:04} {name}");
        }
        println!("schema is at version {}", outcome.version);
    }
    Ok(())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    };
    // `password=` as a URL parameter or a key=value pair: its value up to
    // the next `&` or space.
    let mut out = String::with_capacity(url.len());
    let mut rest = url.as_str();
    while let Some(i) = rest.find("password=") {
        let value = i + "password=".len();
        out.push_str(&rest[..value]);
        out.push_str("***");
        let end = rest[value..]
            .find(['&', ' '])
            .map_or(rest.len(), |e| value + e);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_error_says_why_once() {
        let e = "sslmode=bogus"
            .parse::<tokio_postgres::Config>()
            .expect_err("invalid");
        let text = DbError::Connect(e).to_string();
        assert!(
            text.starts_with("cannot connect to the database: invalid connection string: "),
            "{text}"
        );
        assert!(text.contains("sslmode"), "{text}");
        let err = DbError::Connect(
            "sslmode=bogus"
                .parse::<tokio_postgres::Config>()
                .expect_err("x"),
        );
        assert!(std::error::Error::source(&err).is_none());
    }

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("postgresql://rae:secret@db:26257/rae"),
            "postgresql://rae:***@db:26257/rae"
        );
        assert_eq!(redact("postgresql://rae@db/rae"), "postgresql://rae@db/rae");
        assert_eq!(redact("host=x user=y"), "host=x user=y");
        assert_eq!(
            redact("host=x user=y password=secret dbname=rae"),
            "host=x user=y password=*** dbname=rae"
        );
        assert_eq!(
            redact("postgresql://rae@db/rae?password=secret&sslmode=require"),
            "postgresql://rae@db/rae?password=***&sslmode=require"
        );
    }
}
