//! Hot reload (SIGHUP): the pipelines folder is read again and checked as at start-up; a
//! failure refuses the whole reload and changes nothing. Added pipelines get new indexes,
//! sinks and enrichment stages; removed ones stop taking rows and their stages drain; a
//! changed pipeline is a removal plus an addition. The new router takes effect between two
//! batches of the pipeline stage, without restarting the binlog stream: no row is lost or
//! repeated across the swap.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::outputs::Stages;
use super::AppError;
use crate::config::{Config, ConfigError, PipelineConfig};
use crate::enrich;
use crate::pipeline::Router;
use crate::source::mysql::snapshot::{Ask, Job, PipelineSlots};
use crate::source::SourceEvent;

/// The tables the binlog decoder decodes, shared with its filter.
pub type Tables = Arc<std::sync::RwLock<HashSet<(String, String)>>>;

/// What the pipeline stage swaps in between two batches.
pub struct Swap {
    pub router: Router,
    pub route_to: Vec<usize>,
    pub enrich_tx: Vec<Option<mpsc::Sender<enrich::Pending>>>,
    pub done: oneshot::Sender<()>,
}

pub struct Reloader {
    pub cfg: Config,
    pub stages: Stages,
    /// Every pipeline the process has known, by its stable index.
    pub all: Vec<PipelineConfig>,
    pub active: Vec<bool>,
    pub route_to: Vec<usize>,
    pub enrich_tx: Vec<Option<mpsc::Sender<enrich::Pending>>>,
    pub tasks: Arc<std::sync::Mutex<Vec<super::outputs::StageTask>>>,
    pub tables: Tables,
    /// The backfill signal table, decoded whatever the pipelines.
    pub signal: Option<(String, String)>,
    pub slots: PipelineSlots,
    /// The backfill coordinator, for added pipelines with `snapshot: initial`.
    pub asks: Option<mpsc::UnboundedSender<Ask>>,
    pub swaps: std::sync::mpsc::Sender<Swap>,
    /// Wakes an idle pipeline stage (an empty batch) so that the swap happens now.
    pub wake: mpsc::Sender<Vec<SourceEvent>>,
}

/// Two definitions are the same pipeline when everything they say is the same.
fn same(a: &PipelineConfig, b: &PipelineConfig) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

impl Reloader {
    pub async fn reload(&mut self) -> Result<(), AppError> {
        let new = self.cfg.load_pipelines()?;
        let report = crate::precheck::run(&self.cfg, &new, None).await?;
        if !report.failures.is_empty() {
            for f in &report.failures {
                tracing::error!(problem = %f.problem, fix = %f.fix, "reload check failed");
            }
            return Err(AppError::Preflight(report.failures.len()));
        }
        let live: Vec<usize> = (0..self.all.len()).filter(|i| self.active[*i]).collect();
        let removed: Vec<usize> = live
            .iter()
            .copied()
            .filter(|i| !new.iter().any(|n| same(n, &self.all[*i])))
            .collect();
        let added: Vec<PipelineConfig> = new
            .iter()
            .filter(|n| !live.iter().any(|i| same(n, &self.all[*i])))
            .cloned()
            .collect();
        if removed.is_empty() && added.is_empty() {
            tracing::info!("reload: the pipelines are unchanged");
            return Ok(());
        }
        let first = self.all.len();
        if first + added.len() > self.stages.metrics.pipelines.len() {
            return Err(ConfigError::File {
                file: self.cfg.path.display().to_string(),
                message: format!(
                    "reload: {} pipeline definitions since start exceed the {} slots; restart the daemon",
                    first + added.len(),
                    self.stages.metrics.pipelines.len()
                ),
            }
            .into());
        }
        // Build what the added pipelines deliver to, before anything changes for the others.
        let items: Vec<(usize, &PipelineConfig)> = added
            .iter()
            .enumerate()
            .map(|(k, p)| (first + k, p))
            .collect();
        for (i, p) in &items {
            let _ = self.stages.metrics.pipelines[*i].name.set(p.name.clone());
        }
        let built = self.stages.build(&items, &report.writeback).await?;
        let mut all = self.all.clone();
        let mut active = self.active.clone();
        let mut route_to = self.route_to.clone();
        let mut enrich_tx = self.enrich_tx.clone();
        all.extend(added.iter().cloned());
        active.resize(all.len(), true);
        route_to.resize(all.len(), usize::MAX);
        enrich_tx.resize(all.len(), None);
        for &i in &removed {
            active[i] = false;
            // Dropping the stage's input lets it drain what it holds, then end.
            enrich_tx[i] = None;
        }
        for (i, r) in built.route_to {
            route_to[i] = r;
        }
        for (i, tx) in built.enrich_tx {
            enrich_tx[i] = Some(tx);
        }
        let router = Router::with_active(all.clone(), &active);
        {
            let mut t = self.tables.write().unwrap_or_else(|p| p.into_inner());
            t.extend(router.tables());
            t.extend(self.signal.clone());
        }
        let (done_tx, done_rx) = oneshot::channel();
        let swap = Swap {
            router,
            route_to: route_to.clone(),
            enrich_tx: enrich_tx.clone(),
            done: done_tx,
        };
        if self.swaps.send(swap).is_err() || self.wake.send(Vec::new()).await.is_err() {
            return Err(AppError::Reload(
                "the pipeline stage ended before the reload took effect".into(),
            ));
        }
        // The pipeline stage may be busy with a batch; the swap waits for its end.
        if tokio::time::timeout(Duration::from_secs(300), done_rx)
            .await
            .is_err()
        {
            tracing::warn!(
                "the pipeline stage has not taken the reload yet; it will at its next batch"
            );
        }
        for &i in &removed {
            self.stages.metrics.pipelines[i]
                .retired
                .store(true, Ordering::Relaxed);
        }
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(built.tasks);
        {
            let mut s = self.slots.write().unwrap_or_else(|p| p.into_inner());
            s.resize(all.len(), None);
            for &i in &removed {
                s[i] = None;
            }
            for (i, p) in &items {
                s[*i] = Some((*p).clone());
            }
        }
        if let Some(asks) = &self.asks {
            for (i, p) in &items {
                if p.snapshot == crate::config::pipeline::SnapshotMode::Initial {
                    let _ = asks.send(Ask::Job(Job {
                        pipeline: *i,
                        request: None,
                        filter: None,
                        after: None,
                        rows_done: 0,
                    }));
                }
            }
        }
        let names = |ix: &mut dyn Iterator<Item = &PipelineConfig>| {
            ix.map(|p| p.name.clone()).collect::<Vec<_>>().join(", ")
        };
        tracing::info!(
            removed = %names(&mut removed.iter().map(|i| &all[*i])),
            added = %names(&mut added.iter()),
            "pipelines reloaded"
        );
        self.all = all;
        self.active = active;
        self.route_to = route_to;
        self.enrich_tx = enrich_tx;
        Ok(())
    }
}
