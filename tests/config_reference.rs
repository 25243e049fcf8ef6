//! The README's configuration reference cannot drift from the config types: every field serde
//! accepts has a row, and every row names a field serde accepts. The field lists come from
//! serde itself (the "expected one of …" of an unknown key at each level).

use std::collections::BTreeSet;

use cdc_enricher::{Config, PipelineConfig};

/// The fields serde accepts where `yaml` puts the unknown key `zz_unknown`.
fn fields<T: serde::de::DeserializeOwned>(yaml: &str) -> BTreeSet<String> {
    let err = match serde_yaml_ng::from_str::<T>(yaml) {
        Ok(_) => panic!("`{yaml}` parsed"),
        Err(e) => e.to_string(),
    };
    let list = err
        .split_once("expected ")
        .unwrap_or_else(|| panic!("{err}"))
        .1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The backticked names in the first column of the table after `heading` (up to the next
/// blank line after the table).
fn rows(readme: &str, heading: &str) -> BTreeSet<String> {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("no `{heading}` in the README"));
    let mut out = BTreeSet::new();
    let mut in_table = false;
    for line in readme[start + heading.len()..].lines() {
        if line.starts_with('|') {
            in_table = true;
            let first = line.split('|').nth(1).unwrap_or("");
            if first.trim() == "key" || first.starts_with("---") {
                continue;
            }
            for name in first.split('`').skip(1).step_by(2) {
                out.insert(name.to_string());
            }
        } else if in_table {
            break;
        }
    }
    assert!(!out.is_empty(), "no table after `{heading}`");
    out
}

fn prefixed(prefix: &str, f: BTreeSet<String>) -> BTreeSet<String> {
    f.into_iter().map(|x| format!("{prefix}{x}")).collect()
}

#[test]
fn every_config_field_has_a_readme_row_and_every_row_a_field() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();

    // The daemon file: nested sections as dotted keys.
    let nested = [
        "source",
        "kafka",
        "checkpoint",
        "metrics",
        "snapshot",
        "scale_out",
    ];
    let mut want: BTreeSet<String> = fields::<Config>("zz_unknown: 1\n")
        .into_iter()
        .filter(|f| !nested.contains(&f.as_str()))
        .collect();
    let source: BTreeSet<String> = fields::<Config>("source:\n  zz_unknown: 1\n")
        .into_iter()
        .filter(|f| f != "tls")
        .collect();
    want.extend(prefixed("source.", source));
    want.extend(prefixed(
        "source.tls.",
        fields::<Config>("source:\n  tls:\n    zz_unknown: 1\n"),
    ));
    for s in ["kafka", "checkpoint", "metrics", "snapshot", "scale_out"] {
        want.extend(prefixed(
            &format!("{s}."),
            fields::<Config>(&format!("{s}:\n  zz_unknown: 1\n")),
        ));
    }
    assert_eq!(rows(&readme, "### `cdc-enricher.yaml`"), want);

    // A pipeline file.
    assert_eq!(
        rows(&readme, "### `pipelines/*.yaml` — one pipeline per file"),
        fields::<PipelineConfig>("zz_unknown: 1\n")
    );

    // Enrichment: the shared settings, then each backend.
    let enr = |inner: &str| fields::<PipelineConfig>(&format!("enrichment:\n{inner}"));
    let shared: BTreeSet<String> = enr("  zz_unknown: 1\n")
        .into_iter()
        .filter(|f| !["comprehend", "sagemaker", "bedrock", "embedding"].contains(&f.as_str()))
        .collect();
    assert_eq!(rows(&readme, "Shared settings (every backend):"), shared);
    for b in ["comprehend", "sagemaker", "bedrock", "embedding"] {
        let heading = readme
            .lines()
            .find(|l| l.starts_with(&format!("`{b}:`")))
            .unwrap_or_else(|| panic!("no `{b}:` table in the README"));
        assert_eq!(
            rows(&readme, heading),
            enr(&format!("  {b}:\n    zz_unknown: 1\n")),
            "{b}"
        );
    }
    // The budget's fields are spelled out in its row.
    let budget_row = readme
        .lines()
        .find(|l| l.starts_with("| `budget` |"))
        .unwrap();
    for f in enr("  budget:\n    zz_unknown: 1\n") {
        assert!(
            budget_row.contains(&format!("{f}:")),
            "budget.{f} in {budget_row}"
        );
    }

    // Sinks: the write-back table, and the Kafka and JSONL fields in the `sink` row.
    let sink = |inner: &str| fields::<PipelineConfig>(&format!("sink:\n{inner}"));
    assert_eq!(
        rows(&readme, "### `sink: mysql`"),
        sink("  mysql:\n    zz_unknown: 1\n")
    );
    let sink_row = readme
        .lines()
        .find(|l| l.starts_with("| `sink` |"))
        .unwrap();
    for kind in ["kafka", "jsonl"] {
        for f in sink(&format!("  {kind}:\n    zz_unknown: 1\n")) {
            assert!(
                sink_row.contains(&format!("{f}:")),
                "sink.{kind}.{f} in {sink_row}"
            );
        }
    }
}
