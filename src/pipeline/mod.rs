//! The pipeline stage: routes each changed row to the pipelines of its table, applies the
//! operation list and the filter, and projects the picked and key columns into typed
//! [`ChangeRecord`]s. It knows nothing of where rows come from or go.

pub use crate::model::filter;
pub mod change_stream;
pub mod stage;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::pipeline::{KeyChanges, OnFilterExit};
use crate::config::PipelineConfig;
pub use crate::model::record::{
    ChangeColumn, ChangeRecord, ChangeSchema, Enrichment, FilterChange, Image, KeyChange,
    SourceInfo, Truncate,
};
use crate::model::ColumnValue;
use crate::model::Op;
use crate::source::mysql::plan::TablePlan;
use crate::source::RowChange;
use filter::Expr;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("pipeline `{pipeline}`: column `{column}` is not in table `{table}` (as the binlog now describes it); \
             fix the pipeline's columns, key or filter, or restore the column")]
    MissingColumn {
        pipeline: String,
        table: String,
        column: String,
    },
    #[error("pipeline `{pipeline}`: table `{table}`: {reason}")]
    LeftOut {
        pipeline: String,
        table: String,
        /// What was left out, why, and what to do.
        reason: String,
    },
}

/// A pipeline bound to one version of its table's layout.
struct Bound {
    picked: Vec<usize>,
    /// No column is picked twice: the picked values can be moved out of the row.
    picked_distinct: bool,
    picked_names: Arc<[String]>,
    key: Vec<usize>,
    key_names: Arc<[String]>,
    filter: Option<Expr>,
    /// Every column the pipeline reads (picked, key, filter), ascending.
    reads: Vec<usize>,
    /// `key_changes: split`: an update that changes the key is a `d` and a `c`.
    split: bool,
    db: Arc<str>,
    table: Arc<str>,
    /// A change stream's records carry the table's layout.
    schema: Option<Arc<ChangeSchema>>,
}

pub struct Router {
    pub pipelines: Vec<PipelineConfig>,
    names: Vec<Arc<str>>,
    /// Pipelines by database, then table (looked up by `&str`: no allocation per row).
    by_table: HashMap<String, HashMap<String, Arc<[usize]>>>,
    /// Bindings by (pipeline, plan address): rebuilt when a TABLE_MAP changes the layout.
    bound: HashMap<(usize, usize), (Arc<TablePlan>, Arc<Bound>)>,
    /// The pipelines of the last routed row's table, by its plan (kept alive here, so its
    /// address cannot be reused): consecutive rows of one table skip the lookups.
    last: Option<(Arc<TablePlan>, Arc<[usize]>)>,
    /// Pipelines stopped by a schema change they cannot follow, with why.
    pub stopped: Vec<Option<String>>,
    /// Pipelines stopped since the caller last looked (for the metrics).
    pub newly_stopped: Vec<usize>,
}

impl Router {
    pub fn new(pipelines: Vec<PipelineConfig>) -> Router {
        let active = vec![true; pipelines.len()];
        Router::with_active(pipelines, &active)
    }

    /// A router over every pipeline the process has known, by its stable index; only those
    /// marked active take rows (a reload retires pipelines without renumbering the others).
    pub fn with_active(pipelines: Vec<PipelineConfig>, active: &[bool]) -> Router {
        let mut lists: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (i, p) in pipelines.iter().enumerate() {
            if active.get(i).copied().unwrap_or(false) {
                lists.entry(p.db_table()).or_default().push(i);
            }
        }
        let mut by_table: HashMap<String, HashMap<String, Arc<[usize]>>> = HashMap::new();
        for ((db, table), idxs) in lists {
            by_table.entry(db).or_default().insert(table, idxs.into());
        }
        let names = pipelines
            .iter()
            .map(|p| Arc::from(p.name.as_str()))
            .collect();
        Router {
            stopped: vec![None; pipelines.len()],
            newly_stopped: Vec::new(),
            pipelines,
            names,
            by_table,
            bound: HashMap::new(),
            last: None,
        }
    }

    /// Whether an active pipeline reads `db`.`table`.
    pub fn reads(&self, db: &str, table: &str) -> bool {
        self.by_table.get(db).is_some_and(|m| m.contains_key(table))
    }

    /// The tables some pipeline reads.
    pub fn tables(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .by_table
            .iter()
            .flat_map(|(db, m)| m.keys().map(move |t| (db.clone(), t.clone())))
            .collect();
        v.sort();
        v
    }

    fn bind(&mut self, idx: usize, plan: &Arc<TablePlan>) -> Result<Arc<Bound>, RouteError> {
        let key = (idx, Arc::as_ptr(plan) as usize);
        if let Some((_, b)) = self.bound.get(&key) {
            return Ok(b.clone());
        }
        let p = &self.pipelines[idx];
        let table = format!("{}.{}", plan.db, plan.table);
        let missing = |c: &str| RouteError::MissingColumn {
            pipeline: p.name.clone(),
            table: table.clone(),
            column: c.to_string(),
        };
        let resolve = |cols: &[String]| -> Result<Vec<usize>, RouteError> {
            cols.iter()
                .map(|c| plan.column_index(c).ok_or_else(|| missing(c)))
                .collect()
        };
        let picked = match &p.columns {
            Some(cols) => resolve(cols)?,
            None => plan.visible().collect(),
        };
        let key_idx = match &p.key {
            Some(cols) => resolve(cols)?,
            // A table without a primary key: records have no key (a null Kafka key).
            None => plan.primary_key.clone(),
        };
        let filter = match &p.filter_expr {
            Some(e) => Some(e.bind(&|c| plan.column_index(c)).map_err(|c| missing(&c))?),
            None => None,
        };
        let filtered = match &p.filter_expr {
            Some(e) => resolve(&e.columns())?,
            None => Vec::new(),
        };
        let mut reads: Vec<usize> = picked
            .iter()
            .chain(&key_idx)
            .chain(&filtered)
            .copied()
            .collect();
        reads.sort_unstable();
        reads.dedup();
        let names = |ix: &[usize]| -> Arc<[String]> {
            ix.iter().map(|i| plan.columns[*i].name.clone()).collect()
        };
        let mut sorted = picked.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let b = Arc::new(Bound {
            picked_distinct: sorted.len() == picked.len(),
            picked_names: names(&picked),
            key_names: names(&key_idx),
            picked,
            key: key_idx,
            filter,
            reads,
            split: p.key_changes == KeyChanges::Split,
            db: Arc::from(plan.db.as_str()),
            table: Arc::from(plan.table.as_str()),
            schema: p.change_stream.then(|| Arc::new(change_schema(plan))),
        });
        // Drop bindings of plans no longer in use (a table map replaced after DDL or rotate).
        if self.bound.len() > 4 * self.pipelines.len() + 64 {
            self.bound.retain(|_, (pl, _)| Arc::strong_count(pl) > 1);
        }
        self.bound.insert(key, (plan.clone(), b.clone()));
        Ok(b)
    }

    /// Values of `db`.`table` can no longer be decoded: every active pipeline of that table
    /// stops (with the error, naming pipeline, table, column, type and position); the others
    /// go on.
    pub fn table_failed(
        &mut self,
        db: &str,
        table: &str,
        error: &crate::source::DecodeError,
        position: &crate::model::BinlogPosition,
    ) {
        let Some(idxs) = self.by_table.get(db).and_then(|m| m.get(table)).cloned() else {
            return;
        };
        for idx in idxs.iter().copied() {
            if self.stopped[idx].is_some() {
                continue;
            }
            let p = &self.pipelines[idx];
            let why = format!("pipeline `{}`: {error} (at {position})", p.name);
            tracing::error!(pipeline = %p.name, file = %p.file, %position, %error,
                "pipeline stopped: a value of its table cannot be decoded; the other pipelines go on. \
                 Fix the table (or the pipeline), restart, and backfill it");
            self.stopped[idx] = Some(why);
            self.newly_stopped.push(idx);
        }
    }

    /// The `t` records of a `TRUNCATE` of `db`.`table` (`partitions`: of an
    /// `ALTER TABLE … TRUNCATE PARTITION`), one per active pipeline of the table.
    pub fn truncate(&self, t: &crate::source::TableTruncated, out: &mut Vec<ChangeRecord>) {
        let Some(idxs) = self.by_table.get(&t.db).and_then(|m| m.get(&t.table)) else {
            return;
        };
        for &idx in idxs.iter() {
            if self.stopped[idx].is_some() || !self.pipelines[idx].wants(Op::Truncate) {
                continue;
            }
            out.push(ChangeRecord {
                op: Op::Truncate,
                before: None,
                after: None,
                source: SourceInfo {
                    pipeline: self.names[idx].clone(),
                    server_id: t.server_id,
                    db: Arc::from(t.db.as_str()),
                    table: Arc::from(t.table.as_str()),
                    gtid: t.position.gtid.clone(),
                    file: t.position.file.clone(),
                    pos: t.position.pos,
                    event: 0,
                    row: 0,
                    ts_ms: t.ts_ms,
                    origin: t.origin.clone(),
                },
                enrichment: Enrichment::None,
                oversize: None,
                key_change: None,
                filter_change: None,
                truncate: Some(Truncate {
                    partitions: t.partitions.clone(),
                    dropped: t.dropped,
                }),
                window: None,
                schema: None,
                key: Image {
                    names: Arc::from(Vec::new()),
                    values: Vec::new(),
                },
                pipeline: idx,
            });
        }
    }

    /// Routes one row: the records of every active pipeline of its table that wants its
    /// operation and whose filter passes (of `only`, when set: a backfilled row belongs to the
    /// pipeline that asked for it), pushed to `out`.
    ///
    /// The row's values are moved into the last pipeline's records (cloned for the others),
    /// so `row` is left with its images emptied.
    pub fn route_to(
        &mut self,
        row: &mut RowChange,
        only: Option<usize>,
        out: &mut Vec<ChangeRecord>,
    ) -> Result<(), RouteError> {
        let Some(idxs) = self.pipelines_of(&row.table) else {
            return Ok(());
        };
        let plan = row.table.clone();
        let plan = &plan;
        for (n, &idx) in idxs.iter().enumerate() {
            if only.is_some_and(|o| o != idx) || self.stopped[idx].is_some() {
                continue;
            }
            let p = &self.pipelines[idx];
            // An update may take a row out of a filtered pipeline's set: a delete to it.
            let may_leave = row.op == Op::Update
                && p.filter_expr.is_some()
                && p.on_filter_exit.unwrap_or_default() == OnFilterExit::Delete
                && p.wants(Op::Delete);
            if !p.wants(row.op) && !may_leave {
                continue;
            }
            let b = match self.bind(idx, plan) {
                Ok(b) => b,
                Err(e) => {
                    self.stop(idx, &e, &row.position);
                    continue;
                }
            };
            if let Some(e) = row
                .left_out
                .as_deref()
                .and_then(|lo| self.left_out(idx, &b, plan, lo))
            {
                self.stop(idx, &e, &row.position);
                continue;
            }
            let Some(seen) = Seen::of(row, b.filter.as_ref()) else {
                continue;
            };
            let op = match seen {
                Seen::Left => Op::Delete,
                Seen::Passes | Seen::Entered => row.op,
            };
            let p = &self.pipelines[idx];
            if !p.wants(op)
                || (seen == Seen::Left && p.on_filter_exit == Some(OnFilterExit::Ignore))
            {
                continue;
            }
            let source = SourceInfo {
                pipeline: self.names[idx].clone(),
                server_id: row.server_id,
                db: b.db.clone(),
                table: b.table.clone(),
                gtid: row.position.gtid.clone(),
                file: row.position.file.clone(),
                pos: row.position.pos,
                event: row.position.event,
                row: row.position.row,
                ts_ms: row.ts_ms,
                origin: row.origin.clone(),
            };
            let take = n + 1 == idxs.len() && b.picked_distinct;
            match row.key_side {
                None => records(row, &b, source, idx, seen, take, out),
                Some(side) => one_side(row, &b, source, idx, seen, side, out),
            }
        }
        Ok(())
    }

    /// This pipeline cannot go on with the table as it now is (`e`); the others do.
    fn stop(&mut self, idx: usize, e: &RouteError, position: &crate::model::BinlogPosition) {
        let p = &self.pipelines[idx];
        tracing::error!(pipeline = %p.name, file = %p.file, %position, error = %e,
            "pipeline stopped; the other pipelines go on. Fix the pipeline or the table, restart, and backfill it");
        self.stopped[idx] = Some(e.to_string());
        self.newly_stopped.push(idx);
    }

    /// The error for a row whose images leave out columns pipeline `idx` reads (`None`: it
    /// reads none of them, and its record is whole).
    fn left_out(
        &self,
        idx: usize,
        b: &Bound,
        plan: &TablePlan,
        lo: &crate::source::LeftOut,
    ) -> Option<RouteError> {
        let names: Vec<&str> = lo
            .columns
            .iter()
            .filter(|c| b.reads.binary_search(c).is_ok())
            .filter_map(|c| plan.columns.get(*c).map(|c| c.name.as_str()))
            .collect();
        (!names.is_empty()).then(|| RouteError::LeftOut {
            pipeline: self.pipelines[idx].name.clone(),
            table: format!("{}.{}", plan.db, plan.table),
            reason: crate::source::mysql::rows::left_out_reason(lo, &names),
        })
    }

    /// The active pipelines of `plan`'s table (`None`: no pipeline reads it).
    fn pipelines_of(&mut self, plan: &Arc<TablePlan>) -> Option<Arc<[usize]>> {
        if let Some((p, idxs)) = &self.last {
            if Arc::ptr_eq(p, plan) {
                return Some(idxs.clone());
            }
        }
        let idxs = self
            .by_table
            .get(plan.db.as_str())
            .and_then(|m| m.get(plan.table.as_str()))?
            .clone();
        self.last = Some((plan.clone(), idxs.clone()));
        Some(idxs)
    }
}

/// The layout a change stream's records carry: the columns records show (the server's own
/// hidden columns left out), their types and encodings, and the primary key.
fn change_schema(plan: &TablePlan) -> ChangeSchema {
    let columns = plan
        .visible()
        .map(|i| {
            let c = &plan.columns[i];
            ChangeColumn {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                encoding: c.kind.encoding(),
            }
        })
        .collect();
    let primary_key = plan
        .primary_key
        .iter()
        .filter_map(|i| plan.columns.get(*i).map(|c| c.name.clone()))
        .collect();
    ChangeSchema::new(columns, primary_key)
}

/// How a row meets a pipeline's `filter` (inserts and updates are tested after the change,
/// deletes before it; an image the event does not carry passes).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    /// It passes (or there is no filter): the row's own operation.
    Passes,
    /// An update before which the row did not pass and after which it does: it entered the
    /// pipeline's set (a `u`; with a key change, only the `c` of the new key), marked
    /// `filter_change: entered`.
    Entered,
    /// An update before which the row passed and after which it does not: it left the set
    /// (a `d` of the row before the change, marked `filter_change: left`).
    Left,
}

impl Seen {
    /// What the row's records say of it (`filter_change`).
    fn change(self) -> Option<FilterChange> {
        match self {
            Seen::Passes => None,
            Seen::Entered => Some(FilterChange::Entered),
            Seen::Left => Some(FilterChange::Left),
        }
    }

    /// `None`: the row is not the pipeline's, before or after.
    fn of(row: &RowChange, filter: Option<&Expr>) -> Option<Seen> {
        let Some(f) = filter else {
            return Some(Seen::Passes);
        };
        let passes = |img: &Option<Vec<ColumnValue>>| img.as_ref().is_none_or(|v| f.eval(v));
        match row.op {
            Op::Delete => passes(&row.before).then_some(Seen::Passes),
            Op::Update => match (passes(&row.before), passes(&row.after)) {
                (true, true) => Some(Seen::Passes),
                (false, true) => Some(Seen::Entered),
                (true, false) => Some(Seen::Left),
                (false, false) => None,
            },
            _ => passes(&row.after).then_some(Seen::Passes),
        }
    }
}

fn project(img: &Option<Vec<ColumnValue>>, ix: &[usize], names: &Arc<[String]>) -> Option<Image> {
    img.as_ref().map(|v| Image {
        names: names.clone(),
        values: ix
            .iter()
            .map(|i| v.get(*i).cloned().unwrap_or(ColumnValue::Null))
            .collect(),
    })
}

/// As [`project`], moving the values out of `img` (`ix` must not repeat an index).
fn project_take(
    img: &mut Option<Vec<ColumnValue>>,
    ix: &[usize],
    names: &Arc<[String]>,
) -> Option<Image> {
    img.as_mut().map(|v| Image {
        names: names.clone(),
        values: ix
            .iter()
            .map(|i| {
                v.get_mut(*i).map_or(ColumnValue::Null, |x| {
                    std::mem::replace(x, ColumnValue::Null)
                })
            })
            .collect(),
    })
}

/// As [`records`], for one copy of a key-changing update read from a change topic: only the
/// records of that copy's side — from the old key's copy those keyed by the old key (when the
/// pipeline's key changed), from the new key's copy the others — so that together the two
/// copies make each record once, each in its key's order.
fn one_side(
    row: &mut RowChange,
    b: &Bound,
    source: SourceInfo,
    pipeline: usize,
    seen: Seen,
    side: crate::source::KeySide,
    out: &mut Vec<ChangeRecord>,
) {
    let old = project(&row.before, &b.key, &b.key_names);
    let changed = old != project(&row.after, &b.key, &b.key_names);
    let start = out.len();
    records(row, b, source, pipeline, seen, false, out);
    let mine: Vec<ChangeRecord> = out
        .drain(start..)
        .filter(|r| {
            let old_side = changed && Some(&r.key) == old.as_ref();
            old_side == (side == crate::source::KeySide::Old)
        })
        .collect();
    out.extend(mine);
}

/// The records one row makes for one pipeline, pushed to `out`: one, or — an update that
/// changed the row's key, with `key_changes: split` — a `d` of the old key then a `c` of the
/// new one, marked (only the `c` when the row entered the pipeline's set with the change).
/// A row that left the set makes a `d` of its image before the change; the records of a row
/// that entered or left it carry `filter_change`.
/// With `take` the picked values are moved out of `row` (its last pipeline).
fn records(
    row: &mut RowChange,
    b: &Bound,
    source: SourceInfo,
    pipeline: usize,
    seen: Seen,
    take: bool,
    out: &mut Vec<ChangeRecord>,
) {
    let key_of = |img: &Option<Vec<ColumnValue>>| {
        project(img, &b.key, &b.key_names).unwrap_or(Image {
            names: b.key_names.clone(),
            values: Vec::new(),
        })
    };
    let image = |img: &mut Option<Vec<ColumnValue>>| match take {
        true => project_take(img, &b.picked, &b.picked_names),
        false => project(img, &b.picked, &b.picked_names),
    };
    let record = |op, before, after, key, source| ChangeRecord {
        op,
        before,
        after,
        source,
        enrichment: Enrichment::None,
        oversize: None,
        key_change: None,
        filter_change: seen.change(),
        truncate: None,
        window: None,
        schema: b.schema.clone(),
        key,
        pipeline,
    };
    if seen == Seen::Left {
        let key = key_of(&row.before);
        out.push(record(
            Op::Delete,
            image(&mut row.before),
            None,
            key,
            source,
        ));
        return;
    }
    if row.op == Op::Update && b.split && !b.key.is_empty() {
        let (old, new) = (key_of(&row.before), key_of(&row.after));
        if old != new {
            let change = KeyChange {
                old: old.clone(),
                new: new.clone(),
            };
            if seen == Seen::Passes {
                let mut d = record(
                    Op::Delete,
                    image(&mut row.before),
                    None,
                    old,
                    source.clone(),
                );
                d.key_change = Some(change.clone());
                out.push(d);
            }
            let mut c = record(Op::Insert, None, image(&mut row.after), new, source);
            c.key_change = Some(change);
            out.push(c);
            return;
        }
    }
    if row.op == Op::Update && b.schema.is_some() && !b.key.is_empty() {
        let (old, new) = (key_of(&row.before), key_of(&row.after));
        if old != new {
            // A change stream sends a key change to both keys' partitions (see `one_side`).
            let change = KeyChange {
                old: old.clone(),
                new: new.clone(),
            };
            let (before, after) = (image(&mut row.before), image(&mut row.after));
            for key in [old, new] {
                let mut u = record(
                    Op::Update,
                    before.clone(),
                    after.clone(),
                    key,
                    source.clone(),
                );
                u.key_change = Some(change.clone());
                out.push(u);
            }
            return;
        }
    }
    let key = key_of(if row.after.is_some() {
        &row.after
    } else {
        &row.before
    });
    let (before, after) = (image(&mut row.before), image(&mut row.after));
    out.push(record(row.op, before, after, key, source));
}
