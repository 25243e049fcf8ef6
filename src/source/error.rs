//! What cannot be decoded, and where.

/// A binlog that cannot be decoded. An event-level error stops the stream; a table-level one
/// stops the pipelines of that table (`SourceEvent::TableFailed`). Never skipped silently.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("table map of `{db}`.`{table}` cannot be decoded: {reason}")]
    TableMap {
        db: String,
        table: String,
        reason: String,
    },
    #[error("`{db}`.`{table}`{}: {reason}", describe_column(column, type_name))]
    Column {
        db: String,
        table: String,
        column: String,
        type_name: String,
        reason: String,
    },
    #[error(
        "a row of `{db}`.`{table}`{} cannot be decoded: {reason}",
        describe_column(column, type_name)
    )]
    Value {
        db: String,
        table: String,
        column: String,
        type_name: String,
        reason: String,
    },
    #[error("event at {file}:{pos} (type {event_type}) cannot be decoded: {reason}")]
    Event {
        file: String,
        pos: u64,
        event_type: u8,
        reason: String,
    },
    #[error(
        "rows event at {file}:{pos} refers to table id {table_id}, for which no TABLE_MAP was seen"
    )]
    NoTableMap {
        file: String,
        pos: u64,
        table_id: u64,
    },
}

fn describe_column(column: &str, type_name: &str) -> String {
    match (column.is_empty(), type_name.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!(", column `{column}`"),
        (false, false) => format!(", column `{column}` ({type_name})"),
    }
}
