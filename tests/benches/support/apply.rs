//! The registry's database stage alone, without Kafka: the same
//! envelopes, split into `pipelines` ordered streams (sessions spread
//! over them as partitions would spread them), each applied by its own
//! connection in batches of `batch` records through the registry's own
//! code (`classify` → `db::write::apply` → COMMIT, exactly what a
//! pipeline does per batch, minus waiting for Kafka). Into a fresh
//! database of the same PostgreSQL, migrated by the registry's own
//! migrations, so the rows are new as they are in the Kafka run.
//!
//! This separates what the registry's SQL costs from what the broker
//! delivers: with one record per Kafka record batch the end-to-end figure
//! is bound by Tansu 0.6.0's read rate (docs/BENCHMARKS.md).

use anyhow::{ensure, Context, Result};
use rae_cloud_ingest::db::write::HistoryInsert;
use rae_cloud_ingest::db::{self, migrate, write};
use rae_cloud_ingest::registry::classify::{classify, Source};
use rae_cloud_ingest::registry::known::Known;
use rae_cloud_ingest::registry::plan::{Deferral, Item, Policy};
use rae_protocol::Envelope;
use std::time::Instant;

/// What one run of the stage measured.
pub struct ApplyRun {
    pub secs: f64,
    pub batches: usize,
    /// Summed over pipelines: time inside `apply` + COMMIT.
    pub busy_secs: f64,
    /// CPU seconds of this process (the registry's code: classify, plan,
    /// encode, the driver) and of the PostgreSQL server while the
    /// pipelines ran; `None` where `/proc` could not be read.
    pub client_cpu_secs: Option<f64>,
    pub server_cpu_secs: Option<f64>,
}

/// The registry's defaults (`[registry]` resync_min_interval_secs = 60,
/// history_max_events_per_session = 1000).
const POLICY: Policy = Policy {
    resync_min_interval_ms: 60_000,
    history_max: 1000,
};

/// Applies `envs` into the fresh database `dbname` of the server at
/// `admin_url` (a `postgresql://…/postgres` URL) with `pipelines`
/// concurrent pipelines on a 2-worker runtime (as the registry runs).
pub fn run(
    admin_url: &str,
    dbname: &str,
    envs: &[Envelope],
    pipelines: usize,
    batch: usize,
    server_cpu: &(dyn Fn() -> Option<f64> + Sync),
) -> Result<ApplyRun> {
    let url = admin_url
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{dbname}"))
        .context("admin URL without a database name")?;
    // Pre-encoded, split per pipeline, offsets per pipeline as a
    // partition's would be; session i goes to pipeline i % pipelines.
    let mut index = std::collections::HashMap::new();
    let mut streams: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); pipelines];
    for e in envs {
        let next = index.len();
        let p = *index.entry(e.session_id).or_insert(next) % pipelines;
        streams[p].push((e.topic()?, e.encode()?));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let n = envs.len();
    let admin = admin_url.to_string();
    let dbname = dbname.to_string();
    rt.block_on(async move {
        let admin = db::connect(&admin, 60).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {dbname}"))
            .await
            .with_context(|| format!("create database {dbname}"))?;
        let client = db::connect(&url, 60).await?;
        migrate::migrate(&client).await?;
        drop(client);
        let cpu0 = (own_cpu_secs(), server_cpu());
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (partition, stream) in streams.into_iter().enumerate() {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                pipeline(&url, partition as i32, stream, batch).await
            }));
        }
        let (mut batches, mut busy) = (0, 0.0);
        for t in tasks {
            let (b, s) = t.await??;
            batches += b;
            busy += s;
        }
        let secs = started.elapsed().as_secs_f64();
        let client_cpu = own_cpu_secs().zip(cpu0.0).map(|(b, a)| b - a);
        // The pipelines' backends exit when their connections close; give
        // the postmaster a moment to reap them (their time then counts).
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let server_cpu = server_cpu().zip(cpu0.1).map(|(b, a)| b - a);
        let client = db::connect(&url, 60).await?;
        let rows: i64 = client
            .query_one("SELECT count(*) FROM device_events", &[])
            .await?
            .get(0);
        ensure!(
            rows == n as i64,
            "{rows} history rows after applying {n} envelopes"
        );
        Ok(ApplyRun {
            secs,
            batches,
            busy_secs: busy,
            client_cpu_secs: client_cpu,
            server_cpu_secs: server_cpu,
        })
    })
}

/// Runs the registry's migrations on the database at `url`.
pub fn migrate(url: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = db::connect(url, 60).await?;
        migrate::migrate(&client).await?;
        Ok(())
    })
}

/// One partition's pipeline: batches in order, one transaction each.
async fn pipeline(
    url: &str,
    partition: i32,
    stream: Vec<(String, Vec<u8>)>,
    batch: usize,
) -> Result<(usize, f64)> {
    let mut client = db::connect(url, 60).await?;
    let st = write::Statements::prepare(&client).await?;
    let (mut batches, mut busy) = (0, 0.0);
    let mut offset = 0i64;
    // The sessions this stream committed, kept as a pipeline keeps them.
    let mut known = Known::default();
    for chunk in stream.chunks(batch) {
        let started = Instant::now();
        let items: Vec<Item> = chunk
            .iter()
            .map(|(key, value)| {
                offset += 1;
                Item {
                    partition,
                    offset,
                    key: Some(key.as_bytes().to_vec()),
                    raw: value.clone(),
                    classified: classify(
                        Source::Events,
                        Some(key.as_bytes()),
                        Some(value.as_slice()),
                    ),
                }
            })
            .collect();
        let tx = client.transaction().await?;
        let applied = write::apply(
            &tx,
            &st,
            &items,
            &known,
            now_ms(),
            &POLICY,
            HistoryInsert::Fast,
            Some(Deferral::default()),
        )
        .await?;
        let (plan, covered) = (applied.plan, applied.covered);
        ensure!(
            covered == items.len(),
            "the bench's envelopes are gapless, yet a batch was cut"
        );
        tx.commit().await?;
        known.committed(applied.loaded, &plan.sessions);
        ensure!(
            plan.dead.is_empty() && plan.resyncs.is_empty(),
            "the bench's envelopes are clean and gapless, yet the plan has {} dead letters and {} resyncs",
            plan.dead.len(),
            plan.resyncs.len()
        );
        busy += started.elapsed().as_secs_f64();
        batches += 1;
    }
    Ok((batches, busy))
}

/// utime + stime of this process, in seconds.
fn own_cpu_secs() -> Option<f64> {
    crate::drain::cpu_secs(i32::try_from(std::process::id()).ok()?)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
