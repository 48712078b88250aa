//! The registry's statements (`rae_cloud_ingest::db::write`) against a
//! real PostgreSQL, without Kafka: batch after batch through
//! `write::apply` + COMMIT, exactly what a pipeline does, then the tables
//! read back row by row. The Kafka tests only ever add and update
//! attributes; this one also removes them, replaces them by a checkpoint,
//! trims the history, ends a session and moves a device to a new one.

mod registry_support;

use anyhow::{ensure, Result};
use rae_cloud_ingest::db::write::{self, HistoryInsert};
use rae_cloud_ingest::db::{self, migrate};
use rae_cloud_ingest::registry::classify::{classify, Source};
use rae_cloud_ingest::registry::plan::{Item, Plan, Policy};
use rae_protocol::Envelope;
use rae_tests::postgres::Postgres;
use registry_support::Session;

/// History bounded to 3 rows per session, so a few events trim it.
const POLICY: Policy = Policy {
    resync_min_interval_ms: 60_000,
    history_max: 3,
};

/// Applies batches in order, one transaction each, offsets continuing
/// from batch to batch as in one partition.
struct Pipeline {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    st: write::Statements,
    offset: i64,
}

impl Pipeline {
    fn connect(pg: &Postgres) -> Result<Pipeline> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (client, st) = rt.block_on(async {
            let client = db::connect(&pg.url(), 10).await?;
            migrate::migrate(&client).await?;
            let st = write::Statements::prepare(&client).await?;
            anyhow::Ok((client, st))
        })?;
        Ok(Pipeline {
            rt,
            client,
            st,
            offset: 0,
        })
    }

    fn items(&mut self, envs: &[Envelope]) -> Result<Vec<Item>> {
        envs.iter()
            .map(|e| {
                self.offset += 1;
                let (key, raw) = (e.topic()?.into_bytes(), e.encode()?);
                let classified = classify(Source::Events, Some(&key), Some(&raw));
                Ok(Item {
                    partition: 0,
                    offset: self.offset,
                    key: Some(key),
                    raw,
                    classified,
                })
            })
            .collect()
    }

    /// One batch in one transaction; the plan it wrote.
    fn apply(&mut self, envs: &[Envelope], history: HistoryInsert) -> Result<Plan> {
        let items = self.items(envs)?;
        let (client, st) = (&mut self.client, &self.st);
        self.rt.block_on(async {
            let tx = client.transaction().await?;
            let (plan, covered) =
                write::apply(&tx, st, &items, 1_700_000_000_000, &POLICY, history, None).await?;
            ensure!(covered == items.len(), "the batch was cut at {covered}");
            tx.commit().await?;
            Ok(plan)
        })
    }
}

/// `name=value@updated_seq` of a session's attributes, by name.
fn attributes(pg: &Postgres, s: &Session) -> Result<Vec<String>> {
    Ok(pg
        .query(&format!(
            "SELECT name || '=' || value || '@' || updated_seq FROM device_attributes \
             WHERE session_id = '{}' ORDER BY name",
            s.id
        ))?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

/// The seqs of a session's history rows, ascending.
fn history(pg: &Postgres, s: &Session) -> Result<Vec<u64>> {
    Ok(pg
        .query(&format!(
            "SELECT seq FROM device_events WHERE session_id = '{}' ORDER BY seq",
            s.id
        ))?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .map(|v| v.parse())
        .collect::<Result<_, _>>()?)
}

fn session_row(pg: &Postgres, s: &Session) -> Result<String> {
    pg.scalar(&format!(
        "SELECT last_seq || ' ' || stale || ' ' || coalesce(end_reason, '-') \
         FROM device_sessions WHERE session_id = '{}'",
        s.id
    ))
}

#[test]
fn removals_checkpoints_history_trims_and_a_new_session_reach_the_tables_exactly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pg = Postgres::start(dir.path())?;
    let mut p = Pipeline::connect(&pg)?;
    let mut a = Session::new("box-1", "dev-1");

    // Batch 1: attached, then changes; a removal of an attribute attached
    // in the same batch, and more events than the history keeps.
    let b1 = vec![
        a.attached(&[("a", 1), ("b", 2), ("c", 3)]),
        a.changed_removing(&[("a", 10)], &["b"]),
        a.changed_removing(&[("d", 4)], &[]),
        a.changed_removing(&[("a", 11)], &[]),
    ];
    p.apply(&b1, HistoryInsert::Fast)?;
    assert_eq!(attributes(&pg, &a)?, ["a=11@4", "c=3@1", "d=4@3"]);
    assert_eq!(history(&pg, &a)?, [2, 3, 4], "history trimmed to 3 rows");
    assert_eq!(session_row(&pg, &a)?, "4 false -");

    // Batch 2: removals of stored attributes (the keyed DELETE), one set
    // again in the same event's successor, and the history trimmed again.
    let b2 = vec![
        a.changed_removing(&[], &["c", "d"]),
        a.changed_removing(&[("d", 40)], &[]),
    ];
    p.apply(&b2, HistoryInsert::Fast)?;
    assert_eq!(attributes(&pg, &a)?, ["a=11@4", "d=40@6"]);
    assert_eq!(history(&pg, &a)?, [4, 5, 6]);
    assert_eq!(session_row(&pg, &a)?, "6 false -");

    // The same batch again, as after a crash before the offset commit,
    // through the ON CONFLICT statement: nothing changes, nothing doubles.
    p.offset -= 2;
    let plan = p.apply(&b2, HistoryInsert::OnConflict)?;
    ensure!(
        plan.history.is_empty(),
        "a replayed batch planned history rows"
    );
    assert_eq!(attributes(&pg, &a)?, ["a=11@4", "d=40@6"]);
    assert_eq!(history(&pg, &a)?, [4, 5, 6]);

    // Batch 3: a checkpoint replaces the whole record, then the session
    // ends; a new session of the same device starts and becomes current.
    let mut a2 = Session::new("box-1", "dev-1");
    let b3 = vec![
        a.checkpoint(&[("x", 1), ("a", 12)]),
        a.detached("unplugged"),
        a2.attached(&[("y", 2)]),
    ];
    p.apply(&b3, HistoryInsert::Fast)?;
    assert_eq!(attributes(&pg, &a)?, ["a=12@7", "x=1@7"]);
    assert_eq!(history(&pg, &a)?, [6, 7, 8]);
    assert_eq!(session_row(&pg, &a)?, "8 false unplugged");
    assert_eq!(attributes(&pg, &a2)?, ["y=2@1"]);
    assert_eq!(history(&pg, &a2)?, [1]);
    assert_eq!(
        pg.scalar("SELECT current_session_id::text FROM devices WHERE rae_id = 'box-1' AND device_id = 'dev-1'")?,
        a2.id.to_string()
    );
    assert_eq!(pg.scalar("SELECT count(*) FROM devices")?, "1");
    Ok(())
}
