//! `rae-cloud-ingest migrate` against a real PostgreSQL: creates the
//! schema, records its version, and is idempotent.

#![allow(clippy::unwrap_used)]

use rae_tests::postgres::Postgres;
use std::process::Command;

/// `target/<profile>/rae-cloud-ingest`, checked to be newer than its sources.
fn binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .and_then(std::path::Path::parent)
        .unwrap()
        .join("rae-cloud-ingest");
    rae_tests::agent::check_binary_with_hint(&binary, "cargo build -p rae-cloud-ingest").unwrap();
    binary
}

fn migrate(config: &std::path::Path) -> std::process::Output {
    Command::new(binary())
        .arg("--config")
        .arg(config)
        .arg("migrate")
        .output()
        .expect("run rae-cloud-ingest migrate")
}

#[test]
fn migrate_creates_the_schema_once_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(dir.path()).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", pg.url())).unwrap();

    let first = migrate(&config);
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(out.contains("applied migration 0001 initial"), "{out}");
    assert!(
        out.contains("applied migration 0002 session_fillfactor"),
        "{out}"
    );
    assert!(
        out.contains("applied migration 0003 attribute_updates_in_place"),
        "{out}"
    );
    let tables = pg
        .query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
        )
        .unwrap();
    let names: Vec<String> = tables.into_iter().filter_map(|r| r[0].clone()).collect();
    assert_eq!(
        names,
        [
            "boxes",
            "device_attributes",
            "device_events",
            "device_sessions",
            "devices",
            "rae_schema_migrations"
        ]
    );

    let second = migrate(&config);
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{out}");
    assert!(out.contains("schema is up to date (version 4)"), "{out}");
    assert_eq!(
        pg.scalar("SELECT count(*) FROM rae_schema_migrations")
            .unwrap(),
        "4"
    );
    for table in ["device_sessions", "device_attributes"] {
        assert_eq!(
            pg.scalar(&format!(
                "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname = '{table}'"
            ))
            .unwrap(),
            "fillfactor=50",
            "{table}"
        );
    }
    // Version 3 dropped the (name, value) index: attribute updates touch
    // no index.
    assert_eq!(
        pg.scalar("SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE tablename = 'device_attributes'")
            .unwrap(),
        "device_attributes_pkey"
    );
    // Version 4: the box status digests.
    assert_eq!(
        pg.scalar("SELECT data_type FROM information_schema.columns WHERE table_name = 'boxes' AND column_name = 'recent_status'")
            .unwrap(),
        "bytea"
    );
}

#[test]
fn migrate_against_a_stopped_database_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start(dir.path()).unwrap();
    pg.stop().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", pg.url())).unwrap();
    let out = migrate(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot connect to the database"), "{err}");
}

#[test]
fn a_migration_the_database_refuses_fails_with_the_servers_own_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(dir.path()).unwrap();
    // A version table of another shape, where migrate reads the version.
    pg.query("CREATE TABLE rae_schema_migrations (unrelated integer)")
        .unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", pg.url())).unwrap();
    let out = migrate(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("read the schema version"), "{err}");
    // Not just the driver's "db error": the server's message, naming what
    // is wrong.
    assert!(err.contains("ERROR: column"), "{err}");
    assert_eq!(err.matches("db error").count(), 1, "said once: {err}");
}

/// Runs `rae-cloud-ingest --config <config> <args>`, killed after 30 s:
/// (exit code, stderr).
fn run_bounded(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let dir = config.parent().unwrap();
    let err_path = dir.join(format!("{}.stderr", args.join("-")));
    let mut child = Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{}` still running after 30 s: {}",
                args.join(" "),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    (
        status.code(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

#[test]
fn registry_and_devices_refuse_an_unmigrated_database_with_exit_65_naming_migrate() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg")).unwrap();
    let config = dir.path().join("c.toml");
    // Nothing listens on the Kafka address: the refusal comes first.
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[kafka]\nbrokers = \"127.0.0.1:9\"\n\
             [metrics]\nbridge_listen = \"\"\nregistry_listen = \"\"\n",
            pg.url()
        ),
    )
    .unwrap();
    for args in [&["registry"][..], &["devices"][..]] {
        let (code, err) = run_bounded(&config, args);
        assert_eq!(code, Some(65), "{args:?}: {err}");
        assert!(
            err.contains("not migrated (version 0, need 4); run `rae-cloud-ingest migrate`"),
            "{args:?}: {err}"
        );
    }
    // One version behind (an upgrade whose `migrate` has not run yet).
    assert!(migrate(&config).status.success());
    pg.query("DELETE FROM rae_schema_migrations WHERE version = 4")
        .unwrap();
    let (code, err) = run_bounded(&config, &["registry"]);
    assert_eq!(code, Some(65), "{err}");
    assert!(err.contains("(version 3, need 4)"), "{err}");
}

#[test]
fn a_version_column_of_another_type_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(dir.path()).unwrap();
    // The right table with a 4-byte version (a hand-made or foreign
    // schema): reading it as the 8-byte integer it should be must fail
    // with a message, not abort the process.
    pg.query(
        "CREATE TABLE rae_schema_migrations (version integer PRIMARY KEY, name text, applied_at timestamptz)",
    )
    .unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", pg.url())).unwrap();
    for args in [&["migrate"][..], &["devices"][..]] {
        let out = Command::new(binary())
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("read the schema version"), "{args:?}: {err}");
        assert!(err.contains("int4"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// docs/CLOUD.md says `migrate` is safe to run from several hosts (each
/// release's deploy may run it): concurrent runs against one fresh
/// database all succeed and leave the schema once. On PostgreSQL two
/// concurrent `CREATE TABLE IF NOT EXISTS` of one table can fail with a
/// unique violation on its catalog (SQLSTATE 23505); `migrate` retries.
#[test]
fn concurrent_migrate_runs_on_a_fresh_database_all_succeed() {
    const RUNS: usize = 6;
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres::start(dir.path()).unwrap();
        let config = dir.path().join("c.toml");
        std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", pg.url())).unwrap();
        let children: Vec<_> = (0..RUNS)
            .map(|_| {
                Command::new(binary())
                    .arg("--config")
                    .arg(&config)
                    .arg("migrate")
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut restarts = 0;
        for child in children {
            let out = child.wait_with_output().unwrap();
            restarts += String::from_utf8_lossy(&out.stderr)
                .matches("starting over")
                .count();
            assert!(
                out.status.success(),
                "round {round}: a concurrent migrate failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let versions = pg
            .query("SELECT count(*)::text, max(version)::text FROM rae_schema_migrations")
            .unwrap();
        let again = migrate(&config);
        assert!(again.status.success());
        let after = pg
            .query("SELECT count(*)::text, max(version)::text FROM rae_schema_migrations")
            .unwrap();
        assert_eq!(versions, after, "round {round}");
        eprintln!("round {round}: {RUNS} concurrent runs, {restarts} started over after a race");
    }
}
