//! The source role's pipelines (`run --role source`): one change stream per table some
//! pipeline reads, publishing every row's full images to the table's change topic, for the
//! workers (`run --role worker`) to run the pipelines on.

use std::collections::BTreeMap;

use crate::config::pipeline::{
    KafkaSinkConfig, KeyChanges, OnOversize, Operation, SinkConfig, SnapshotMode,
};
use crate::config::{PipelineConfig, ScaleOutConfig};

/// The change streams of `pipelines`' tables, one per table, in table order: every column,
/// every operation (truncates included), an update that changes the key as one `u` (each
/// worker pipeline splits it as its own `key_changes` says), no filter, no enrichment, to
/// `scale.change_topic`. Records are keyed by the key every pipeline of the table gives, if
/// they agree on one, else by the primary key, so that a key's changes stay in one
/// partition. A record over the producer's limit stops the stream (`on_oversize: fail`): a
/// change topic drops nothing.
pub fn source_pipelines(
    scale: &ScaleOutConfig,
    pipelines: &[PipelineConfig],
) -> Vec<PipelineConfig> {
    let mut tables: BTreeMap<(String, String), Vec<&PipelineConfig>> = BTreeMap::new();
    for p in pipelines {
        tables.entry(p.db_table()).or_default().push(p);
    }
    tables
        .into_iter()
        .map(|((db, table), ps)| {
            let key = ps[0].key.clone();
            let key = ps.iter().all(|p| p.key == key).then_some(key).flatten();
            PipelineConfig {
                name: format!("changes.{db}.{table}"),
                table: format!("{db}.{table}"),
                columns: None,
                key,
                operations: vec![Operation::Insert, Operation::Update, Operation::Delete],
                filter: None,
                on_filter_exit: None,
                enrichment: None,
                key_changes: KeyChanges::Update,
                snapshot: SnapshotMode::Never,
                sink: SinkConfig::Kafka(KafkaSinkConfig {
                    topic: scale.topic(&db, &table),
                    tombstones: false,
                    dead_letter_topic: None,
                    on_oversize: OnOversize::Fail,
                }),
                file: format!("(the change stream of {db}.{table})"),
                filter_expr: None,
                change_stream: true,
            }
        })
        .collect()
}
