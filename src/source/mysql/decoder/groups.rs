//! Binlog groups (transactions) as they end: a group's events are held until its end is read,
//! then decoded (COMMIT, XID), dropped (ROLLBACK; rolled back to a savepoint), or kept until
//! its outcome arrives (XA PREPARE). See [`super::super::held`] for why every group is held.

use std::collections::HashMap;

use mysql_common::binlog::events::Event;

use super::super::event_type::EventType;
use super::super::held::Held;
use super::super::query::{maria_gtid_standalone, statement, Statement};
use super::super::xa::{OpenXa, XaOutcome, Xid};
use super::{At, Decoder, TableEntry};
use crate::model::BinlogPosition;
use crate::source::{DecodeError, SourceEvent};

/// The group being held.
pub(super) struct HeldGroup {
    events: Held,
    /// Where the next event starts (the end of the last one held), for error messages.
    next: u64,
    /// `SAVEPOINT name` marks: how many events were held then.
    savepoints: Vec<(String, usize)>,
    /// The group began with a MariaDB GTID without FL_STANDALONE: it ends at its XID or
    /// COMMIT, and a DDL statement in it (`CREATE [OR REPLACE] TABLE … SELECT`) is inside it.
    maria_transactional: bool,
    /// It holds a DDL statement (`CREATE … SELECT`, or the `DROP TABLE` a failed `CREATE OR
    /// REPLACE … SELECT` is logged as).
    ddl: bool,
}

/// Records decoded from a committed group per slice (the stream sends each slice before the
/// next is decoded, so a 1M-row group never sits in memory as records).
const RELEASE_SLICE: usize = 1024;

/// A committed group being decoded a slice at a time.
pub(super) struct Release {
    events: Box<dyn Iterator<Item = std::io::Result<Event>> + Send + Sync>,
    /// The group's last event (COMMIT, XID), decoded after the others.
    end: Event,
}

/// A committed XA transaction's prepared rows being decoded a slice at a time, at its commit's
/// position (a 1M-row XA transaction never sits in memory as records).
pub(super) struct XaRelease {
    events: Box<dyn Iterator<Item = std::io::Result<Event>> + Send + Sync>,
    /// The prepare group's own table maps (its table ids are its own), kept between slices.
    tables: HashMap<u64, (Vec<u8>, TableEntry)>,
    xid: Xid,
    /// The `XA COMMIT` that ended it: the transaction ends there once its rows are out.
    at: At,
}

/// A prepared XA transaction: its prepare group's events, replayed at `XA COMMIT`.
pub(super) struct PreparedXa {
    events: Held,
}

/// Counters of what the groups came to, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    /// Groups that ended in ROLLBACK (their rows dropped).
    pub rolled_back: u64,
    /// Groups large enough to be held in a spill file.
    pub spilled: u64,
    /// `ROLLBACK TO SAVEPOINT`s that dropped held rows.
    pub savepoint_rollbacks: u64,
}

/// How a held group ends, from its last event.
enum End {
    Commit,
    Rollback,
    XaPrepare,
}

fn event_type(ev: &Event) -> EventType {
    EventType::from_code(ev.header().event_type_raw())
}

fn query_text(ev: &Event) -> Option<String> {
    statement(ev).and_then(Result::ok).map(|s| s.sql)
}

/// The word after a statement's first word(s), unquoted (`SAVEPOINT \`a\`` → `a`), folded
/// as the server compares savepoint names: `utf8mb3_general_ci`, case- and accent-blind
/// (`É` finds `é`, `résumé` finds `resume`). The server logs both statements as the keyword
/// and the quoted name (`append_identifier`), so the quoting is the same on both sides.
fn savepoint_name(rest: &str) -> String {
    rest.trim()
        .trim_end_matches(';')
        .trim()
        .trim_matches('`')
        .chars()
        .flat_map(char::to_lowercase)
        // `İ` lowers to `i` and a combining dot: the marks weigh nothing.
        .filter(|c| !('\u{300}'..='\u{36f}').contains(c))
        .map(general_ci_base)
        .collect()
}

/// The letter `utf8mb3_general_ci` sorts a lowercase Latin letter with (its base letter
/// without accents; `ß` as `s`); other characters as they are.
fn general_ci_base(c: char) -> char {
    // Latin-1 Supplement and Latin Extended-A from U+00DF (`.`: a character that keeps its
    // own weight, or an uppercase letter, lowered before this is asked).
    const FROM_DF: &str = "saaaaaa.ceeeeiiii.nooooo..uuuuy.y.a.a.a.\
        c.c.c.c.d...e.e.e.e.e.g.g.g.g.h...i.i.i.i.....j.k..l.l.l.....n.n.n....o.o.o...r.r.r.s.s.s.s.t.t...u.u.u.u.u.u.w.y..z.z.z.";
    match c {
        'ı' => return 'i',
        'ſ' => return 's',
        _ => {}
    }
    let Some(i) = (c as usize).checked_sub(0xDF) else {
        return c;
    };
    match FROM_DF.as_bytes().get(i) {
        Some(b'.') | None => c,
        Some(&b) => b as char,
    }
}

impl Decoder {
    /// Handles one event; appends what it produced to `out`. Groups are held until their end
    /// is read: nothing of a group that ends in ROLLBACK reaches `out`.
    /// A committed group's records are produced a slice at a time: while [`Self::releasing`],
    /// call [`Self::release_more`] (each call appends up to about 1,024 records) before the next
    /// event; an event handed over meanwhile first releases the rest at once.
    pub fn handle(&mut self, ev: Event, out: &mut Vec<SourceEvent>) -> Result<(), DecodeError> {
        while self.releasing() {
            self.release_more(out)?;
        }
        if self.held.is_some() {
            return self.hold(ev, out);
        }
        if self.starts_group(&ev) {
            self.held = Some(HeldGroup {
                events: Held::new(self.hold_limit, &self.spill_dir),
                next: self.next_pos,
                savepoints: Vec::new(),
                maria_transactional: event_type(&ev) == EventType::MariaGtid,
                ddl: false,
            });
            return self.hold(ev, out);
        }
        self.process(&ev, out)
    }

    /// A GTID event (MariaDB's unless FL_STANDALONE), or `BEGIN` on servers without GTIDs.
    fn starts_group(&self, ev: &Event) -> bool {
        match event_type(ev) {
            EventType::MysqlGtid { .. } => true,
            EventType::MariaGtid => !maria_gtid_standalone(ev),
            EventType::Query | EventType::QueryCompressed => {
                self.txn.is_none()
                    && query_text(ev).is_some_and(|q| q.trim().eq_ignore_ascii_case("BEGIN"))
            }
            _ => false,
        }
    }

    fn hold(&mut self, ev: Event, out: &mut Vec<SourceEvent>) -> Result<(), DecodeError> {
        let end = match event_type(&ev) {
            EventType::Xid => Some(End::Commit),
            EventType::XaPrepare => Some(End::XaPrepare),
            // A heartbeat's position is the reader's, not the group's: not a progress here.
            EventType::Heartbeat => return Ok(()),
            EventType::Query | EventType::QueryCompressed => self.held_statement(&ev)?,
            _ => None,
        };
        let Some(end) = end else {
            return self.push_held(ev);
        };
        let Some(group) = self.held.take() else {
            return self.process(&ev, out);
        };
        if group.events.spilled() {
            self.stats.spilled += 1;
        }
        match end {
            End::Commit => {
                let events = group.events.into_events().map_err(|e| self.spill_err(e))?;
                self.release = Some(Release { events, end: ev });
                self.release_more(out)
            }
            End::Rollback => {
                self.stats.rolled_back += 1;
                tracing::debug!(position = %format!("{}:{}", self.file, self.next_pos),
                    events = group.events.len(),
                    "a group ending in ROLLBACK: its rows never happened and are not emitted");
                if group.ddl {
                    self.dropped_anyway(group, out)?;
                }
                self.process(&ev, out)
            }
            End::XaPrepare => self.prepared_xa(group, &ev, out),
        }
    }

    /// A group ending in ROLLBACK that holds DDL: a `DROP TABLE` in it happened all the same
    /// (a failed `CREATE OR REPLACE TABLE … SELECT` is logged as its generated `DROP TABLE IF
    /// EXISTS` in a group that ends in ROLLBACK: the old table is gone); its rows did not.
    fn dropped_anyway(
        &mut self,
        group: HeldGroup,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), DecodeError> {
        for e in group.events.into_events().map_err(|e| self.spill_err(e))? {
            let e = e.map_err(|e| self.spill_err(e))?;
            let drop = match statement(&e) {
                Some(Ok(s)) => super::super::ddl::parse(s.sql.trim(), &s.db, s.dialect)
                    .is_some_and(|d| {
                        matches!(d.kind, super::super::ddl::DdlKind::DropTable { .. })
                    }),
                _ => false,
            };
            if drop {
                self.process(&e, out)?;
            }
        }
        Ok(())
    }

    /// Whether a committed group still has records to release.
    pub fn releasing(&self) -> bool {
        self.release.is_some() || self.xa_release.is_some()
    }

    /// Decodes the next slice of the committed group being released (its end event last).
    pub fn release_more(&mut self, out: &mut Vec<SourceEvent>) -> Result<(), DecodeError> {
        if self.xa_release.is_some() {
            return self.release_xa_more(out);
        }
        let Some(mut r) = self.release.take() else {
            return Ok(());
        };
        let start = out.len();
        while out.len() - start < RELEASE_SLICE {
            match r.events.next() {
                Some(e) => {
                    let e = e.map_err(|e| self.spill_err(e))?;
                    self.process(&e, out)?;
                    // A DDL inside the group (`CREATE … SELECT`): the caller records the
                    // table's new definition before the rows that follow are decoded.
                    if matches!(out.last(), Some(SourceEvent::Ddl { .. })) {
                        break;
                    }
                }
                None => return self.process(&r.end, out),
            }
        }
        self.release = Some(r);
        Ok(())
    }

    fn push_held(&mut self, ev: Event) -> Result<(), DecodeError> {
        let end = ev.header().log_pos() as u64;
        let r = match self.held.as_mut() {
            Some(g) => {
                if end != 0 {
                    g.next = end;
                }
                g.events.push(ev)
            }
            None => Ok(()),
        };
        r.map_err(|e| self.spill_err(e))
    }

    fn spill_err(&self, e: std::io::Error) -> DecodeError {
        DecodeError::Event {
            file: self.file.to_string(),
            pos: self.next_pos,
            event_type: 0,
            reason: format!(
                "holding a large transaction in a spill file in {}: {e}; free space there or set source.spill_dir",
                self.spill_dir.display()
            ),
        }
    }

    /// A statement inside a held group: whether it ends the group (savepoints are applied
    /// here; the statement itself is held or dropped accordingly).
    fn held_statement(&mut self, ev: &Event) -> Result<Option<End>, DecodeError> {
        let code = ev.header().event_type_raw();
        let at = self.held.as_ref().map_or(self.next_pos, |g| g.next);
        let Some(s) = statement(ev) else {
            return Ok(None);
        };
        let Statement {
            sql: q, dialect, ..
        } = s.map_err(|r| self.err(code, at, r))?;
        let t = q.trim();
        // Comments and a `SET STATEMENT … FOR` prefix skipped: a change logged as a statement
        // with either is still inside the transaction.
        let head = super::super::ddl::head(t, dialect);
        let word = |w: &str| head.starts_with(w);
        if head == "ROLLBACK" {
            return Ok(Some(End::Rollback));
        }
        // The server writes these two itself: the keyword, then the quoted name.
        let upper = match word("ROLLBACK TO") || word("SAVEPOINT") {
            true => t.to_ascii_uppercase(),
            false => String::new(),
        };
        if let Some(rest) = upper.strip_prefix("ROLLBACK TO ") {
            let rest = rest.trim_start().strip_prefix("SAVEPOINT ").unwrap_or(rest);
            let name = savepoint_name(rest);
            if let Some(g) = self.held.as_mut() {
                if let Some(i) = g.savepoints.iter().rposition(|(n, _)| *n == name) {
                    let keep = g.savepoints[i].1;
                    g.savepoints.truncate(i + 1);
                    g.events.truncate(keep).map_err(|e| self.spill_err(e))?;
                    self.stats.savepoint_rollbacks += 1;
                } else {
                    // The server found it (it logged the rollback): a name folded otherwise.
                    tracing::error!(position = %format!("{}:{at}", self.file), statement = %t,
                        "ROLLBACK TO a savepoint this group does not hold: the rows it undid \
                         cannot be told and are emitted; please report this statement");
                }
            }
            return Ok(None);
        }
        if let Some(rest) = upper.strip_prefix("SAVEPOINT ") {
            if let Some(g) = self.held.as_mut() {
                g.savepoints.push((savepoint_name(rest), g.events.len()));
            }
            return Ok(None);
        }
        if word("COMMIT") || super::super::xa::outcome(t).is_some() {
            return Ok(Some(End::Commit));
        }
        // A session's temporary tables, made or dropped inside its transaction (logged by a
        // STATEMENT or MIXED session): the transaction goes on.
        let temporary = super::super::ddl::temporary(t, "", dialect).is_some();
        if word("BEGIN")
            || word("XA ")
            || word("RELEASE SAVEPOINT")
            || temporary
            || super::is_statement_dml(&head)
        {
            return Ok(None);
        }
        // `CREATE … SELECT` logs its rows after the statement, in the same group.
        let transactional = self.held.as_ref().is_some_and(|g| g.maria_transactional);
        if super::super::ddl::ddl_inside_group(transactional, t) {
            if let Some(g) = self.held.as_mut() {
                g.ddl = true;
            }
            return Ok(None);
        }
        // DDL after a GTID (MySQL logs DDL as GTID + statement): the group is that statement.
        Ok(Some(End::Commit))
    }

    /// The end of an XA transaction's prepare group: its events are kept for its outcome.
    fn prepared_xa(
        &mut self,
        group: HeldGroup,
        ev: &Event,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), DecodeError> {
        let at_start = self.next_pos;
        let xid = Xid::from_prepare_event(ev.data()).map_err(|r| self.err(38, at_start, r))?;
        let open = OpenXa {
            xid: xid.clone(),
            position: BinlogPosition::new(self.file.clone(), at_start),
            ts_ms: ev.header().timestamp() as u64 * 1000,
        };
        tracing::debug!(xid = %xid.describe(), position = %open.position,
            "XA transaction prepared: its rows wait for its XA COMMIT");
        out.push(SourceEvent::XaPrepared(open));
        self.prepared.insert(
            xid,
            PreparedXa {
                events: group.events,
            },
        );
        self.process(ev, out)
    }

    /// `XA COMMIT`: the prepared rows are decoded now, at the commit group's position (so they
    /// come in commit order); `XA ROLLBACK`: they are dropped. Either way the XA is done.
    /// An error reading the prepared rows back stops the stream (they are read again from the
    /// binlog after a restart), never drops them.
    pub(super) fn on_xa_outcome(
        &mut self,
        o: XaOutcome,
        at: &At,
        out: &mut Vec<SourceEvent>,
    ) -> Result<(), DecodeError> {
        let (xid, commit) = match o {
            XaOutcome::Commit(x) => (x, true),
            XaOutcome::Rollback(x) => (x, false),
        };
        match (self.prepared.remove(&xid), commit) {
            // Its end (XaEnded, the transaction's end) follows its last slice.
            (Some(p), true) => return self.replay_prepared(p, xid, at),
            (Some(_), false) => {
                tracing::debug!(xid = %xid.describe(), "XA transaction rolled back: its rows are dropped");
            }
            (None, true) => {
                tracing::warn!(xid = %xid.describe(), position = %format!("{}:{}", self.file, at.start),
                    "XA COMMIT of a transaction whose XA PREPARE the stream did not read (it was prepared \
                     before the stream's start): its rows are not emitted");
            }
            (None, false) => {}
        }
        out.push(SourceEvent::XaEnded(xid));
        self.end_txn(out, at);
        Ok(())
    }

    /// Starts the release of a committed XA transaction's prepared rows: decoded a slice at a
    /// time by [`Self::release_more`], at the commit group's position.
    fn replay_prepared(&mut self, p: PreparedXa, xid: Xid, at: &At) -> Result<(), DecodeError> {
        if self.txn.is_none() {
            self.begin(None, at.ts_ms, false, at.start);
        }
        let events = p.events.into_events().map_err(|e| self.spill_err(e))?;
        self.xa_release = Some(XaRelease {
            events,
            tables: HashMap::new(),
            xid,
            at: *at,
        });
        Ok(())
    }

    /// Decodes the next slice of the XA transaction being released; after its last, the
    /// transaction ends at its `XA COMMIT`.
    fn release_xa_more(&mut self, out: &mut Vec<SourceEvent>) -> Result<(), DecodeError> {
        let Some(mut r) = self.xa_release.take() else {
            return Ok(());
        };
        // The prepare group's table ids are its own: decode it with its own table maps.
        let outer = std::mem::replace(&mut self.tables, std::mem::take(&mut r.tables));
        self.replaying = true;
        let (start, mut done, mut result) = (out.len(), false, Ok(()));
        while out.len() - start < RELEASE_SLICE {
            let e = match r.events.next() {
                None => {
                    done = true;
                    break;
                }
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    result = Err(self.spill_err(e));
                    break;
                }
            };
            // The group's own GTID, BEGIN / XA START / XA END: the commit group is the txn.
            if matches!(
                event_type(&e),
                EventType::Query
                    | EventType::QueryCompressed
                    | EventType::MysqlGtid { .. }
                    | EventType::MariaGtid
            ) {
                continue;
            }
            if let Err(e) = self.process(&e, out) {
                result = Err(e);
                break;
            }
        }
        self.replaying = false;
        r.tables = std::mem::replace(&mut self.tables, outer);
        result?;
        if !done {
            self.xa_release = Some(r);
            return Ok(());
        }
        out.push(SourceEvent::XaEnded(r.xid));
        self.end_txn(out, &r.at);
        Ok(())
    }

    /// A prepared XA transaction read again after a restart (its outcome not yet read).
    /// Its savepoints are applied as when it was read live (a `ROLLBACK TO` drops the rows
    /// after its savepoint).
    pub fn restore_xa(&mut self, open: OpenXa, events: Vec<Event>) -> Result<(), DecodeError> {
        let outer = self.held.replace(HeldGroup {
            events: Held::new(self.hold_limit, &self.spill_dir),
            next: open.position.pos,
            savepoints: Vec::new(),
            maria_transactional: true,
            ddl: false,
        });
        let mut r = Ok(());
        for e in events {
            let step = match event_type(&e) {
                EventType::Query | EventType::QueryCompressed => self.held_statement(&e).map(drop),
                _ => Ok(()),
            };
            r = step.and_then(|()| self.push_held(e));
            if r.is_err() {
                break;
            }
        }
        let group = std::mem::replace(&mut self.held, outer);
        r?;
        if let Some(g) = group {
            self.prepared
                .insert(open.xid.clone(), PreparedXa { events: g.events });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::savepoint_name;

    #[test]
    fn savepoint_names_fold_as_the_server_compares_them() {
        let same = [
            ("`é`", "`É`"),
            ("`resume`", "`résumé`"),
            ("`Straße`", "`STRASE`"),
            ("`İi`", "`ii`"),
            ("`ıſ`", "`is`"),
            ("`Ǆ`", "`ǆ`"),
        ];
        for (a, b) in same {
            assert_eq!(savepoint_name(a), savepoint_name(b), "{a} {b}");
        }
        assert_ne!(savepoint_name("`a`"), savepoint_name("`b`"));
        assert_ne!(savepoint_name("`ø`"), savepoint_name("`o`"));
    }
}
