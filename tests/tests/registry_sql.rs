//! The registry's statements (`rae_cloud_ingest::db::write`) against a
//! real PostgreSQL, without Kafka: batch after batch through
//! `write::apply` + COMMIT, exactly what a pipeline does, then the tables
//! read back row by row. The Kafka tests only ever add and update
//! attributes; this one also removes them, replaces them by a checkpoint,
//! trims the history, ends a session and moves a device to a new one. And
//! two pipelines on one partition (a rebalance): the one that knows a
//! session from its own last batch must not overwrite what the other wrote
//! since.

mod registry_support;

use anyhow::{ensure, Result};
use rae_cloud_ingest::db::write::{self, HistoryInsert};
use rae_cloud_ingest::db::{self, migrate, DbError};
use rae_cloud_ingest::registry::classify::{classify, Source};
use rae_cloud_ingest::registry::known::Known;
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
    /// The sessions this pipeline committed, as the registry's keep them.
    known: Known,
    /// Batches whose compare-and-set of known sessions missed (each then
    /// planned again from loaded rows, as the registry's pipeline does).
    misses: usize,
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
            known: Known::default(),
            misses: 0,
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

    /// One batch in one transaction; the plan it wrote. As the registry's
    /// pipeline does, a missed compare-and-set of known sessions rolls
    /// back, forgets them and applies the batch again, and so does a plain
    /// history insert that met a stored row, then with `ON CONFLICT`.
    fn apply(&mut self, envs: &[Envelope], mut history: HistoryInsert) -> Result<Plan> {
        let items = self.items(envs)?;
        let (client, st, known) = (&mut self.client, &self.st, &mut self.known);
        let misses = &mut self.misses;
        self.rt.block_on(async {
            loop {
                let tx = client.transaction().await?;
                let t = 1_700_000_000_000;
                let applied =
                    match write::apply(&tx, st, &items, known, t, &POLICY, history, None).await {
                        Err(DbError::SessionsChanged { .. }) if !known.is_empty() => {
                            *misses += 1;
                            known.forget();
                            continue;
                        }
                        Err(e) if e.is_unique_violation() && history == HistoryInsert::Fast => {
                            history = HistoryInsert::OnConflict;
                            continue;
                        }
                        other => other?,
                    };
                let covered = applied.covered;
                ensure!(covered == items.len(), "the batch was cut at {covered}");
                tx.commit().await?;
                known.committed(applied.loaded, &applied.plan.sessions);
                return Ok(applied.plan);
            }
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

#[test]
fn a_pipeline_does_not_overwrite_a_session_another_consumer_advanced_since_its_last_batch(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pg = Postgres::start(dir.path())?;
    let mut old_owner = Pipeline::connect(&pg)?;
    let mut a = Session::new("box-1", "dev-1");
    old_owner.apply(
        &[a.attached(&[("a", 1)]), a.changed(&[("a", 2)])],
        HistoryInsert::Fast,
    )?;
    assert_eq!(
        old_owner.known.len(),
        1,
        "the session is known after its batch"
    );

    // A rebalance: the new owner applies seq 3..5 while the old owner
    // still holds its batch of seq 3..4 (the same records).
    let (s3, s4, s5) = (
        a.changed(&[("a", 3)]),
        a.changed(&[("a", 4)]),
        a.changed(&[("a", 5)]),
    );
    let mut new_owner = Pipeline::connect(&pg)?;
    new_owner.apply(&[s3.clone(), s4.clone(), s5], HistoryInsert::Fast)?;
    assert_eq!(attributes(&pg, &a)?, ["a=5@5"]);

    // The old owner planned from its known state (seq 2), so its writes
    // must miss and the batch be planned again from the stored row: seq 3
    // and 4 are then duplicates. Trusted blindly, the known state would
    // set the attribute back to seq 4's value.
    let plan = old_owner.apply(&[s3, s4], HistoryInsert::Fast)?;
    assert_eq!(attributes(&pg, &a)?, ["a=5@5"]);
    assert_eq!(history(&pg, &a)?, [3, 4, 5]);
    assert_eq!(session_row(&pg, &a)?, "5 false -");
    assert!(plan.history.is_empty(), "replayed records planned history");
    assert_eq!(old_owner.misses, 1, "the compare-and-set missed once");

    // Its next batch plans from the state it loaded: no miss.
    old_owner.apply(&[a.changed(&[("a", 6)])], HistoryInsert::Fast)?;
    assert_eq!(old_owner.misses, 1);
    assert_eq!(attributes(&pg, &a)?, ["a=6@6"]);
    assert_eq!(session_row(&pg, &a)?, "6 false -");
    Ok(())
}
