//! Lineage: what produced an enrichment, so a consumer or the write-back can tell answers of
//! one model, prompt and parameters from those of another, and `reenrich` can find the rows
//! whose stored answer came from something else.

use super::input::InputSpec;
use crate::backend::Backend;
use crate::model::hash::short_hash;

/// A pipeline's lineage: 16 hex digits (64 bits) of the SHA-256 of the backend's name, its
/// scope — the operation, endpoint or model and every parameter that shapes the answer
/// (system prompt, `max_tokens`, temperature, output, fields, `returns`, dimensions…) — and
/// how the input is made (the template as written, the CSV columns, the document column and
/// language). Equal lineages: the same answer for the same row; a change to any of these
/// changes it. Limits, batching, retries and the sink do not enter it.
pub fn of(backend: &dyn Backend, input: &InputSpec) -> String {
    short_hash(&[backend.name(), &backend.cache_scope(), &input.describe()])
}
