//! XA transactions in the binlog. MariaDB 10.5+ and MySQL 5.7+ log an XA transaction's rows at
//! `XA PREPARE`, in a group of their own that ends with an XA_PREPARE event; the outcome comes
//! later as another group holding only `XA COMMIT X'…',X'…',n` or `XA ROLLBACK …` — possibly
//! from another connection, after other transactions, in a later binlog file
//! (<https://mariadb.com/kb/en/xa-transactions/>, MySQL's `XA_prepare_log_event`).

use serde::{Deserialize, Serialize};

use super::cursor::Cursor;
use crate::model::BinlogPosition;

/// An XA transaction id: format id, global transaction id and branch qualifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Xid {
    pub format_id: i64,
    /// Hex of the gtrid bytes.
    pub gtrid: String,
    /// Hex of the bqual bytes.
    pub bqual: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

impl Xid {
    /// From an XA_PREPARE event: one_phase (1), formatID (4), gtrid length (4), bqual length
    /// (4), then gtrid and bqual.
    pub fn from_prepare_event(data: &[u8]) -> Result<Xid, String> {
        let mut c = Cursor::new(data);
        c.take(1)?;
        let format_id = c.le(4)? as u32 as i32 as i64;
        let gl = c.le(4)? as usize;
        let bl = c.le(4)? as usize;
        if gl > 64 || bl > 64 {
            return Err(format!("XA id lengths {gl} and {bl} (at most 64 each)"));
        }
        let g = c.take(gl)?;
        let b = c.take(bl)?;
        Ok(Xid {
            format_id,
            gtrid: hex(g),
            bqual: hex(b),
        })
    }

    /// From the text the server logs: `X'6272616e63682d61',X'',1` (after `XA COMMIT`).
    pub fn from_statement_args(args: &str) -> Option<Xid> {
        let mut parts = args.split(',').map(str::trim);
        let lit = |p: Option<&str>| -> Option<String> {
            let p = p?;
            let inner = p
                .strip_prefix("X'")
                .or_else(|| p.strip_prefix("x'"))?
                .strip_suffix('\'')?;
            unhex(inner).map(|b| hex(&b))
        };
        let gtrid = lit(parts.next())?;
        let bqual = lit(parts.next()).unwrap_or_default();
        let format_id = parts.next().map_or(Some(1), |f| f.parse().ok())?;
        Some(Xid {
            format_id,
            gtrid,
            bqual,
        })
    }

    /// The XA id as the user wrote it where it is printable (`'branch-a'`), else as hex.
    pub fn describe(&self) -> String {
        let text = |h: &str| {
            unhex(h)
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| s.chars().all(|c| !c.is_control()))
        };
        match (text(&self.gtrid), text(&self.bqual)) {
            (Some(g), Some(b)) if b.is_empty() => format!("'{g}'"),
            (Some(g), Some(b)) => format!("'{g}','{b}'"),
            _ => format!("X'{}',X'{}',{}", self.gtrid, self.bqual, self.format_id),
        }
    }
}

/// What an XA statement of the binlog does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XaOutcome {
    Commit(Xid),
    Rollback(Xid),
}

/// `XA COMMIT …` / `XA ROLLBACK …` (not `XA COMMIT … ONE PHASE`, which ends an ordinary group).
pub fn outcome(query: &str) -> Option<XaOutcome> {
    let q = query.trim();
    let upper = q.get(..12)?.to_ascii_uppercase();
    let (args, commit) = if upper.starts_with("XA COMMIT ") {
        (&q[10..], true)
    } else if upper.starts_with("XA ROLLBACK ") {
        (&q[12..], false)
    } else {
        return None;
    };
    if args.to_ascii_uppercase().contains("ONE PHASE") {
        return None;
    }
    let xid = Xid::from_statement_args(args)?;
    Some(if commit {
        XaOutcome::Commit(xid)
    } else {
        XaOutcome::Rollback(xid)
    })
}

/// A prepared XA transaction whose outcome the checkpoint has not passed: the group at
/// `position` is read again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenXa {
    pub xid: Xid,
    /// The prepare group's first event.
    pub position: BinlogPosition,
    /// When it was prepared (the binlog's timestamp), ms since the epoch.
    pub ts_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_events_and_statements() {
        let mut ev = vec![0u8];
        ev.extend(1u32.to_le_bytes());
        ev.extend(8u32.to_le_bytes());
        ev.extend(0u32.to_le_bytes());
        ev.extend(b"branch-a");
        let x = Xid::from_prepare_event(&ev).unwrap();
        assert_eq!(x.describe(), "'branch-a'");
        assert_eq!(
            outcome("XA COMMIT X'6272616e63682d61',X'',1"),
            Some(XaOutcome::Commit(x.clone()))
        );
        assert_eq!(
            outcome("XA ROLLBACK X'6272616e63682d61',X'',1"),
            Some(XaOutcome::Rollback(x))
        );
        assert_eq!(outcome("XA COMMIT 'd' ONE PHASE"), None);
        assert_eq!(outcome("COMMIT"), None);
        assert!(Xid::from_prepare_event(&ev[..7]).is_err());
    }
}
