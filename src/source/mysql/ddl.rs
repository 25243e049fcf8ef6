//! What a statement logged as text does to tables: enough of MySQL's and MariaDB's DDL grammar
//! to name the tables a statement creates, alters, renames, drops or truncates, and the
//! statements that remove rows with no rows event (`TRUNCATE`, `CREATE OR REPLACE TABLE`, and
//! `ALTER TABLE`'s `TRUNCATE`, `DROP`, `CONVERT … TO TABLE` and `EXCHANGE` of partitions).
//! Statements it does not know change no table it can name; they are left to the caller's log.
//!
//! Grammar: <https://mariadb.com/kb/en/data-definition/>, MySQL's `sql_yacc.yy`.

use super::query::Dialect;

/// A table a statement names: (database, table), the database from the statement's default
/// when it is not qualified.
pub type TableName = (String, String);

/// What a statement does to the tables it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdlKind {
    CreateTable,
    AlterTable,
    /// `DROP TABLE [IF EXISTS] a, b`; without `IF EXISTS` every table named was there.
    DropTable {
        if_exists: bool,
    },
    /// `RENAME TABLE a TO b` (and `ALTER TABLE a RENAME TO b`): old and new names.
    RenameTable,
    /// `TRUNCATE TABLE t`: every row is gone, no rows event says so.
    Truncate,
    /// `CREATE OR REPLACE TABLE t`: a new definition, and the old table's rows are gone with
    /// no rows event.
    ReplaceTable,
    /// The rows of these partitions are gone with no rows event: `ALTER TABLE t TRUNCATE
    /// PARTITION p, q` (`ALL` is [`DdlKind::Truncate`]), `DROP PARTITION p, q`, `CONVERT
    /// PARTITION p TO TABLE x`.
    TruncatePartitions(Vec<String>),
    /// `ALTER TABLE t EXCHANGE PARTITION p WITH TABLE s` (tables `[t, s]`): the partition's
    /// rows and the other table's swap places with no rows event.
    ExchangePartition(String),
    /// `CREATE INDEX … ON t`, `DROP INDEX … ON t` (a long UNIQUE index adds a hidden column).
    Index,
    /// `DROP DATABASE d` / `DROP SCHEMA d`: every table of `d` is gone (no table named).
    DropDatabase(String),
    /// `ALTER TABLE t CONVERT TABLE x TO PARTITION p …` (tables `[t, x]`, MariaDB 10.7+): `x`
    /// becomes a partition of `t`, its rows moving with no rows event.
    TableToPartition,
}

/// A statement's effect on tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ddl {
    pub kind: DdlKind,
    pub tables: Vec<TableName>,
}

impl Ddl {
    /// Whether the statement, logged as using temporary tables, may have been about a temporary
    /// table that shadows its name: a TRUNCATE, ALTER, index or rename names one table and
    /// touches no other (a CREATE … SELECT or CREATE OR REPLACE may read a temporary table and
    /// still make a real one; a DROP of a temporary table is logged as `DROP TEMPORARY`). The
    /// caller also asks whether the session made a temporary table of that name: the flag can
    /// stay set over a stored procedure's later statements.
    pub fn temporary_only(&self) -> bool {
        matches!(
            self.kind,
            DdlKind::Truncate
                | DdlKind::TruncatePartitions(_)
                | DdlKind::AlterTable
                | DdlKind::Index
                | DdlKind::RenameTable
        )
    }

    /// Whether the statement may change the columns of `t`.
    pub fn changes_columns_of(&self, t: &TableName) -> bool {
        if let DdlKind::DropDatabase(db) = &self.kind {
            return t.0 == *db;
        }
        !matches!(
            self.kind,
            DdlKind::Truncate | DdlKind::TruncatePartitions(_) | DdlKind::ExchangePartition(_)
        ) && self.tables.contains(t)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word (upper-cased for keywords is left to the parser) or a quoted identifier.
    Word(String, bool),
    Dot,
    Comma,
    Open,
    Close,
    Other,
}

/// Splits SQL into tokens, lazily: comments dropped (MariaDB/MySQL executable comments
/// `/*! … */` kept as code), strings and other symbols as `Other`, read in `dialect`.
struct Lexer<'a> {
    sql: &'a str,
    i: usize,
    dialect: Dialect,
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str, dialect: Dialect) -> Self {
        Lexer { sql, i: 0, dialect }
    }

    /// Skips a comment or a run of whitespace at `i`; `false` if there is none.
    fn skip_comment(&mut self) -> bool {
        let b = self.sql.as_bytes();
        let i = self.i;
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' => self.i += 1,
            b'#' => self.i = skip_line(b, i),
            b'-' if b.get(i + 1) == Some(&b'-')
                && b.get(i + 2).is_none_or(|c| c.is_ascii_whitespace()) =>
            {
                self.i = skip_line(b, i)
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                if b.get(i + 2) == Some(&b'!') || b[i + 2..].starts_with(b"M!") {
                    // Executable comment: skip the marker and version digits, keep the code.
                    self.i += if b.get(i + 2) == Some(&b'!') { 3 } else { 4 };
                    while b.get(self.i).is_some_and(u8::is_ascii_digit) {
                        self.i += 1;
                    }
                } else {
                    self.i = self.sql[i + 2..]
                        .find("*/")
                        .map_or(b.len(), |e| i + 2 + e + 2);
                }
            }
            b'*' if b.get(i + 1) == Some(&b'/') => self.i += 2,
            _ => return false,
        }
        true
    }
}

impl Iterator for Lexer<'_> {
    type Item = Tok;

    fn next(&mut self) -> Option<Tok> {
        let b = self.sql.as_bytes();
        while self.i < b.len() && self.skip_comment() {}
        let i = self.i;
        let c = *b.get(i)?;
        let (tok, n) = match c {
            b'`' => {
                let (w, n) = quoted(&self.sql[i..], '`', false);
                (Tok::Word(w, true), n)
            }
            b'"' if self.dialect.ansi_quotes => {
                let (w, n) = quoted(&self.sql[i..], '"', false);
                (Tok::Word(w, true), n)
            }
            b'\'' | b'"' => {
                let escapes = !self.dialect.no_backslash_escapes;
                (Tok::Other, quoted(&self.sql[i..], c as char, escapes).1)
            }
            b'.' => (Tok::Dot, 1),
            b',' => (Tok::Comma, 1),
            b'(' => (Tok::Open, 1),
            b')' => (Tok::Close, 1),
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80 => {
                let n = b[i..]
                    .iter()
                    .position(|c| {
                        !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$' || *c >= 0x80)
                    })
                    .unwrap_or(b.len() - i);
                (Tok::Word(self.sql[i..i + n].to_string(), false), n)
            }
            _ => (Tok::Other, 1),
        };
        self.i += n;
        Some(tok)
    }
}

/// The tokens after a `SET STATEMENT var = value, … FOR` prefix (MariaDB, logged as written;
/// its `FOR` is the first at parenthesis depth 0: `SUBSTRING(x FROM 1 FOR 5)` is a value), or
/// all of them. A prefix without its `FOR` leaves none.
fn after_set_statement(mut toks: impl Iterator<Item = Tok>) -> impl Iterator<Item = Tok> {
    let first: Vec<Tok> = toks.by_ref().take(2).collect();
    let word = |t: &Tok, k: &str| matches!(t, Tok::Word(w, false) if w.eq_ignore_ascii_case(k));
    let prefix = matches!(first.as_slice(), [a, b] if word(a, "SET") && word(b, "STATEMENT"));
    let kept = match prefix {
        true => {
            let mut depth = 0i64;
            for t in toks.by_ref() {
                match t {
                    Tok::Open => depth += 1,
                    Tok::Close => depth -= 1,
                    ref w if depth == 0 && word(w, "FOR") => break,
                    _ => {}
                }
            }
            Vec::new()
        }
        false => first,
    };
    kept.into_iter().chain(toks)
}

fn skip_line(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i] != b'\n' {
        i += 1;
    }
    i
}

/// A quoted run starting at `s[0]`: its content (doubled quotes unescaped; with `backslash`, a
/// backslash escapes the next character) and byte length.
fn quoted(s: &str, q: char, backslash: bool) -> (String, usize) {
    let mut out = String::new();
    let mut it = s.char_indices().skip(1).peekable();
    while let Some((i, c)) = it.next() {
        if c == q {
            if it.peek().is_some_and(|(_, n)| *n == q) {
                it.next();
                out.push(q);
                continue;
            }
            return (out, i + c.len_utf8());
        }
        if c == '\\' && backslash {
            if let Some((_, n)) = it.next() {
                out.push(n);
            }
            continue;
        }
        out.push(c);
    }
    (out, s.len())
}

struct Parser<'a> {
    toks: Vec<Tok>,
    i: usize,
    default_db: &'a str,
}

impl<'a> Parser<'a> {
    /// A parser at the statement's first word: comments and a `SET STATEMENT var = value, …
    /// FOR` prefix skipped.
    fn new(sql: &str, default_db: &'a str, dialect: Dialect) -> Self {
        Parser {
            toks: after_set_statement(Lexer::new(sql, dialect)).collect(),
            i: 0,
            default_db,
        }
    }
}

/// The first words of a statement as logged (at most three, upper-cased, one space apart),
/// after comments and a `SET STATEMENT … FOR` prefix: what decides whether it is a
/// transaction's `BEGIN`/`COMMIT`, a change logged as a statement, or DDL. Reads no further
/// into the statement than those words.
pub fn head(sql: &str, dialect: Dialect) -> String {
    let words: Vec<String> = after_set_statement(Lexer::new(sql, dialect))
        .map_while(|t| match t {
            Tok::Word(w, false) => Some(w.to_ascii_uppercase()),
            _ => None,
        })
        .take(3)
        .collect();
    words.join(" ")
}

impl Parser<'_> {
    fn kw(&self, k: &str) -> bool {
        matches!(self.toks.get(self.i), Some(Tok::Word(w, false)) if w.eq_ignore_ascii_case(k))
    }

    fn eat(&mut self, k: &str) -> bool {
        let yes = self.kw(k);
        if yes {
            self.i += 1;
        }
        yes
    }

    fn eat_all(&mut self, ks: &[&str]) -> bool {
        let save = self.i;
        if ks.iter().all(|k| self.eat(k)) {
            return true;
        }
        self.i = save;
        false
    }

    fn word(&mut self) -> Option<String> {
        match self.toks.get(self.i) {
            Some(Tok::Word(w, _)) => {
                self.i += 1;
                Some(w.clone())
            }
            _ => None,
        }
    }

    /// `[db.]table`
    fn table(&mut self) -> Option<TableName> {
        let first = self.word()?;
        if self.toks.get(self.i) == Some(&Tok::Dot) {
            self.i += 1;
            let t = self.word()?;
            return Some((first, t));
        }
        Some((self.default_db.to_string(), first))
    }

    /// `item, item, …`: as many as `item` reads, separated by commas.
    fn comma_list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Vec<T> {
        let mut v = Vec::new();
        while let Some(t) = item(self) {
            v.push(t);
            if self.toks.get(self.i) != Some(&Tok::Comma) {
                break;
            }
            self.i += 1;
        }
        v
    }

    /// MariaDB's lock wait option after a table's name (`WAIT n`, `NOWAIT`), if there.
    fn lock_wait(&mut self) {
        if self.eat("WAIT") {
            self.word();
        } else {
            self.eat("NOWAIT");
        }
    }

    fn table_list(&mut self) -> Vec<TableName> {
        self.comma_list(Self::table)
    }

    fn skip_until(&mut self, k: &str) -> bool {
        while self.i < self.toks.len() {
            if self.eat(k) {
                return true;
            }
            self.i += 1;
        }
        false
    }
}

/// A session's temporary tables made or dropped by a statement (logged only by sessions whose
/// `binlog_format` is STATEMENT or MIXED).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Temporary {
    /// `CREATE [OR REPLACE] TEMPORARY TABLE [IF NOT EXISTS] t …`
    Created(TableName),
    /// `DROP TEMPORARY TABLE [IF EXISTS] a, b` (also `DROP /*!40005 TEMPORARY */ TABLE`, as the
    /// server logs a disconnected session's tables).
    Dropped(Vec<TableName>),
}

/// The sessions' temporary tables, by session (the query event's thread id): whether a
/// statement flagged as using temporary tables was about one that shadows a real table's name.
/// Kept by the decoder and by the scan of the backlog for DDL alike.
#[derive(Debug, Default, Clone)]
pub struct Temporaries(std::collections::HashSet<(u32, TableName)>);

impl Temporaries {
    /// Notes the temporary tables `sql` (run by session `thread`, default database `db`, in
    /// `dialect`) makes, drops or renames; `true` when it is such a statement.
    pub fn track(&mut self, sql: &str, db: &str, dialect: Dialect, thread: u32) -> bool {
        match temporary(sql, db, dialect) {
            Some(Temporary::Created(t)) => {
                // Sessions drop theirs when they end (the server logs it); bounded anyway.
                if self.0.len() >= 100_000 {
                    self.0.clear();
                }
                self.0.insert((thread, t));
                true
            }
            Some(Temporary::Dropped(ts)) => {
                for t in ts {
                    self.0.remove(&(thread, t));
                }
                true
            }
            // A rename is not always flagged as using temporary tables (`ALTER TABLE tmp RENAME
            // TO t` is not): the session's own temporary names decide.
            None => self.renamed(sql, db, dialect, thread),
        }
    }

    /// `RENAME TABLE a TO b` or `ALTER TABLE a RENAME TO b` of the session's temporary tables:
    /// each keeps being the session's under its new name (a temporary table renamed onto a real
    /// table's name shadows it as one created so). `true` when every table renamed was one of
    /// them (the statement touched no real table).
    fn renamed(&mut self, sql: &str, db: &str, dialect: Dialect, thread: u32) -> bool {
        let Some(d) = parse(sql, db, dialect).filter(|d| d.kind == DdlKind::RenameTable) else {
            return false;
        };
        let mut all = d.tables.len() >= 2;
        for pair in d.tables.chunks(2) {
            match pair {
                [from, to] if self.0.remove(&(thread, from.clone())) => {
                    self.0.insert((thread, to.clone()));
                }
                _ => all = false,
            }
        }
        all
    }

    /// Whether `d`, run by session `thread` and flagged by the server as using temporary tables
    /// (`thread_specific`, `LOG_EVENT_THREAD_SPECIFIC_F`), was about temporary tables only: the
    /// session made one of each name it touches (see [`Ddl::temporary_only`]).
    pub fn shadows(&self, d: &Ddl, thread_specific: bool, thread: u32) -> bool {
        thread_specific
            && d.temporary_only()
            && d.tables
                .iter()
                .all(|t| self.0.contains(&(thread, t.clone())))
    }
}

/// The temporary tables `sql` makes or drops; `None` for any other statement.
pub fn temporary(sql: &str, default_db: &str, dialect: Dialect) -> Option<Temporary> {
    let mut p = Parser::new(sql, default_db, dialect);
    if p.eat("CREATE") {
        p.eat_all(&["OR", "REPLACE"]);
        if p.eat("TEMPORARY") && p.eat("TABLE") {
            p.eat_all(&["IF", "NOT", "EXISTS"]);
            return p.table().map(Temporary::Created);
        }
        return None;
    }
    if p.eat("DROP") && p.eat("TEMPORARY") && (p.eat("TABLE") || p.eat("TABLES")) {
        p.eat_all(&["IF", "EXISTS"]);
        return Some(Temporary::Dropped(p.table_list()));
    }
    None
}

/// What `sql` (run with default database `default_db`) does to tables; `None` for anything
/// that is not a table DDL statement this grammar knows.
pub fn parse(sql: &str, default_db: &str, dialect: Dialect) -> Option<Ddl> {
    let mut p = Parser::new(sql, default_db, dialect);
    let ddl = |kind, tables| Some(Ddl { kind, tables });
    if p.eat("CREATE") {
        let replace = p.eat_all(&["OR", "REPLACE"]);
        if p.eat("TEMPORARY") {
            return None;
        }
        // A sequence is a table of one row (MariaDB 10.3+): `CREATE OR REPLACE SEQUENCE s`
        // replaces a table named `s` as `CREATE OR REPLACE TABLE` does, its rows gone.
        if p.eat("TABLE") || p.eat("SEQUENCE") {
            p.eat_all(&["IF", "NOT", "EXISTS"]);
            let kind = match replace {
                true => DdlKind::ReplaceTable,
                false => DdlKind::CreateTable,
            };
            return ddl(kind, vec![p.table()?]);
        }
        // `CREATE [ONLINE|OFFLINE] [UNIQUE|FULLTEXT|SPATIAL] INDEX … ON t`, and nothing else: a
        // routine's, trigger's or event's body may hold `… INDEX … ON t` too.
        let _ = p.eat("ONLINE") || p.eat("OFFLINE");
        let _ = p.eat("UNIQUE") || p.eat("FULLTEXT") || p.eat("SPATIAL");
        if p.eat("INDEX") && p.skip_until("ON") {
            return ddl(DdlKind::Index, vec![p.table()?]);
        }
        return None;
    }
    if p.eat("ALTER") {
        p.eat("ONLINE");
        p.eat("IGNORE");
        if p.eat("SEQUENCE") {
            p.eat_all(&["IF", "EXISTS"]);
            return ddl(DdlKind::AlterTable, vec![p.table()?]);
        }
        if !p.eat("TABLE") {
            return None;
        }
        p.eat_all(&["IF", "EXISTS"]);
        let t = p.table()?;
        return Some(alter_table(&mut p, t));
    }
    if p.eat("DROP") {
        if p.eat("TEMPORARY") {
            return None;
        }
        // `DROP SEQUENCE` drops sequences only (a table of that name stays, with a note), so
        // it is never a truncate; a table made later under the name has its own CREATE.
        if p.eat("SEQUENCE") {
            return None;
        }
        if p.eat("TABLE") || p.eat("TABLES") {
            let if_exists = p.eat_all(&["IF", "EXISTS"]);
            return ddl(DdlKind::DropTable { if_exists }, p.table_list());
        }
        if p.eat("DATABASE") || p.eat("SCHEMA") {
            p.eat_all(&["IF", "EXISTS"]);
            return ddl(DdlKind::DropDatabase(p.word()?), Vec::new());
        }
        if p.eat("INDEX") && p.skip_until("ON") {
            return ddl(DdlKind::Index, vec![p.table()?]);
        }
        return None;
    }
    // `RENAME TABLE [IF EXISTS] a [WAIT n | NOWAIT] TO b [, c [WAIT n | NOWAIT] TO d] …`
    if p.eat("RENAME") && (p.eat("TABLE") || p.eat("TABLES")) {
        p.eat_all(&["IF", "EXISTS"]);
        let mut tables = Vec::new();
        while let Some(a) = p.table() {
            p.lock_wait();
            if !p.eat("TO") {
                break;
            }
            tables.push(a);
            tables.extend(p.table());
            if p.toks.get(p.i) != Some(&Tok::Comma) {
                break;
            }
            p.i += 1;
        }
        return ddl(DdlKind::RenameTable, tables);
    }
    if p.eat("TRUNCATE") {
        p.eat("TABLE");
        return ddl(DdlKind::Truncate, vec![p.table()?]);
    }
    None
}

/// After `ALTER TABLE t`: partitions whose rows go (truncated, dropped, converted to a table,
/// exchanged), a rename, or another change.
fn alter_table(p: &mut Parser<'_>, t: TableName) -> Ddl {
    let start = p.i;
    if let Some(kind) = partition_rows_gone(p) {
        let mut tables = vec![t];
        match kind {
            DdlKind::ExchangePartition(_) => {
                p.eat("WITH");
                p.eat("TABLE");
                tables.extend(p.table());
            }
            DdlKind::TableToPartition => tables.extend(p.table()),
            _ => {}
        }
        return Ddl { kind, tables };
    }
    p.i = start;
    if p.skip_until("RENAME") && !p.kw("COLUMN") && !p.kw("INDEX") && !p.kw("KEY") {
        p.eat("TO");
        p.eat("AS");
        if let Some(new) = p.table() {
            return Ddl {
                kind: DdlKind::RenameTable,
                tables: vec![t, new],
            };
        }
    }
    Ddl {
        kind: DdlKind::AlterTable,
        tables: vec![t],
    }
}

/// `TRUNCATE PARTITION p, q | ALL`, `DROP PARTITION p, q`, `CONVERT PARTITION p TO TABLE x`
/// or `EXCHANGE PARTITION p` anywhere after `ALTER TABLE t` (left after the partition names).
fn partition_rows_gone(p: &mut Parser<'_>) -> Option<DdlKind> {
    // MariaDB's lock wait options come before the specifications.
    p.lock_wait();
    let start = p.i;
    while p.i < p.toks.len() {
        // An alter specification starts after the table's name or after a comma.
        let spec_start = p.i == start || p.toks.get(p.i - 1) == Some(&Tok::Comma);
        if spec_start && p.eat_all(&["CONVERT", "TABLE"]) {
            return Some(DdlKind::TableToPartition);
        }
        for verb in ["TRUNCATE", "DROP", "CONVERT", "EXCHANGE"] {
            if !spec_start || !p.eat_all(&[verb, "PARTITION"]) {
                continue;
            }
            if verb == "TRUNCATE" && p.eat("ALL") {
                return Some(DdlKind::Truncate);
            }
            if verb == "DROP" {
                p.eat_all(&["IF", "EXISTS"]);
            }
            let parts = p.comma_list(Parser::word);
            return Some(match verb {
                "EXCHANGE" => DdlKind::ExchangePartition(parts.into_iter().next()?),
                _ => DdlKind::TruncatePartitions(parts),
            });
        }
        p.i += 1;
    }
    None
}

/// Whether a DDL statement inside a transaction's group is part of it rather than its end:
/// MariaDB logs `CREATE [OR REPLACE] TABLE … SELECT` in a group with a GTID without
/// FL_STANDALONE (`maria_transactional`), then its rows, then XID or COMMIT; MySQL 8.0.21+
/// logs it as `CREATE TABLE … START TRANSACTION`, then its rows, then XID
/// (<https://dev.mysql.com/worklog/task/?id=13355>). Any other DDL is its own group.
pub fn ddl_inside_group(maria_transactional: bool, statement: &str) -> bool {
    let t = statement.trim_end().trim_end_matches(';').trim_end();
    maria_transactional
        || t.len() >= 17
            && t.is_char_boundary(t.len() - 17)
            && t[t.len() - 17..].eq_ignore_ascii_case("START TRANSACTION")
}

/// Follows positions through a pass over the binlog and finds the DDL statements in it
/// (used to learn where each table's definition changed before the stream reads there).
pub struct Scan {
    file: std::sync::Arc<str>,
    pos: u64,
    /// Statements on a session's temporary table that shadows a read table are not DDL on it.
    temporaries: Temporaries,
    /// The transaction in progress: where its GTID event starts, and whether it is a MariaDB
    /// one without FL_STANDALONE (see [`ddl_inside_group`]).
    group: Option<(u64, bool)>,
}

impl Scan {
    /// A scan from the start of `file`, knowing the sessions' temporary tables `temporaries`
    /// (the stream's, where it has read up to the scan's start).
    pub fn new(file: std::sync::Arc<str>, temporaries: Temporaries) -> Self {
        Scan {
            file,
            pos: 4,
            temporaries,
            group: None,
        }
    }

    /// The end of the last event seen.
    pub fn position(&self) -> crate::model::BinlogPosition {
        crate::model::BinlogPosition::new(self.file.clone(), self.pos)
    }

    /// The tables a statement event changes the columns of, with the event's end position.
    pub fn event(
        &mut self,
        ev: &mysql_common::binlog::events::Event,
    ) -> Vec<(TableName, crate::model::BinlogPosition)> {
        use mysql_common::binlog::events::RotateEvent;
        let h = ev.header();
        let code = h.event_type_raw();
        if super::event_type::EventType::from_code(code) == super::event_type::EventType::Rotate {
            if let Ok(r) = ev.read_event::<RotateEvent<'_>>() {
                let name = String::from_utf8_lossy(r.name_raw()).into_owned();
                // A fake rotate may carry the checksum in its name: only a real one moves on.
                if h.log_pos() != 0 {
                    self.file = std::sync::Arc::from(name.as_str());
                }
                self.pos = r.position();
            }
            return Vec::new();
        }
        let start = self.pos;
        if h.log_pos() != 0 {
            self.pos = h.log_pos() as u64;
        }
        use super::event_type::EventType as E;
        match E::from_code(code) {
            E::MariaGtid => {
                let standalone = super::query::maria_gtid_standalone(ev);
                self.group = (!standalone).then_some((start, true));
                return Vec::new();
            }
            E::MysqlGtid { .. } => {
                self.group = Some((start, false));
                return Vec::new();
            }
            E::Xid => {
                self.group = None;
                return Vec::new();
            }
            _ => {}
        }
        let Some(Ok(super::query::Statement {
            db,
            sql: q,
            dialect,
        })) = super::query::statement(ev)
        else {
            return Vec::new();
        };
        let thread = super::query::thread_id(ev);
        let flagged = h.flags_raw() & super::event_type::LOG_EVENT_THREAD_SPECIFIC_F != 0;
        if self.temporaries.track(&q, &db, dialect, thread) {
            return Vec::new();
        }
        // A `CREATE … SELECT` inside its transaction: at the transaction's start, where the
        // stream puts it (before the rows that follow in the same group).
        let at = match self.group {
            Some((g, maria)) if ddl_inside_group(maria, &q) => {
                crate::model::BinlogPosition::new(self.file.clone(), g)
            }
            _ => self.position(),
        };
        if head(&q, dialect).starts_with("COMMIT") {
            self.group = None;
        }
        parse(&q, &db, dialect)
            .filter(|d| !self.temporaries.shadows(d, flagged, thread))
            .map(|d| {
                d.tables
                    .iter()
                    .filter(|t| d.changes_columns_of(t))
                    .map(|t| (t.clone(), at.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(db: &str, table: &str) -> TableName {
        (db.into(), table.into())
    }

    #[test]
    fn double_quoted_names_under_ansi_quotes_and_set_statement_prefixes() {
        let quotes = Dialect {
            ansi_quotes: true,
            ..Dialect::default()
        };
        let ansi = |s: &str| parse(s, "shop", quotes).map(|d| (d.kind, d.tables));
        assert_eq!(
            ansi("TRUNCATE TABLE \"t5\""),
            Some((DdlKind::Truncate, vec![t("shop", "t5")]))
        );
        assert_eq!(
            ansi("TRUNCATE \"p2\".\"t\"\"11\""),
            Some((DdlKind::Truncate, vec![t("p2", "t\"11")]))
        );
        assert_eq!(
            ansi("DROP TABLE \"d5\" /* generated by server */"),
            Some((
                DdlKind::DropTable { if_exists: false },
                vec![t("shop", "d5")]
            ))
        );
        assert_eq!(
            ansi("ALTER TABLE \"t\\\" MODIFY doc JSON DEFAULT 'x\\' y'"),
            Some((DdlKind::AlterTable, vec![t("shop", "t\\")]))
        );
        // Without ANSI_QUOTES a double-quoted run is a string: no table name there.
        assert_eq!(
            parse("TRUNCATE TABLE \"t5\"", "shop", Dialect::default()),
            None
        );
        let plain = |s: &str| parse(s, "shop", Dialect::default()).map(|d| (d.kind, d.tables));
        assert_eq!(
            plain("SET STATEMENT max_statement_time=100, sql_mode='a,b' FOR TRUNCATE TABLE t6"),
            Some((DdlKind::Truncate, vec![t("shop", "t6")]))
        );
        assert_eq!(
            plain("set statement lock_wait_timeout = 5 for /* c */ CREATE OR REPLACE TABLE x.r (id INT)"),
            Some((DdlKind::ReplaceTable, vec![t("x", "r")]))
        );
        assert_eq!(plain("SET STATEMENT x=1"), None);
        assert_eq!(
            head("/* app */ insert INTO un VALUES (1)", Dialect::default()),
            "INSERT INTO UN"
        );
        assert_eq!(
            head(
                "SET STATEMENT sql_mode='' FOR -- c\n REPLACE r SELECT 1",
                Dialect::default()
            ),
            "REPLACE R SELECT"
        );
        assert_eq!(
            head("/*!40000 ALTER TABLE t DISABLE KEYS */", Dialect::default()),
            "ALTER TABLE T"
        );
        assert_eq!(head("  # c\nCOMMIT", Dialect::default()), "COMMIT");
        assert_eq!(
            head("XA COMMIT X'31',X'',1", Dialect::default()),
            "XA COMMIT X"
        );
        assert_eq!(head("ROLLBACK TO `s1`", Dialect::default()), "ROLLBACK TO");
        // Comments of any length before the statement (a trace context, say).
        let long = format!("/* {} */ INSERT INTO s.un VALUES (1)", "é".repeat(30_000));
        assert_eq!(head(&long, Dialect::default()), "INSERT INTO S");
        // The prefix ends at the first FOR outside parentheses.
        assert_eq!(
            plain("SET STATEMENT sql_mode = SUBSTRING(@@sql_mode FROM 1 FOR 50) FOR TRUNCATE TABLE s.t"),
            Some((DdlKind::Truncate, vec![t("s", "t")]))
        );
        assert_eq!(
            head(
                "SET STATEMENT x = f((1), 'FOR') FOR insert INTO t VALUES (1)",
                Dialect::default()
            ),
            "INSERT INTO T"
        );
        // NO_BACKSLASH_ESCAPES: a backslash ends nothing; the rename after the string is seen.
        let raw = Dialect {
            no_backslash_escapes: true,
            ..Dialect::default()
        };
        assert_eq!(
            parse("ALTER TABLE s.a COMMENT 'C:\\', RENAME TO s.b", "shop", raw).map(|d| d.kind),
            Some(DdlKind::RenameTable)
        );
    }

    #[test]
    fn statements_that_remove_rows_without_rows_events() {
        let p = |s: &str| parse(s, "shop", Dialect::default());
        let gone = |s: &str| p(s).map(|d| (d.kind, d.tables));
        let parts =
            |v: &[&str]| DdlKind::TruncatePartitions(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            gone("ALTER TABLE s TRUNCATE PARTITION ALL"),
            Some((DdlKind::Truncate, vec![t("shop", "s")]))
        );
        assert_eq!(
            gone("alter table s truncate partition `ALL`"),
            Some((parts(&["ALL"]), vec![t("shop", "s")]))
        );
        assert_eq!(
            gone("ALTER TABLE s DROP PARTITION p2, `p 3`"),
            Some((parts(&["p2", "p 3"]), vec![t("shop", "s")]))
        );
        assert_eq!(
            gone("ALTER TABLE s WAIT 5 TRUNCATE PARTITION p1"),
            Some((parts(&["p1"]), vec![t("shop", "s")]))
        );
        assert_eq!(
            gone("ALTER TABLE s DROP PARTITION IF EXISTS p2"),
            Some((parts(&["p2"]), vec![t("shop", "s")]))
        );
        assert_eq!(
            gone("ALTER TABLE d.s CONVERT PARTITION p1 TO TABLE out1"),
            Some((parts(&["p1"]), vec![t("d", "s")]))
        );
        assert_eq!(
            gone("ALTER TABLE s EXCHANGE PARTITION p0 WITH TABLE d2.stage WITHOUT VALIDATION"),
            Some((
                DdlKind::ExchangePartition("p0".into()),
                vec![t("shop", "s"), t("d2", "stage")]
            ))
        );
        assert_eq!(
            gone("CREATE OR REPLACE TABLE c (id INT) SELECT 1 AS id"),
            Some((DdlKind::ReplaceTable, vec![t("shop", "c")]))
        );
        assert_eq!(
            temporary(
                "CREATE OR REPLACE TEMPORARY TABLE IF NOT EXISTS x.t (k INT)",
                "shop",
                Dialect::default()
            ),
            Some(Temporary::Created(t("x", "t")))
        );
        assert_eq!(
            temporary(
                "DROP /*!40005 TEMPORARY */ TABLE IF EXISTS `t`, d.u",
                "shop",
                Dialect::default()
            ),
            Some(Temporary::Dropped(vec![t("shop", "t"), t("d", "u")]))
        );
        assert_eq!(
            temporary("CREATE TABLE t (k INT)", "shop", Dialect::default()),
            None
        );
        assert_eq!(temporary("DROP TABLE t", "shop", Dialect::default()), None);
        assert_eq!(
            gone("ALTER TABLE s CONVERT TABLE d2.x TO PARTITION p9 VALUES LESS THAN (90)"),
            Some((
                DdlKind::TableToPartition,
                vec![t("shop", "s"), t("d2", "x")]
            ))
        );
        for drop in ["DROP DATABASE `d-1`", "drop schema if exists `d-1`"] {
            assert_eq!(
                gone(drop),
                Some((DdlKind::DropDatabase("d-1".into()), Vec::new())),
                "{drop}"
            );
        }
        // No rows go: a column named like a partition verb, partition maintenance.
        for same in [
            "ALTER TABLE s DROP COLUMN `partition`",
            "ALTER TABLE s REORGANIZE PARTITION p0 INTO (PARTITION a VALUES LESS THAN (5))",
            "ALTER TABLE s ADD PARTITION (PARTITION p9 VALUES LESS THAN (90))",
            "ALTER TABLE s COMMENT 'drop partition p1'",
            "ALTER TABLE s DROP COLUMN exchange PARTITION BY HASH(id)",
            "ALTER TABLE s ADD COLUMN truncate INT, ALGORITHM=INPLACE",
        ] {
            assert_eq!(gone(same).map(|g| g.0), Some(DdlKind::AlterTable), "{same}");
        }
    }

    #[test]
    fn names_the_tables() {
        let p = |s: &str| parse(s, "shop", Dialect::default());
        assert_eq!(
            p("CREATE TABLE IF NOT EXISTS `a``b`.c (x int)"),
            Some(Ddl {
                kind: DdlKind::CreateTable,
                tables: vec![t("a`b", "c")]
            })
        );
        assert_eq!(
            p("/* note */ ALTER TABLE orders ADD COLUMN x INT")
                .unwrap()
                .tables,
            vec![t("shop", "orders")]
        );
        assert_eq!(
            p("DROP TABLE IF EXISTS `x`,db2.y /* generated by server */").unwrap(),
            Ddl {
                kind: DdlKind::DropTable { if_exists: true },
                tables: vec![t("shop", "x"), t("db2", "y")]
            }
        );
        assert_eq!(
            p("RENAME TABLE a TO b, c TO d2.e").unwrap().tables,
            vec![t("shop", "a"), t("shop", "b"), t("shop", "c"), t("d2", "e")]
        );
        assert_eq!(p("TRUNCATE sessions").unwrap().kind, DdlKind::Truncate);
        assert_eq!(
            p("truncate table bug.sessions").unwrap().tables,
            vec![t("bug", "sessions")]
        );
        assert_eq!(
            p("ALTER TABLE sessions TRUNCATE PARTITION p_high, p2")
                .unwrap()
                .kind,
            DdlKind::TruncatePartitions(vec!["p_high".into(), "p2".into()])
        );
        assert_eq!(
            p("ALTER TABLE a RENAME TO b").unwrap(),
            Ddl {
                kind: DdlKind::RenameTable,
                tables: vec![t("shop", "a"), t("shop", "b")]
            }
        );
        assert_eq!(
            p("ALTER TABLE a RENAME COLUMN x TO y").unwrap().kind,
            DdlKind::AlterTable
        );
        assert_eq!(
            p("CREATE UNIQUE INDEX u ON t (body(10))").unwrap(),
            Ddl {
                kind: DdlKind::Index,
                tables: vec![t("shop", "t")]
            }
        );
        assert_eq!(p("CREATE TEMPORARY TABLE s (k int)"), None);
        assert_eq!(p("DROP TEMPORARY TABLE IF EXISTS s"), None);
        assert_eq!(p("GRANT SELECT ON *.* TO x"), None);
        assert_eq!(
            p("/*!40000 ALTER TABLE `t` DISABLE KEYS */")
                .unwrap()
                .tables,
            vec![t("shop", "t")]
        );
    }

    #[test]
    fn mariadb_if_exists_lock_waits_and_sequences() {
        let p = |s: &str| parse(s, "shop", Dialect::default());
        // MariaDB's IF EXISTS and lock waits (WAIT n, NOWAIT) around the names.
        for rename in [
            "RENAME TABLE IF EXISTS a TO b, c TO d2.e",
            "RENAME TABLE a NOWAIT TO b, c WAIT 5 TO d2.e",
            "RENAME TABLES IF EXISTS a WAIT 1 TO b, c NOWAIT TO d2.e",
        ] {
            assert_eq!(
                p(rename).unwrap().tables,
                vec![t("shop", "a"), t("shop", "b"), t("shop", "c"), t("d2", "e")],
                "{rename}"
            );
        }
        assert_eq!(
            p("ALTER TABLE a NOWAIT RENAME TO b").unwrap(),
            Ddl {
                kind: DdlKind::RenameTable,
                tables: vec![t("shop", "a"), t("shop", "b")]
            }
        );
        assert_eq!(
            p("TRUNCATE TABLE a WAIT 3").unwrap(),
            Ddl {
                kind: DdlKind::Truncate,
                tables: vec![t("shop", "a")]
            }
        );
        // A sequence is a table: replacing one by a sequence takes its rows.
        let seq = |s: &str| p(s).map(|d| (d.kind, d.tables));
        let sq = vec![t("shop", "sq")];
        assert_eq!(
            seq("CREATE OR REPLACE SEQUENCE sq START WITH 5"),
            Some((DdlKind::ReplaceTable, sq.clone()))
        );
        assert_eq!(
            seq("CREATE SEQUENCE IF NOT EXISTS sq"),
            Some((DdlKind::CreateTable, sq.clone()))
        );
        // DROP SEQUENCE never drops a table (MariaDB notes "is not a SEQUENCE").
        assert_eq!(seq("DROP SEQUENCE IF EXISTS sq"), None);
        assert_eq!(
            seq("ALTER SEQUENCE IF EXISTS sq RESTART 1"),
            Some((DdlKind::AlterTable, sq))
        );
        assert_eq!(p("CREATE TEMPORARY SEQUENCE sq"), None);
    }

    #[test]
    fn only_create_index_is_index_ddl_not_a_routine_body_that_says_index_on() {
        let p = |s: &str| parse(s, "shop", Dialect::default());
        let t = |n: &str| vec![("shop".to_string(), n.to_string())];
        for body in [
            "CREATE PROCEDURE py() SELECT o.id FROM o FORCE INDEX (PRIMARY) JOIN t ON t.id = o.id",
            "CREATE DEFINER=`a`@`%` FUNCTION f() RETURNS INT RETURN (SELECT 1 FROM o USE INDEX (k) JOIN t ON 1)",
            "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO CREATE INDEX i ON t (a)",
        ] {
            assert_eq!(p(body), None, "{body}");
        }
        for (sql, table) in [
            ("CREATE INDEX i ON t (a)", "t"),
            ("CREATE UNIQUE INDEX i USING BTREE ON u (a)", "u"),
            (
                "CREATE OR REPLACE FULLTEXT INDEX IF NOT EXISTS i ON v (a)",
                "v",
            ),
            ("CREATE ONLINE SPATIAL INDEX i ON w (g)", "w"),
        ] {
            let d = p(sql).unwrap();
            assert_eq!((d.kind, d.tables), (DdlKind::Index, t(table)), "{sql}");
        }
    }

    #[test]
    fn a_temporary_table_renamed_keeps_shadowing_under_its_new_name() {
        let d = Dialect::default();
        let mut tmp = Temporaries::default();
        assert!(tmp.track("CREATE TEMPORARY TABLE scratch (id INT)", "s", d, 7));
        // Renamed onto the real `t`'s name (both forms): the session's, not a DDL of `t`.
        assert!(tmp.track("ALTER TABLE scratch RENAME TO t", "s", d, 7));
        let truncate = parse("TRUNCATE TABLE t", "s", d).unwrap();
        assert!(tmp.shadows(&truncate, true, 7));
        assert!(
            !tmp.shadows(&truncate, true, 8),
            "another session's `t` is the real one"
        );
        assert!(tmp.track("RENAME TABLE t TO t2, t2 TO t3", "s", d, 7));
        assert!(!tmp.shadows(&truncate, true, 7));
        // A real table renamed (no temporary of that name): a DDL like any other.
        assert!(!tmp.track("RENAME TABLE t TO old_t", "s", d, 7));
        assert!(tmp.track("DROP TEMPORARY TABLE t3", "s", d, 7));
        assert!(!tmp.track("ALTER TABLE t3 RENAME TO t", "s", d, 7));
    }
}
