//! The replication position: where to resume, compared and persisted in one place.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// "Stream from `file`:`pos` (the first event of a transaction) and skip the first `row`
/// rows of that transaction." A checkpoint stores the position after the last row whose
/// records were acknowledged, so a crash inside a 1M-row transaction resumes inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub file: Arc<str>,
    pub pos: u64,
    #[serde(default)]
    pub row: u64,
    /// The GTID of the transaction at `pos`, where known (informational: resume is by file and position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<Arc<str>>,
}

impl Position {
    pub fn new(file: impl Into<Arc<str>>, pos: u64) -> Self {
        Position {
            file: file.into(),
            pos,
            row: 0,
            gtid: None,
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)?;
        if self.row > 0 {
            write!(f, "+{} rows", self.row)?;
        }
        if let Some(g) = &self.gtid {
            write!(f, " (GTID {g})")?;
        }
        Ok(())
    }
}
