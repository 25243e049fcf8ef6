//! The configuration and pipelines shipped in this repository load and validate.

use std::path::Path;

use cdc_enricher::{Config, SinkConfig};

#[test]
fn shipped_config_and_pipelines_validate() {
    std::env::set_var("CDC_PASSWORD", "x");
    std::env::set_var("CDC_WRITER_PASSWORD", "y");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = Config::load(&root.join("cdc-enricher.yaml")).unwrap();
    assert_eq!(cfg.source.port, 3306);
    assert_eq!(cfg.kafka.as_ref().unwrap().brokers, "127.0.0.1:9092");
    let pipelines = cfg.load_pipelines().unwrap();
    let names: Vec<&str> = pipelines.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "article_summaries",
            "order_anomaly",
            "orders",
            "product_descriptions",
            "support_digest",
            "support_feedback",
            "support_sentiment_writeback"
        ]
    );
    let kinds: Vec<&str> = pipelines
        .iter()
        .map(|p| match p.sink {
            SinkConfig::Kafka(_) => "kafka",
            SinkConfig::Mysql(_) => "mysql",
            SinkConfig::Jsonl(_) => "jsonl",
        })
        .collect();
    assert_eq!(
        kinds,
        ["kafka", "kafka", "kafka", "mysql", "kafka", "kafka", "mysql"]
    );
    assert_eq!(pipelines[4].topic().as_deref(), Some("ml.support_digest"));
    assert_eq!(pipelines[5].topic().as_deref(), Some("cdc.shop.support"));
    assert_eq!(
        pipelines[0].topic().as_deref(),
        Some("ml.article_summaries")
    );
}

#[test]
fn the_scale_out_config_validates_and_keeps_its_checkpoint_in_the_database() {
    std::env::set_var("CDC_PASSWORD", "x");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = Config::load(&root.join("deploy/scale-out/cdc-enricher.yaml")).unwrap();
    assert_eq!(cfg.scale_out.group_id, "cdc-enricher-workers");
    assert_eq!(
        cfg.scale_out.topic("shop", "orders"),
        "cdc-changes.shop.orders"
    );
    let store = format!("{:?}", cfg.checkpoint.store);
    assert!(store.starts_with("Mysql"), "{store}");
    // The pipelines docker-compose.yml mounts for the workers are ones a worker runs.
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    for p in [
        "orders",
        "order_anomaly",
        "article_summaries",
        "support_feedback",
    ] {
        assert!(
            compose.contains(&format!(
                "./pipelines/{p}.yaml:/etc/cdc-enricher/pipelines-scale-out/{p}.yaml:ro"
            )),
            "{p}"
        );
        let text = std::fs::read_to_string(root.join(format!("pipelines/{p}.yaml"))).unwrap();
        assert!(
            !text.contains("mysql:")
                && !text.contains("window:")
                && !text.contains("snapshot: initial"),
            "{p}"
        );
    }
}
