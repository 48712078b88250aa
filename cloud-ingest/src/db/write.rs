//! The registry's writes: load the sessions a batch names that its
//! pipeline does not know (locked; [`Known`]), plan, load the status
//! digests of the boxes it names (locked; status batches only) and plan
//! their status, then write the [`Plan`] in the same transaction.
//!
//! Invariants: each kind of device row is written with one statement per
//! batch (arrays bound as parameters and expanded by one `unnest` per
//! array in the select list, docs/CLOUD.md SQL rule 4), so a batch costs
//! a fixed number of round trips plus one per box whose status it
//! carries (rare: births and last wills); every write is an idempotent
//! `INSERT … ON CONFLICT` or a keyed `DELETE`, except history rows the
//! plan knows to be new (a plain `INSERT`; should one exist after all, the
//! batch fails with 23505 and is retried with `ON CONFLICT`,
//! [`HistoryInsert`]); session rows the pipeline does not know are locked
//! (`SELECT … FOR UPDATE`, in key order) before planning, and the ones it
//! knows are written by a compare-and-set on every column a batch changes
//! (locking them before any other row is written; a miss
//! fails the batch with [`DbError::SessionsChanged`] and the pipeline
//! plans it again from loaded rows), so two consumers briefly owning one
//! partition during a rebalance serialize and the second sees the first
//! one's `last_seq`; a session row never moves back (`WHERE last_seq <=
//! excluded.last_seq`); every statement is prepared once per connection
//! ([`Statements`]), not parsed per batch.

use super::{col, sql, DbError};
use crate::registry::boxes::{self, boxes_needed, plan_boxes, Recent};
use crate::registry::known::Known;
use crate::registry::plan::{
    plan_with_deferral, sessions_needed, Deferral, Item, Plan, Policy, SessionState,
};
use rae_protocol::AttrValue;
use std::collections::HashMap;
use tokio_postgres::{Client, Statement, Transaction};
use uuid::Uuid;

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// (type, text) of an attribute value as stored.
pub fn render_value(v: &AttrValue) -> (&'static str, String) {
    match v {
        AttrValue::Text(s) => ("text", s.clone()),
        AttrValue::Int(i) => ("int", i.to_string()),
        AttrValue::Bool(b) => ("bool", b.to_string()),
        AttrValue::Float(x) => ("float", x.to_string()),
    }
}

/// The registry's statements, prepared on one connection (a
/// [`Statement`] belongs to the connection that prepared it): each batch
/// binds and executes them, with no parse/plan round trip per statement.
#[derive(Debug)]
pub struct Statements {
    load_sessions: Statement,
    sessions: Statement,
    sessions_cas: Statement,
    devices: Statement,
    attrs_replace: Statement,
    attrs_remove: Statement,
    attrs_write: Statement,
    history: Statement,
    history_new: Statement,
    history_trim: Statement,
    load_boxes: Statement,
    boxes: Statement,
}

impl Statements {
    /// Prepares every statement on `client` (after a (re)connect).
    pub async fn prepare(client: &Client) -> Result<Statements, DbError> {
        async fn prepare(
            client: &Client,
            query: &str,
            step: &'static str,
        ) -> Result<Statement, DbError> {
            client.prepare(query).await.map_err(sql(step))
        }
        Ok(Statements {
            load_sessions: prepare(
                client,
                LOAD_SESSIONS_SQL,
                "prepare the statement to load device sessions",
            )
            .await?,
            sessions: prepare(
                client,
                SESSIONS_SQL,
                "prepare the statement to write device sessions",
            )
            .await?,
            sessions_cas: prepare(
                client,
                SESSIONS_CAS_SQL,
                "prepare the statement to update known device sessions",
            )
            .await?,
            devices: prepare(
                client,
                DEVICES_SQL,
                "prepare the statement to write devices",
            )
            .await?,
            attrs_replace: prepare(
                client,
                ATTRS_REPLACE_SQL,
                "prepare the statement to replace device attributes",
            )
            .await?,
            attrs_remove: prepare(
                client,
                ATTRS_REMOVE_SQL,
                "prepare the statement to remove device attributes",
            )
            .await?,
            attrs_write: prepare(
                client,
                ATTRS_WRITE_SQL,
                "prepare the statement to write device attributes",
            )
            .await?,
            history: prepare(
                client,
                HISTORY_SQL,
                "prepare the statement to write device event history",
            )
            .await?,
            history_new: prepare(
                client,
                HISTORY_NEW_SQL,
                "prepare the statement to write new device event history",
            )
            .await?,
            history_trim: prepare(
                client,
                HISTORY_TRIM_SQL,
                "prepare the statement to trim device event history",
            )
            .await?,
            load_boxes: prepare(
                client,
                LOAD_BOXES_SQL,
                "prepare the statement to load box status digests",
            )
            .await?,
            boxes: prepare(
                client,
                BOXES_SQL,
                "prepare the statement to write box status",
            )
            .await?,
        })
    }
}

const LOAD_SESSIONS_SQL: &str =
    "SELECT session_id, rae_id, device_id, last_seq, stale, stale_expected, stale_got,
                    last_resync_ms, started_ms, ended_ms, end_reason
             FROM device_sessions WHERE session_id = ANY($1)
             ORDER BY session_id FOR UPDATE";

const SESSIONS_SQL: &str = "INSERT INTO device_sessions (session_id, rae_id, device_id, last_seq, stale,
             stale_expected, stale_got, last_resync_ms, started_ms, ended_ms, end_reason, updated_at)
         SELECT unnest($1::uuid[]), unnest($2::text[]), unnest($3::text[]), unnest($4::bigint[]),
                unnest($5::bool[]), unnest($6::bigint[]), unnest($7::bigint[]), unnest($8::bigint[]),
                unnest($9::bigint[]), unnest($10::bigint[]), unnest($11::text[]), now()
         ON CONFLICT (session_id) DO UPDATE SET
             last_seq = excluded.last_seq, stale = excluded.stale,
             stale_expected = excluded.stale_expected, stale_got = excluded.stale_got,
             last_resync_ms = excluded.last_resync_ms, started_ms = excluded.started_ms,
             ended_ms = excluded.ended_ms, end_reason = excluded.end_reason,
             updated_at = excluded.updated_at
         WHERE device_sessions.last_seq <= excluded.last_seq";

/// Sessions the pipeline knows (`registry::known`): each row is updated
/// only if it still holds the state the batch planned from (`was_*`,
/// compared as `IS NOT DISTINCT FROM` where NULL is possible); the caller
/// compares the count of updated rows. `rae_id` and `device_id` never
/// change. Rows are given in key order, but the join's order, and so the
/// order of the row locks, is the planner's: two consumers of one
/// partition during a rebalance may deadlock, and the loser retries its
/// batch (docs/CLOUD.md, SQL rules 5 and 6).
const SESSIONS_CAS_SQL: &str = "UPDATE device_sessions AS s SET
             last_seq = t.last_seq, stale = t.stale, stale_expected = t.stale_expected,
             stale_got = t.stale_got, last_resync_ms = t.last_resync_ms, started_ms = t.started_ms,
             ended_ms = t.ended_ms, end_reason = t.end_reason, updated_at = now()
         FROM (SELECT unnest($1::uuid[]) AS session_id, unnest($2::bigint[]) AS last_seq,
                      unnest($3::bool[]) AS stale, unnest($4::bigint[]) AS stale_expected,
                      unnest($5::bigint[]) AS stale_got, unnest($6::bigint[]) AS last_resync_ms,
                      unnest($7::bigint[]) AS started_ms, unnest($8::bigint[]) AS ended_ms,
                      unnest($9::text[]) AS end_reason, unnest($10::bigint[]) AS was_last_seq,
                      unnest($11::bool[]) AS was_stale, unnest($12::bigint[]) AS was_expected,
                      unnest($13::bigint[]) AS was_got, unnest($14::bigint[]) AS was_resync,
                      unnest($15::bigint[]) AS was_started, unnest($16::bigint[]) AS was_ended,
                      unnest($17::text[]) AS was_reason) AS t
         WHERE s.session_id = t.session_id
           AND s.last_seq = t.was_last_seq AND s.stale = t.was_stale
           AND s.stale_expected IS NOT DISTINCT FROM t.was_expected
           AND s.stale_got IS NOT DISTINCT FROM t.was_got
           AND s.last_resync_ms IS NOT DISTINCT FROM t.was_resync
           AND s.started_ms IS NOT DISTINCT FROM t.was_started
           AND s.ended_ms IS NOT DISTINCT FROM t.was_ended
           AND s.end_reason IS NOT DISTINCT FROM t.was_reason";

const DEVICES_SQL: &str =
    "INSERT INTO devices (rae_id, device_id, current_session_id, first_seen_at, updated_at)
         SELECT unnest($1::text[]), unnest($2::text[]), unnest($3::uuid[]), now(), now()
         ON CONFLICT (rae_id, device_id) DO UPDATE SET
             current_session_id = excluded.current_session_id, updated_at = excluded.updated_at
         WHERE devices.current_session_id <= excluded.current_session_id";

const ATTRS_REPLACE_SQL: &str = "DELETE FROM device_attributes WHERE session_id = ANY($1)";

const ATTRS_REMOVE_SQL: &str = "DELETE FROM device_attributes WHERE (session_id, name) IN
                 (SELECT unnest($1::uuid[]), unnest($2::text[]))";

const ATTRS_WRITE_SQL: &str =
    "INSERT INTO device_attributes (session_id, name, value_type, value, updated_seq, updated_at)
             SELECT unnest($1::uuid[]), unnest($2::text[]), unnest($3::text[]), unnest($4::text[]),
                    unnest($5::bigint[]), now()
             ON CONFLICT (session_id, name) DO UPDATE SET
                 value_type = excluded.value_type, value = excluded.value,
                 updated_seq = excluded.updated_seq, updated_at = excluded.updated_at";

const HISTORY_SQL: &str = "INSERT INTO device_events (session_id, seq, kind, ts_ms, envelope, kafka_partition, kafka_offset, recorded_at)
             SELECT unnest($1::uuid[]), unnest($2::bigint[]), unnest($3::text[]), unnest($4::bigint[]),
                    unnest($5::bytea[]), unnest($6::bigint[]), unnest($7::bigint[]), now()
             ON CONFLICT (session_id, seq) DO NOTHING";

/// [`HISTORY_SQL`] without `ON CONFLICT`, for a batch whose rows are all
/// new ([`Plan::history_may_exist`] false): PostgreSQL then skips the
/// conflict check per row (about a third of the statement's time,
/// docs/BENCHMARKS.md).
const HISTORY_NEW_SQL: &str = "INSERT INTO device_events (session_id, seq, kind, ts_ms, envelope, kafka_partition, kafka_offset, recorded_at)
             SELECT unnest($1::uuid[]), unnest($2::bigint[]), unnest($3::text[]), unnest($4::bigint[]),
                    unnest($5::bytea[]), unnest($6::bigint[]), unnest($7::bigint[]), now()";

const HISTORY_TRIM_SQL: &str = "DELETE FROM device_events WHERE (session_id, seq) IN
                 (SELECT e.session_id, e.seq FROM device_events e
                  JOIN (SELECT unnest($1::uuid[]) AS s, unnest($2::bigint[]) AS keep_after) AS t
                    ON e.session_id = t.s AND e.seq <= t.keep_after)";

/// The status digests of the boxes a batch names, locked (in key order)
/// so two consumers of one status partition during a rebalance serialize.
const LOAD_BOXES_SQL: &str = "SELECT rae_id, recent_status FROM boxes WHERE rae_id = ANY($1)
             ORDER BY rae_id FOR UPDATE";

const BOXES_SQL: &str = "INSERT INTO boxes (rae_id, online, agent_version, started_ms, boot_count,
                                last_birth_ms, last_will_ms, recent_status, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
             ON CONFLICT (rae_id) DO UPDATE SET
                 online = excluded.online,
                 agent_version = COALESCE(excluded.agent_version, boxes.agent_version),
                 started_ms = COALESCE(excluded.started_ms, boxes.started_ms),
                 boot_count = COALESCE(excluded.boot_count, boxes.boot_count),
                 last_birth_ms = COALESCE(excluded.last_birth_ms, boxes.last_birth_ms),
                 last_will_ms = COALESCE(excluded.last_will_ms, boxes.last_will_ms),
                 recent_status = excluded.recent_status,
                 updated_at = excluded.updated_at";

/// What [`apply`] did.
#[derive(Debug)]
pub struct Applied {
    pub plan: Plan,
    /// How many of the items (a prefix) the plan covers.
    pub covered: usize,
    /// The session rows it loaded (locked): with the plan's sessions, what
    /// [`Known::committed`] takes once the transaction has committed.
    pub loaded: HashMap<Uuid, SessionState>,
}

/// One batch's database work inside `tx`: load and lock the sessions the
/// batch names that `known` does not hold, plan the batch against those
/// and the known ones ([`plan_with_deferral`], pure; `defer` as there) and
/// write the plan, history as `history` says. The caller produces the
/// plan's side records (dead letters, resyncs), commits, and then tells
/// `known` ([`Known::committed`]); nothing here commits.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    tx: &Transaction<'_>,
    st: &Statements,
    items: &[Item],
    known: &Known,
    now_ms: u64,
    policy: &Policy,
    history: HistoryInsert,
    defer: Option<Deferral>,
) -> Result<Applied, DbError> {
    let (mut states, missing) = known.split(&sessions_needed(items));
    let loaded = load_sessions(tx, st, &missing).await?;
    states.extend(loaded.iter().map(|(id, s)| (*id, s.clone())));
    let (mut plan, covered) = plan_with_deferral(items, &states, now_ms, policy, defer);
    let names = boxes_needed(&items[..covered]);
    if !names.is_empty() {
        let stored = load_boxes(tx, st, &names).await?;
        plan.boxes = plan_boxes(&items[..covered], &stored, now_ms, &mut plan.counts);
    }
    write_plan(tx, st, items, &plan, known, policy, history).await?;
    Ok(Applied {
        plan,
        covered,
        loaded,
    })
}

/// How [`apply`] writes history rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryInsert {
    /// A plain `INSERT` when the plan says every row is new, else
    /// `ON CONFLICT DO NOTHING`.
    Fast,
    /// Always `ON CONFLICT DO NOTHING`: the retry after a plain insert met
    /// an existing row (SQLSTATE 23505): a second consumer stored the same
    /// new session during a rebalance, or the database was edited by
    /// hand. The batch still applies.
    OnConflict,
}

/// Loads and locks the sessions `ids` (sorted).
pub async fn load_sessions(
    tx: &Transaction<'_>,
    st: &Statements,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, SessionState>, DbError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = tx
        .query(&st.load_sessions, &[&ids])
        .await
        .map_err(sql("load device sessions"))?;
    let mut out = HashMap::with_capacity(rows.len());
    const STEP: &str = "read the loaded device sessions";
    for r in rows {
        let expected: Option<i64> = col(&r, 5, STEP)?;
        let got: Option<i64> = col(&r, 6, STEP)?;
        out.insert(
            col::<Uuid>(&r, 0, STEP)?,
            SessionState {
                rae_id: col(&r, 1, STEP)?,
                device_id: col(&r, 2, STEP)?,
                last_seq: to_u64(col(&r, 3, STEP)?),
                stale: col(&r, 4, STEP)?,
                stale_gap: expected.zip(got).map(|(e, g)| (to_u64(e), to_u64(g))),
                last_resync_ms: col::<Option<i64>>(&r, 7, STEP)?.map(to_u64),
                started_ms: col::<Option<i64>>(&r, 8, STEP)?.map(to_u64),
                ended_ms: col::<Option<i64>>(&r, 9, STEP)?.map(to_u64),
                end_reason: col(&r, 10, STEP)?,
            },
        );
    }
    Ok(out)
}

/// Loads and locks the status digests of the boxes `names` (sorted).
pub async fn load_boxes(
    tx: &Transaction<'_>,
    st: &Statements,
    names: &[String],
) -> Result<HashMap<String, Recent>, DbError> {
    let rows = tx
        .query(&st.load_boxes, &[&names])
        .await
        .map_err(sql("load box status digests"))?;
    const STEP: &str = "read the loaded box status digests";
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let recent: Option<Vec<u8>> = col(&r, 1, STEP)?;
        out.insert(
            col::<String>(&r, 0, STEP)?,
            recent.as_deref().map(boxes::decode).unwrap_or_default(),
        );
    }
    Ok(out)
}

/// Writes everything `plan` decided; `items` are the records it planned
/// (history rows store their raw values).
pub async fn write_plan(
    tx: &Transaction<'_>,
    st: &Statements,
    items: &[Item],
    plan: &Plan,
    known: &Known,
    policy: &Policy,
    history: HistoryInsert,
) -> Result<(), DbError> {
    write_sessions(tx, st, plan, known).await?;
    write_devices(tx, st, plan).await?;
    write_attributes(tx, st, plan).await?;
    write_history(tx, st, items, plan, policy, history).await?;
    write_boxes(tx, st, plan).await
}

/// The plan's sessions: those `known` holds by compare-and-set against
/// the state the plan started from (first, so a miss,
/// [`DbError::SessionsChanged`], comes before any other write), the others
/// (loaded or new) by upsert.
async fn write_sessions(
    tx: &Transaction<'_>,
    st: &Statements,
    plan: &Plan,
    known: &Known,
) -> Result<(), DbError> {
    let (mut rows, mut others) = (Vec::new(), Vec::new());
    for (id, s) in &plan.sessions {
        match known.get(id) {
            Some(was) => rows.push((id, s, was)),
            None => others.push((id, s)),
        }
    }
    write_known_sessions(tx, st, &rows).await?;
    upsert_sessions(tx, st, &others).await
}

/// `(id, new state, known state)` by compare-and-set.
async fn write_known_sessions(
    tx: &Transaction<'_>,
    st: &Statements,
    rows: &[(&Uuid, &SessionState, &SessionState)],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| *r.0).collect();
    let new = SessionColumns::of(rows.iter().map(|r| r.1));
    let was = SessionColumns::of(rows.iter().map(|r| r.2));
    let updated = tx
        .execute(
            &st.sessions_cas,
            &[
                &ids,
                &new.last,
                &new.stale,
                &new.exp,
                &new.got,
                &new.resync,
                &new.started,
                &new.ended,
                &new.reason,
                &was.last,
                &was.stale,
                &was.exp,
                &was.got,
                &was.resync,
                &was.started,
                &was.ended,
                &was.reason,
            ],
        )
        .await
        .map_err(sql("update known device sessions"))?;
    let updated = usize::try_from(updated).unwrap_or(usize::MAX);
    if updated != rows.len() {
        return Err(DbError::SessionsChanged {
            expected: rows.len(),
            changed: rows.len().saturating_sub(updated),
        });
    }
    Ok(())
}

/// The columns of session states a batch can change, one array each.
struct SessionColumns<'a> {
    last: Vec<i64>,
    stale: Vec<bool>,
    exp: Vec<Option<i64>>,
    got: Vec<Option<i64>>,
    resync: Vec<Option<i64>>,
    started: Vec<Option<i64>>,
    ended: Vec<Option<i64>>,
    reason: Vec<Option<&'a str>>,
}

impl<'a> SessionColumns<'a> {
    fn of(states: impl Iterator<Item = &'a SessionState>) -> SessionColumns<'a> {
        let mut c = SessionColumns {
            last: vec![],
            stale: vec![],
            exp: vec![],
            got: vec![],
            resync: vec![],
            started: vec![],
            ended: vec![],
            reason: vec![],
        };
        for s in states {
            c.last.push(to_i64(s.last_seq));
            c.stale.push(s.stale);
            c.exp.push(opt_i64(s.stale_gap.map(|g| g.0)));
            c.got.push(opt_i64(s.stale_gap.map(|g| g.1)));
            c.resync.push(opt_i64(s.last_resync_ms));
            c.started.push(opt_i64(s.started_ms));
            c.ended.push(opt_i64(s.ended_ms));
            c.reason.push(s.end_reason.as_deref());
        }
        c
    }
}

/// `(id, state)` of sessions not known (loaded or new), upserted.
async fn upsert_sessions(
    tx: &Transaction<'_>,
    st: &Statements,
    rows: &[(&Uuid, &SessionState)],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| *r.0).collect();
    let rae: Vec<&str> = rows.iter().map(|r| r.1.rae_id.as_str()).collect();
    let dev: Vec<&str> = rows.iter().map(|r| r.1.device_id.as_str()).collect();
    let c = SessionColumns::of(rows.iter().map(|r| r.1));
    tx.execute(
        &st.sessions,
        &[
            &ids, &rae, &dev, &c.last, &c.stale, &c.exp, &c.got, &c.resync, &c.started, &c.ended,
            &c.reason,
        ],
    )
    .await
    .map_err(sql("write device sessions"))?;
    Ok(())
}

async fn write_devices(tx: &Transaction<'_>, st: &Statements, plan: &Plan) -> Result<(), DbError> {
    if plan.devices.is_empty() {
        return Ok(());
    }
    // BTreeMap order = key order: concurrent batches lock rows in one order.
    let rae: Vec<&str> = plan.devices.keys().map(|k| k.0.as_str()).collect();
    let dev: Vec<&str> = plan.devices.keys().map(|k| k.1.as_str()).collect();
    let sid: Vec<Uuid> = plan.devices.values().copied().collect();
    tx.execute(&st.devices, &[&rae, &dev, &sid])
        .await
        .map_err(sql("write devices"))?;
    Ok(())
}

async fn write_attributes(
    tx: &Transaction<'_>,
    st: &Statements,
    plan: &Plan,
) -> Result<(), DbError> {
    let replaced: Vec<Uuid> = plan
        .attrs
        .iter()
        .filter(|(_, d)| d.replace)
        .map(|(s, _)| *s)
        .collect();
    if !replaced.is_empty() {
        tx.execute(&st.attrs_replace, &[&replaced])
            .await
            .map_err(sql("replace device attributes"))?;
    }
    let (mut del_s, mut del_n) = (Vec::new(), Vec::new());
    let (mut s, mut n, mut t, mut v, mut q) = (vec![], vec![], vec![], vec![], vec![]);
    for (sid, delta) in &plan.attrs {
        for (name, change) in &delta.changes {
            match change {
                None if !delta.replace => {
                    del_s.push(*sid);
                    del_n.push(name.as_str());
                }
                None => {}
                Some((value, seq)) => {
                    let (ty, text) = render_value(value);
                    s.push(*sid);
                    n.push(name.as_str());
                    t.push(ty);
                    v.push(text);
                    q.push(to_i64(*seq));
                }
            }
        }
    }
    if !del_s.is_empty() {
        tx.execute(&st.attrs_remove, &[&del_s, &del_n])
            .await
            .map_err(sql("remove device attributes"))?;
    }
    if !s.is_empty() {
        tx.execute(&st.attrs_write, &[&s, &n, &t, &v, &q])
            .await
            .map_err(sql("write device attributes"))?;
    }
    Ok(())
}

async fn write_history(
    tx: &Transaction<'_>,
    st: &Statements,
    items: &[Item],
    plan: &Plan,
    policy: &Policy,
    mode: HistoryInsert,
) -> Result<(), DbError> {
    if !plan.history.is_empty() {
        let statement = if mode == HistoryInsert::Fast && !plan.history_may_exist {
            &st.history_new
        } else {
            &st.history
        };
        let h = &plan.history;
        let s: Vec<Uuid> = h.iter().map(|r| r.session_id).collect();
        let q: Vec<i64> = h.iter().map(|r| to_i64(r.seq)).collect();
        let k: Vec<&str> = h.iter().map(|r| r.kind).collect();
        let ts: Vec<i64> = h.iter().map(|r| to_i64(r.ts_ms)).collect();
        let env: Vec<&[u8]> = h.iter().map(|r| items[r.item].raw.as_slice()).collect();
        let p: Vec<i64> = h.iter().map(|r| i64::from(r.partition)).collect();
        let o: Vec<i64> = h.iter().map(|r| r.offset).collect();
        tx.execute(statement, &[&s, &q, &k, &ts, &env, &p, &o])
            .await
            .map_err(sql("write device event history"))?;
    }
    let trims = plan.history_trims(policy);
    if !trims.is_empty() {
        let s: Vec<Uuid> = trims.iter().map(|t| t.0).collect();
        let q: Vec<i64> = trims.iter().map(|t| to_i64(t.1)).collect();
        tx.execute(&st.history_trim, &[&s, &q])
            .await
            .map_err(sql("trim device event history"))?;
    }
    Ok(())
}

async fn write_boxes(tx: &Transaction<'_>, st: &Statements, plan: &Plan) -> Result<(), DbError> {
    for (rae_id, b) in &plan.boxes {
        tx.execute(
            &st.boxes,
            &[
                rae_id,
                &b.last.online,
                &b.last.agent_version,
                &b.last.started_ms,
                &b.last.boot_count,
                &b.last_birth_ms,
                &b.last_will_ms,
                &boxes::encode(&b.recent),
            ],
        )
        .await
        .map_err(sql("write box status"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CockroachDB's `INT` is 8 bytes (`default_int_size`): a `$n::int[]`
    /// there expects `i64`s and rejects the `i32`s PostgreSQL would take,
    /// so every integer parameter is cast as `bigint` (docs/CLOUD.md, SQL
    /// rule 1).
    #[test]
    fn no_statement_binds_an_integer_whose_width_differs_between_engines() {
        for sql in [
            LOAD_SESSIONS_SQL,
            LOAD_BOXES_SQL,
            SESSIONS_SQL,
            SESSIONS_CAS_SQL,
            DEVICES_SQL,
            ATTRS_REPLACE_SQL,
            ATTRS_REMOVE_SQL,
            ATTRS_WRITE_SQL,
            HISTORY_SQL,
            HISTORY_NEW_SQL,
            HISTORY_TRIM_SQL,
            BOXES_SQL,
        ] {
            let lower = sql.to_lowercase();
            for cast in [
                "::int[]",
                "::int)",
                "::int,",
                "::integer",
                "::int4",
                "::int ",
            ] {
                assert!(!lower.contains(cast), "{cast} in {sql}");
            }
        }
    }
}
