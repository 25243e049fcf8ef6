//! The `enrichment.comprehend` section of a pipeline.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ComprehendConfig {
    /// `sentiment`, `entities`, `key_phrases`, `dominant_language` or `pii_entities`.
    pub operation: ComprehendOperation,
    /// The column holding the text (it must be among the picked `columns`).
    pub text: String,
    /// The language code of every row (default `en`).
    #[serde(default = "default_language")]
    pub language: String,
    /// A column holding each row's language code (it must be among the picked `columns`);
    /// rows where it is NULL or empty use `language`.
    #[serde(default)]
    pub language_column: Option<String>,
    /// Text over 5,000 UTF-8 bytes: `truncate` (default; cut at a character boundary, marked
    /// `truncated: true`) or `dead_letter`.
    #[serde(default)]
    pub on_too_long: OnTooLong,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnTooLong {
    #[default]
    Truncate,
    DeadLetter,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ComprehendOperation {
    /// BatchDetectSentiment: the label, its confidence and the four scores.
    Sentiment,
    /// BatchDetectEntities: text, type, score and offsets of each entity.
    Entities,
    /// BatchDetectKeyPhrases: text, score and offsets of each phrase.
    KeyPhrases,
    /// BatchDetectDominantLanguage: the most likely language, its confidence, all candidates.
    DominantLanguage,
    /// DetectPiiEntities (no batch form: one document per call): type, score and offsets.
    PiiEntities,
}

fn default_language() -> String {
    "en".into()
}
