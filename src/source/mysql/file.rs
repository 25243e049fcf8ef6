//! Reads binlog files (for `cdc-enricher decode-file` and decoding tests of MySQL-only events).
//!
//! Events are framed here, with every length checked against the bytes that remain, before
//! `mysql_common` sees them: a truncated or corrupt file gives an error naming the offset.

use super::event_type::EventType;
use mysql_common::binlog::consts::BinlogVersion;
use mysql_common::binlog::events::TransactionPayloadEvent;
use mysql_common::binlog::EventStreamReader;

use super::decoder::Decoder;
use super::schema_history::SchemaHistory;
use crate::source::{BinlogPosition, SourceEvent};

/// Why a binlog file could not be read to its end. None is retryable: the file is what it is.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file cannot be opened or read.
    #[error("cannot read binlog file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file does not start with the binlog magic (`FE 62 69 6E`, "\xfebin").
    #[error("{path} is not a binlog file: it does not start with the magic bytes FE 62 69 6E")]
    NotBinlog {
        /// The file.
        path: String,
    },
    /// The file ends inside an event (a copy taken while the server wrote it, or cut).
    #[error("{path}: truncated event at offset {offset}: {reason}")]
    Truncated {
        /// The file.
        path: String,
        /// Byte offset of the event's first byte in the file.
        offset: u64,
        /// Which length did not fit.
        reason: String,
    },
    /// An event's header or body is inconsistent (a length below the header's, a bad
    /// checksum, a body `mysql_common` refuses).
    #[error("{path}: corrupt event at offset {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// Byte offset of the event's first byte in the file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// An event was framed but its content could not be decoded.
    #[error("{path}: {source}")]
    Decode {
        /// The file.
        path: String,
        /// The decoder's error (it names the event, table, column and position).
        source: Box<crate::source::DecodeError>,
    },
}

const HEADER_LEN: usize = 19;

/// Frames one event starting at `off`: returns its length after checking the header.
fn frame(buf: &[u8], off: usize) -> Result<usize, String> {
    let rest = buf.len() - off;
    if rest < HEADER_LEN {
        return Err(format!(
            "{rest} bytes remain, an event header needs {HEADER_LEN}"
        ));
    }
    let size =
        u32::from_le_bytes([buf[off + 9], buf[off + 10], buf[off + 11], buf[off + 12]]) as usize;
    if size < HEADER_LEN {
        return Err(format!("event size {size} is smaller than its header"));
    }
    if size > rest {
        return Err(format!("event size {size} but only {rest} bytes remain"));
    }
    Ok(size)
}

/// Decodes every event of the binlog at `path`, calling `f` with what each produced.
pub fn decode_file(path: &str, mut f: impl FnMut(SourceEvent)) -> Result<u64, FileError> {
    let buf = std::fs::read(path).map_err(|source| FileError::Io {
        path: path.into(),
        source,
    })?;
    decode_bytes(path, &buf, &mut f)
}

/// Decodes a binlog held in memory (no schema history: the binlog alone types the rows).
pub fn decode_bytes(
    path: &str,
    buf: &[u8],
    f: &mut dyn FnMut(SourceEvent),
) -> Result<u64, FileError> {
    if buf.len() < 4 || &buf[..4] != b"\xfebin" {
        return Err(FileError::NotBinlog { path: path.into() });
    }
    let name = std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string());
    let mut decoder = Decoder::new(&BinlogPosition::new(name, 4), SchemaHistory::default());
    let mut esr = EventStreamReader::new(BinlogVersion::Version4);
    let mut off = 4usize;
    let mut out = Vec::new();
    let mut events = 0u64;
    while off < buf.len() {
        let size = frame(buf, off).map_err(|reason| FileError::Truncated {
            path: path.into(),
            offset: off as u64,
            reason,
        })?;
        let corrupt = |reason: String| FileError::Corrupt {
            path: path.into(),
            offset: off as u64,
            reason,
        };
        let ev = esr
            .read(&buf[off..off + size])
            .map_err(|e| corrupt(e.to_string()))?
            .ok_or_else(|| corrupt("empty event".into()))?;
        if EventType::from_code(ev.header().event_type_raw()) == EventType::MariaStartEncryption {
            return Err(corrupt(
                "the binlog is encrypted from here on (START_ENCRYPTION, encrypt_binlog=ON): a \
                 replica connection receives it decrypted, so read it from the server"
                    .into(),
            ));
        }
        let inner = if EventType::from_code(ev.header().event_type_raw())
            == EventType::TransactionPayload
        {
            // TRANSACTION_PAYLOAD: decompress fully, then frame the inner events the same way.
            let tpe: TransactionPayloadEvent<'_> = ev
                .read_event()
                .map_err(|e| corrupt(format!("transaction payload: {e}")))?;
            let mut inner = Vec::new();
            std::io::Read::read_to_end(
                &mut tpe
                    .decompressed()
                    .map_err(|e| corrupt(format!("transaction payload: {e}")))?,
                &mut inner,
            )
            .map_err(|e| corrupt(format!("transaction payload: {e}")))?;
            inner
        } else {
            Vec::new()
        };
        let decode_err = |source| FileError::Decode {
            path: path.into(),
            source: Box::new(source),
        };
        decoder.handle(ev, &mut out).map_err(decode_err)?;
        let mut ioff = 0usize;
        while ioff < inner.len() {
            let isize = frame(&inner, ioff)
                .map_err(|r| corrupt(format!("inside the transaction payload at {ioff}: {r}")))?;
            let iev = esr
                .read_decompressed(&inner[ioff..ioff + isize])
                .map_err(|e| corrupt(format!("inside the transaction payload: {e}")))?
                .ok_or_else(|| corrupt("empty event in transaction payload".into()))?;
            decoder.handle(iev, &mut out).map_err(decode_err)?;
            ioff += isize;
        }
        for e in out.drain(..) {
            f(e);
        }
        // A committed group's records, a slice at a time.
        while decoder.releasing() {
            decoder.release_more(&mut out).map_err(decode_err)?;
            for e in out.drain(..) {
                f(e);
            }
        }
        events += 1;
        off += size;
    }
    Ok(events)
}
