//! Embedded, version-tracked migrations.
//!
//! Owns [`MIGRATIONS`] (the SQL files of `cloud-ingest/migrations/`,
//! compiled in) and [`migrate`]. Invariants: a migration's statements are
//! all idempotent (`IF NOT EXISTS`, `IF EXISTS`, or `ALTER TABLE … SET (storage parameter)`), run outside an explicit transaction
//! (CockroachDB does not mix schema changes and writes in one transaction
//! well), and are recorded in `rae_schema_migrations` afterwards with
//! `ON CONFLICT DO NOTHING`; so `migrate` can be re-run, or resumed after
//! a crash between the two steps. Run concurrently (several hosts
//! deploying one release), a statement can lose a race with the same
//! statement of another run and fail ([`super::is_schema_race`]); the run
//! then starts over from the recorded version, at most
//! [`RACE_ATTEMPTS`] times (test `concurrent_migrate_runs_on_a_fresh_database_all_succeed`).

use super::{sql, DbError};
use tokio_postgres::Client;

/// (version, name, SQL), in version order.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        2,
        "session_fillfactor",
        include_str!("../../migrations/0002_session_fillfactor.sql"),
    ),
    (
        3,
        "attribute_updates_in_place",
        include_str!("../../migrations/0003_attribute_updates_in_place.sql"),
    ),
    (
        4,
        "box_status_digests",
        include_str!("../../migrations/0004_box_status_digests.sql"),
    ),
];

/// The newest version this binary knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS rae_schema_migrations (
    version     BIGINT      NOT NULL PRIMARY KEY,
    name        TEXT        NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL
)";

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub applied: Vec<(i64, String)>,
    pub version: i64,
}

/// The schema version recorded in the database (0 when none).
pub async fn current_version(client: &Client) -> Result<i64, DbError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'rae_schema_migrations'",
            &[],
        )
        .await
        .map_err(sql("look for rae_schema_migrations"))?;
    if exists.is_none() {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM rae_schema_migrations",
            &[],
        )
        .await
        .map_err(sql("read the schema version"))?;
    super::col(&row, 0, "read the schema version")
}

/// Fails unless the schema is exactly at [`latest_version`].
pub async fn check_version(client: &Client) -> Result<(), DbError> {
    let found = current_version(client).await?;
    let known = latest_version();
    if found > known {
        return Err(DbError::SchemaTooNew { found, known });
    }
    if found < known {
        return Err(DbError::SchemaTooOld {
            found,
            needed: known,
        });
    }
    Ok(())
}

/// The statements of a migration file: `--` comment lines dropped, split
/// at `;` (the files hold no `;` inside literals). One statement at a time,
/// so no engine wraps several schema changes in one implicit transaction.
pub fn statements(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// How many times [`migrate`] runs when it keeps losing races with
/// concurrent runs (each loss means another run made progress).
pub const RACE_ATTEMPTS: u32 = 10;

/// Applies every migration newer than the recorded version; starts over
/// after losing a race with a concurrent run (module docs).
pub async fn migrate(client: &Client) -> Result<Outcome, DbError> {
    let mut attempt = 1;
    loop {
        match migrate_once(client).await {
            Err(e) if e.is_schema_race() && attempt < RACE_ATTEMPTS => {
                log::info!(
                    "another migrate ran the same schema statement at the same time ({e}); \
                     starting over (attempt {} of {RACE_ATTEMPTS})",
                    attempt + 1
                );
                tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn migrate_once(client: &Client) -> Result<Outcome, DbError> {
    client
        .batch_execute(VERSION_TABLE)
        .await
        .map_err(sql("create rae_schema_migrations"))?;
    let mut version = current_version(client).await?;
    if version > latest_version() {
        return Err(DbError::SchemaTooNew {
            found: version,
            known: latest_version(),
        });
    }
    let mut applied = Vec::new();
    let start = version;
    for (v, name, text) in MIGRATIONS.iter().filter(|m| m.0 > start) {
        log::info!("applying migration {v:04} {name}");
        for statement in statements(text) {
            client
                .batch_execute(&statement)
                .await
                .map_err(sql("apply a migration"))?;
        }
        client
            .execute(
                "INSERT INTO rae_schema_migrations (version, name, applied_at) VALUES ($1, $2, now()) ON CONFLICT (version) DO NOTHING",
                &[v, name],
            )
            .await
            .map_err(sql("record a migration"))?;
        applied.push((*v, name.to_string()));
        version = *v;
    }
    Ok(Outcome { applied, version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_statement_is_idempotent() {
        for (v, _, text) in MIGRATIONS {
            let stmts = statements(text);
            assert!(!stmts.is_empty(), "migration {v} is empty");
            for s in stmts {
                assert!(
                    s.starts_with("CREATE TABLE IF NOT EXISTS")
                        || s.starts_with("CREATE INDEX IF NOT EXISTS")
                        || s.starts_with("DROP INDEX IF EXISTS")
                        || (s.starts_with("ALTER TABLE") && s.contains(" SET ("))
                        || (s.starts_with("ALTER TABLE")
                            && s.contains(" ADD COLUMN IF NOT EXISTS ")),
                    "migration {v}: not idempotent: {s}"
                );
            }
        }
    }

    #[test]
    fn only_the_codes_of_a_concurrent_schema_statement_start_a_migrate_over() {
        use tokio_postgres::error::SqlState;
        for code in ["23505", "42P07", "42710", "40001", "40P01"] {
            assert!(
                super::super::is_schema_race(&SqlState::from_code(code)),
                "{code}"
            );
        }
        // A refused statement, a missing privilege, a broken connection: no retry.
        for code in ["42601", "42501", "08006", "53100", "42P01"] {
            assert!(
                !super::super::is_schema_race(&SqlState::from_code(code)),
                "{code}"
            );
        }
    }

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, (v, _, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i as i64 + 1);
        }
    }
}
