//! Windows of rows (`enrichment.window`): rows gathered by count, by commit time or both,
//! one window per group value, each window rendered into one prompt.
//!
//! A window's rows depend only on the stream: a window closes at its row count, at its byte
//! cap, when a row (of any group) at or past its end is taken, or when the stream clock passes
//! its end ([`ClockReading::passed`]) — never on the wall clock alone. After a crash the
//! checkpoint is before the first row of every window not yet delivered, so the same rows
//! come again and make the same windows, with the same ids.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::backend::template::Template;
use crate::backend::Input;
use crate::config::window::{WindowConfig, COUNT, ROWS};
use crate::model::clock::ClockReading;
use crate::model::record::{ChangeRecord, Enrichment, Image, SourceInfo, Window};
use crate::model::{BinlogPosition, ColumnValue, Op};

/// How a pipeline's rows make windows, and a window its input.
#[derive(Debug)]
pub struct WindowSpec {
    rows: Option<usize>,
    every_ms: Option<u64>,
    group: Option<String>,
    row: Template,
    separator: String,
    max_bytes: usize,
    /// The backend's prompt (or embedding text): `{rows}`, `{count}`, the group column.
    prompt: Template,
}

impl WindowSpec {
    /// From the pipeline's `enrichment.window` and its backend's prompt template.
    pub fn new(w: &WindowConfig, prompt: Template) -> Result<WindowSpec, String> {
        Ok(WindowSpec {
            rows: w.rows,
            every_ms: w.every_ms(),
            group: w.group.clone(),
            row: w.row_template()?,
            separator: w.separator.clone(),
            max_bytes: w.max_bytes,
            prompt,
        })
    }

    /// What shapes the input, for the lineage: the prompt, the row template, the separator,
    /// the cap and how rows are gathered.
    pub fn describe(&self) -> String {
        format!(
            "window|{}|{}|{:?}|{}|{:?}|{:?}|{:?}",
            self.prompt.source(),
            self.row.source(),
            self.separator,
            self.max_bytes,
            self.rows,
            self.every_ms,
            self.group
        )
    }

    /// The columns a row's section reads, and the group column.
    pub fn columns(&self) -> Vec<&str> {
        let mut c = self.row.columns();
        c.extend(self.group.as_deref());
        c
    }

    /// A row's section of the prompt; `None` when every column it names is empty.
    pub fn section(&self, after: &Image) -> Option<String> {
        let cols = self.row.columns();
        if cols
            .iter()
            .all(|c| after.get(c).is_none_or(ColumnValue::is_blank))
        {
            return None;
        }
        Some(self.row.render(|c| after.get(c)))
    }
}

/// A row in an open window.
struct Member {
    seq: u64,
    key: Image,
    position: BinlogPosition,
    ts_ms: u64,
}

/// A window still taking rows.
struct Open {
    group: Option<Image>,
    /// The group's key (its values as JSON; empty without a group).
    gkey: String,
    members: Vec<Member>,
    /// The rows' sections, joined.
    text: String,
    /// A row's section was cut to `max_bytes`.
    truncated: bool,
    /// Where the window's commit time ends (`every`), ms.
    end_ms: Option<u64>,
    /// The last row's source: the window record's `source`.
    source: SourceInfo,
    pipeline: usize,
}

/// A window that closed: its record (enrichment still to come), the backend input made of
/// it, and its rows' sequence numbers in stream order (the first is acknowledged by the
/// record's delivery, the others as soon as it is handed on).
pub struct Closed {
    pub rec: ChangeRecord,
    pub input: Input,
    /// A row's section was cut to the window's `max_bytes`.
    pub truncated: bool,
    pub seqs: Vec<u64>,
    /// The group's key (its values as JSON; empty without a group).
    pub group: String,
}

/// The open windows of one pipeline, by group value.
pub struct Gatherer {
    spec: Arc<WindowSpec>,
    open: HashMap<String, Open>,
    /// Per group, the last row of the last window delivered before a restart.
    delivered: BTreeMap<String, BinlogPosition>,
}

impl Gatherer {
    /// `delivered`: per group, the last row of the last window delivered (from the
    /// checkpoint).
    pub fn new(spec: Arc<WindowSpec>, delivered: BTreeMap<String, BinlogPosition>) -> Gatherer {
        Gatherer {
            spec,
            open: HashMap::new(),
            delivered,
        }
    }

    /// The group of `rec`: its image (`None` without a group) and its key (the values as
    /// JSON; empty without a group).
    fn group_of(&self, rec: &ChangeRecord) -> (Option<Image>, String) {
        let group = self.spec.group.as_ref().map(|g| Image {
            names: Arc::from(vec![g.clone()]),
            values: vec![rec
                .after
                .as_ref()
                .and_then(|a| a.get(g))
                .cloned()
                .unwrap_or(ColumnValue::Null)],
        });
        let key = group
            .as_ref()
            .map(|g| serde_json::to_string(&g.values).unwrap_or_default())
            .unwrap_or_default();
        (group, key)
    }

    /// Whether `rec` was in a window delivered before a restart (its group's windows reached
    /// past it): it joins no window again. A backfill row at that very position may not have
    /// been (a chunk's rows share their watermark's position): it is taken.
    pub fn was_delivered(&self, rec: &ChangeRecord) -> bool {
        if self.delivered.is_empty() {
            return false;
        }
        let (_, key) = self.group_of(rec);
        self.delivered.get(&key).is_some_and(|last| {
            let at = rec.position();
            at < *last || (at == *last && rec.op != Op::Read)
        })
    }

    /// Rows waiting in open windows.
    pub fn open_rows(&self) -> usize {
        self.open.values().map(|o| o.members.len()).sum()
    }

    /// Takes `rec` (acknowledged by `seq`) with its rendered `section`; returns the windows
    /// that closed: those whose time ended at or before the row's commit time, one the row
    /// would push past `max_bytes`, and the row's own when it reaches `rows`.
    pub fn push(&mut self, rec: &ChangeRecord, seq: u64, section: String) -> Vec<Closed> {
        let mut closed = self.close_where(|o| o.end_ms.is_some_and(|e| rec.source.ts_ms >= e));
        let spec = self.spec.clone();
        let (group, gkey) = self.group_of(rec);
        let (section, cut) = crate::backend::truncate(&section, spec.max_bytes);
        let over = self.open.get(&gkey).is_some_and(|o| {
            !o.members.is_empty()
                && o.text.len() + spec.separator.len() + section.len() > spec.max_bytes
        });
        if over {
            closed.extend(self.open.remove(&gkey).and_then(|o| self.close(o)));
        }
        let o = self.open.entry(gkey.clone()).or_insert_with(|| Open {
            group,
            gkey: gkey.clone(),
            members: Vec::new(),
            text: String::new(),
            truncated: false,
            end_ms: spec
                .every_ms
                .map(|e| (rec.source.ts_ms / e + 1).saturating_mul(e)),
            source: rec.source.clone(),
            pipeline: rec.pipeline,
        });
        if !o.members.is_empty() {
            o.text.push_str(&spec.separator);
        }
        o.text.push_str(section);
        o.truncated |= cut;
        o.source = rec.source.clone();
        o.members.push(Member {
            seq,
            key: rec.key.clone(),
            position: rec.position(),
            ts_ms: rec.source.ts_ms,
        });
        let full = spec.rows.is_some_and(|n| o.members.len() >= n);
        if full {
            closed.extend(self.open.remove(&gkey).and_then(|o| self.close(o)));
        }
        closed
    }

    /// The windows whose time the stream has passed.
    pub fn due(&mut self, clock: ClockReading) -> Vec<Closed> {
        self.close_where(|o| o.end_ms.is_some_and(|e| clock.passed(e)))
    }

    /// Every open window, as it is (a reload retires the pipeline's stage).
    pub fn close_all(&mut self) -> Vec<Closed> {
        self.close_where(|_| true)
    }

    fn close_where(&mut self, due: impl Fn(&Open) -> bool) -> Vec<Closed> {
        let keys: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| due(o))
            .map(|(k, _)| k.clone())
            .collect();
        let taken: Vec<Open> = keys.iter().filter_map(|k| self.open.remove(k)).collect();
        let mut closed: Vec<Closed> = taken.into_iter().filter_map(|o| self.close(o)).collect();
        closed.sort_by_key(|c| c.seqs.first().copied());
        closed
    }

    /// The window's record and input (`None` only for a window without rows, which is never
    /// opened: a window is opened by its first row).
    fn close(&self, o: Open) -> Option<Closed> {
        let count = ColumnValue::Int(o.members.len() as i64);
        let rows = ColumnValue::Text(o.text);
        let group_value = o.group.as_ref().and_then(|g| g.values.first());
        let text = self.spec.prompt.render(|c| match c {
            ROWS => Some(&rows),
            COUNT => Some(&count),
            _ => group_value,
        });
        let (Some(first), Some(last)) = (o.members.first(), o.members.last()) else {
            return None;
        };
        let window = Window {
            id: window_id(&o.source.pipeline, first, last),
            group: o.group.clone(),
            rows: o.members.len(),
            first: first.position.clone(),
            last: last.position.clone(),
            first_ts_ms: first.ts_ms,
            last_ts_ms: last.ts_ms,
            keys: o.members.iter().map(|m| m.key.clone()).collect(),
        };
        Some(Closed {
            rec: ChangeRecord {
                op: Op::Window,
                before: None,
                after: None,
                source: o.source,
                enrichment: Enrichment::None,
                oversize: None,
                key_change: None,
                filter_change: None,
                truncate: None,
                window: Some(Box::new(window)),
                schema: None,
                key: o.group.unwrap_or_else(|| Image {
                    names: Arc::from(Vec::new()),
                    values: Vec::new(),
                }),
                pipeline: o.pipeline,
            },
            input: Input {
                text,
                language: String::new(),
            },
            truncated: o.truncated,
            seqs: o.members.iter().map(|m| m.seq).collect(),
            group: o.gkey,
        })
    }
}

/// 16 hex digits of the SHA-256 of the pipeline and the first and last rows' positions and
/// keys (backfill rows of one chunk share a position; their keys tell them apart).
fn window_id(pipeline: &str, first: &Member, last: &Member) -> String {
    let [(fp, fk), (lp, lk)] = [first, last].map(|m| {
        let p = &m.position;
        (
            format!("{}:{}:{}:{}", p.file, p.pos, p.event, p.row),
            serde_json::to_string(&m.key).unwrap_or_default(),
        )
    });
    crate::model::hash::short_hash(&[pipeline, &fp, &fk, &lp, &lk])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str, prompt: &str) -> Arc<WindowSpec> {
        let w: WindowConfig = serde_yaml_ng::from_str(yaml).unwrap();
        let prompt = Template::parse(prompt).unwrap();
        w.validate(&prompt, "prompt").unwrap();
        Arc::new(WindowSpec::new(&w, prompt).unwrap())
    }

    /// Row `id` of `channel`, committed at `ts_ms`, at binlog position 1000 + id.
    fn row(id: i64, channel: &str, body: &str, ts_ms: u64) -> ChangeRecord {
        let names: Arc<[String]> = Arc::from(vec!["id".into(), "channel".into(), "body".into()]);
        let after = Image {
            names,
            values: vec![
                ColumnValue::Int(id),
                ColumnValue::Text(channel.into()),
                ColumnValue::Text(body.into()),
            ],
        };
        ChangeRecord {
            op: Op::Insert,
            before: None,
            after: Some(after),
            source: SourceInfo {
                pipeline: Arc::from("digest"),
                server_id: 1,
                db: Arc::from("s"),
                table: Arc::from("m"),
                gtid: None,
                file: Arc::from("binlog.000001"),
                pos: 1000 + id as u64,
                event: 0,
                row: 0,
                ts_ms,
                origin: None,
            },
            enrichment: Enrichment::None,
            oversize: None,
            key_change: None,
            filter_change: None,
            truncate: None,
            window: None,
            schema: None,
            key: Image {
                names: Arc::from(vec!["id".to_string()]),
                values: vec![ColumnValue::Int(id)],
            },
            pipeline: 0,
        }
    }

    fn push(g: &mut Gatherer, r: &ChangeRecord, seq: u64) -> Vec<Closed> {
        let section = g.spec.section(r.after.as_ref().unwrap()).unwrap();
        g.push(r, seq, section)
    }

    #[test]
    fn a_count_window_renders_its_rows_into_one_prompt() {
        let s = spec(
            "rows: 3\nrow: \"- {body}\"\nseparator: \"\\n\"",
            "Digest of {count}:\n{rows}",
        );
        let mut g = Gatherer::new(s, BTreeMap::new());
        let rows: Vec<ChangeRecord> = (1..=4)
            .map(|i| row(i, "mail", &format!("b{i}"), 5_000))
            .collect();
        assert!(push(&mut g, &rows[0], 10).is_empty());
        assert!(push(&mut g, &rows[1], 11).is_empty());
        let closed = push(&mut g, &rows[2], 12);
        assert_eq!(closed.len(), 1);
        let c = &closed[0];
        assert_eq!(c.input.text, "Digest of 3:\n- b1\n- b2\n- b3");
        assert_eq!(c.seqs, vec![10, 11, 12]);
        let w = c.rec.window.as_ref().unwrap();
        assert_eq!((w.rows, w.first.pos, w.last.pos), (3, 1001, 1003));
        assert_eq!(w.keys.len(), 3);
        assert_eq!(c.rec.op, Op::Window);
        assert_eq!(c.rec.source.pos, 1003, "the last row's source");
        assert!(push(&mut g, &rows[3], 13).is_empty());
        assert_eq!(g.open_rows(), 1);
    }

    #[test]
    fn the_same_rows_make_the_same_window_id_and_others_another() {
        let s = spec("rows: 2\nrow: \"{body}\"", "{rows}");
        let ids = |a: i64, b: i64| {
            let mut g = Gatherer::new(s.clone(), BTreeMap::new());
            push(&mut g, &row(a, "x", "t", 1), 1);
            push(&mut g, &row(b, "x", "t", 1), 2)[0]
                .rec
                .window
                .as_ref()
                .unwrap()
                .id
                .clone()
        };
        assert_eq!(ids(1, 2), ids(1, 2));
        assert_eq!(ids(1, 2).len(), 16);
        assert_ne!(ids(1, 2), ids(1, 3));
    }

    #[test]
    fn groups_gather_apart_and_name_their_value() {
        let s = spec(
            "rows: 2\ngroup: channel\nrow: \"{body}\"",
            "[{channel}] {rows}",
        );
        let mut g = Gatherer::new(s, BTreeMap::new());
        assert!(push(&mut g, &row(1, "mail", "a", 1), 1).is_empty());
        assert!(push(&mut g, &row(2, "chat", "b", 1), 2).is_empty());
        let closed = push(&mut g, &row(3, "mail", "c", 1), 3);
        assert_eq!(closed[0].input.text, "[mail] a\nc");
        assert_eq!(closed[0].seqs, vec![1, 3]);
        assert_eq!(
            serde_json::to_string(&closed[0].rec.key).unwrap(),
            r#"{"channel":"mail"}"#
        );
        assert_eq!(g.open_rows(), 1);
    }

    #[test]
    fn a_time_window_closes_when_the_stream_passes_its_end() {
        let s = spec("every: 10s\nrow: \"{body}\"", "{rows}");
        let mut g = Gatherer::new(s, BTreeMap::new());
        assert!(push(&mut g, &row(1, "x", "a", 20_000), 1).is_empty());
        assert!(push(&mut g, &row(2, "x", "b", 29_000), 2).is_empty());
        // A later commit time, not yet at the end (30 s): nothing closes.
        assert!(g
            .due(ClockReading {
                ts_ms: 29_999,
                caught_up_ms: 30_999
            })
            .is_empty());
        // The reader at the end of the binlog a second after the end: it closes.
        let closed = g.due(ClockReading {
            ts_ms: 29_999,
            caught_up_ms: 31_000,
        });
        assert_eq!(closed[0].input.text, "a\nb");
        // A row at or past the end closes the window before it, and opens the next.
        assert!(push(&mut g, &row(3, "x", "c", 31_000), 3).is_empty());
        let closed = push(&mut g, &row(4, "x", "d", 40_000), 4);
        assert_eq!((closed[0].input.text.as_str(), g.open_rows()), ("c", 1));
    }

    #[test]
    fn the_byte_cap_closes_a_window_before_the_row_that_would_pass_it() {
        let s = spec("rows: 10\nmax_bytes: 7\nrow: \"{body}\"", "{rows}");
        let mut g = Gatherer::new(s, BTreeMap::new());
        assert!(push(&mut g, &row(1, "x", "abc", 1), 1).is_empty());
        let closed = push(&mut g, &row(2, "x", "defg", 1), 2);
        assert_eq!(
            (closed[0].input.text.as_str(), closed[0].truncated),
            ("abc", false)
        );
        // A row longer than the cap alone is cut, and its window marked.
        let closed = push(&mut g, &row(3, "x", "0123456789", 1), 3);
        assert_eq!(closed[0].input.text, "defg");
        let rest = g.close_all();
        assert_eq!(
            (rest[0].input.text.as_str(), rest[0].truncated),
            ("0123456", true)
        );
    }

    #[test]
    fn a_windowed_prompt_names_rows_and_nothing_of_a_row() {
        let w: WindowConfig = serde_yaml_ng::from_str("rows: 5\nrow: \"{body}\"").unwrap();
        let t = |s: &str| Template::parse(s).unwrap();
        assert!(w.validate(&t("{rows} {count}"), "p").is_ok());
        assert_eq!(
            w.validate(&t("{count}"), "p").unwrap_err(),
            "p must name `{rows}`: the window's rows go there"
        );
        assert!(w
            .validate(&t("{rows} {body}"), "p")
            .unwrap_err()
            .contains("names `{body}`"));
        let w: WindowConfig = serde_yaml_ng::from_str("row: \"{body}\"").unwrap();
        assert!(w.validate(&t("{rows}"), "p").is_err(), "rows or every");
        let w: WindowConfig = serde_yaml_ng::from_str("every: 500ms\nrow: \"{body}\"").unwrap();
        assert!(w
            .validate(&t("{rows}"), "p")
            .unwrap_err()
            .contains("under 1s"));
    }
}
