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
use crate::pipeline::stage::{Route, Swap};
use crate::pipeline::Router;
use crate::snapshot::PipelineSlots;
use crate::source::snapshot::{Ask, Job};
use crate::source::SourceEvent;

/// The tables the binlog decoder decodes, shared with its filter.
pub type Tables = Arc<std::sync::RwLock<HashSet<(String, String)>>>;

pub struct Reloader {
    pub cfg: Config,
    pub stages: Stages,
    /// Every pipeline the process has known, by its stable index.
    pub all: Vec<PipelineConfig>,
    pub active: Vec<bool>,
    /// Where each pipeline's records go, by index.
    pub routes: Vec<Route>,
    pub tasks: Arc<std::sync::Mutex<Vec<super::outputs::StageTask>>>,
    pub tables: Tables,
    /// Hands the binlog source the tables of added pipelines (it reads their definitions, then
    /// their rows, from a point it marks in the stream).
    pub tables_added: Arc<crate::source::mysql::stream::TablesToAdd>,
    /// The backfill signal table, decoded whatever the pipelines.
    pub signal: Option<(String, String)>,
    pub slots: PipelineSlots,
    /// The backfill coordinator, for added pipelines with `snapshot: initial`.
    pub asks: Option<mpsc::UnboundedSender<Ask>>,
    pub swaps: std::sync::mpsc::Sender<Swap>,
    /// Wakes an idle pipeline stage (an empty batch) so that the swap happens now.
    pub wake: mpsc::Sender<Vec<SourceEvent>>,
}

/// What a reload changes: the pipelines removed (by index) and added (with their new index).
struct Change {
    removed: Vec<usize>,
    added: Vec<(usize, PipelineConfig)>,
}

impl Reloader {
    /// Reads and checks the pipelines folder again, then swaps the changed pipelines in. A
    /// refused reload changes nothing.
    pub async fn reload(&mut self) -> Result<(), AppError> {
        let new = self.cfg.load_pipelines()?;
        let report = crate::precheck::run(&self.cfg, &new, None).await?;
        if !report.failures.is_empty() {
            for f in &report.failures {
                tracing::error!(problem = %f.problem, fix = %f.fix, "reload check failed");
            }
            return Err(AppError::Preflight(report.failures.len()));
        }
        let Some(change) = self.diff(&new)? else {
            tracing::info!("reload: the pipelines are unchanged");
            return Ok(());
        };
        let items: Vec<(usize, &PipelineConfig)> =
            change.added.iter().map(|(i, p)| (*i, p)).collect();
        for (i, p) in &items {
            let _ = self.stages.metrics.pipelines[*i].name.set(p.name.clone());
        }
        let reenrich = self.lineage_changes(&change).await;
        // Build what the added pipelines deliver to, before anything changes for the others.
        let built = self.stages.build(&items, &report.writeback).await?;
        let mut all = self.all.clone();
        let mut active = self.active.clone();
        let mut routes = self.routes.clone();
        all.extend(change.added.iter().map(|(_, p)| p.clone()));
        active.resize(all.len(), true);
        routes.resize(all.len(), Route::default());
        for &i in &change.removed {
            active[i] = false;
            // Dropping the stage's input lets it drain what it holds, then end.
            routes[i] = Route::default();
        }
        for (i, r) in built.routes {
            routes[i] = r;
        }
        self.swap(Router::with_active(all.clone(), &active), routes.clone())
            .await?;
        self.after_swap(&change, built.tasks, all.len());
        self.start_reenrichments(reenrich);
        let names = |ix: &mut dyn Iterator<Item = &PipelineConfig>| {
            ix.map(|p| p.name.clone()).collect::<Vec<_>>().join(", ")
        };
        tracing::info!(
            removed = %names(&mut change.removed.iter().map(|i| &all[*i])),
            added = %names(&mut change.added.iter().map(|(_, p)| p)),
            "pipelines reloaded"
        );
        self.all = all;
        self.active = active;
        self.routes = routes;
        Ok(())
    }

    /// The live pipelines the new definitions drop or change, and the new ones (a changed
    /// pipeline is both); `None` when nothing changed.
    fn diff(&self, new: &[PipelineConfig]) -> Result<Option<Change>, AppError> {
        let live: Vec<usize> = (0..self.all.len()).filter(|i| self.active[*i]).collect();
        let removed: Vec<usize> = live
            .iter()
            .copied()
            .filter(|i| !new.contains(&self.all[*i]))
            .collect();
        let first = self.all.len();
        let added: Vec<(usize, PipelineConfig)> = new
            .iter()
            .filter(|n| !live.iter().any(|i| self.all[*i] == **n))
            .enumerate()
            .map(|(k, p)| (first + k, p.clone()))
            .collect();
        if removed.is_empty() && added.is_empty() {
            return Ok(None);
        }
        let slots = self.stages.metrics.pipelines.len();
        if first + added.len() > slots {
            return Err(ConfigError::File {
                file: self.cfg.path.display().to_string(),
                message: format!(
                    "reload: {} pipeline definitions since start exceed the {slots} slots; restart the daemon",
                    first + added.len(),
                ),
            }
            .into());
        }
        Ok(Some(Change { removed, added }))
    }

    /// Hands the new router and routes to the pipeline stage and waits (up to 5 minutes) until
    /// it took them, between two batches.
    async fn swap(&self, router: Router, routes: Vec<Route>) -> Result<(), AppError> {
        let added: Vec<(String, String)> = {
            let t = self.tables.read().unwrap_or_else(|p| p.into_inner());
            let mut new: Vec<_> = router.tables();
            new.extend(self.signal.clone());
            new.into_iter().filter(|x| !t.contains(x)).collect()
        };
        let (done_tx, done_rx) = oneshot::channel();
        let swap = Swap {
            router,
            routes,
            done: done_tx,
            at_tables_added: !added.is_empty(),
        };
        // New tables: the source marks where it starts reading them, and the swap is there.
        // Otherwise an empty batch wakes an idle stage to swap now.
        let handed = self.swaps.send(swap).is_ok()
            && match added.is_empty() {
                false => {
                    self.tables_added.add(added);
                    true
                }
                true => self.wake.send(Vec::new()).await.is_ok(),
            };
        if !handed {
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
        Ok(())
    }

    /// The changed pipelines that ask to be enriched again when their lineage changes and whose
    /// lineage did: (new index, the backfill's filter).
    async fn lineage_changes(&self, change: &Change) -> Vec<(usize, Option<String>)> {
        let mut out = Vec::new();
        for (i, p) in &change.added {
            if !p.enrichment.as_ref().is_some_and(|e| e.reenrich_on_change) {
                continue;
            }
            let old = change.removed.iter().map(|r| &self.all[*r]);
            let Some(old) = old.clone().find(|o| o.name == p.name) else {
                continue;
            };
            let was = super::reenrich::current_lineage(old).await.ok();
            let now = super::reenrich::current_lineage(p).await.ok();
            let (Some(was), Some(now)) = (was, now) else {
                continue;
            };
            if was != now {
                let (filter, rows) = super::reenrich::stale_rows(p, &now, None);
                tracing::info!(pipeline = %p.name, was = %was, now = %now, rows = %rows,
                    "the reload changed the pipeline's lineage; it is enriched again (reenrich_on_change)");
                out.push((*i, filter));
            }
        }
        out
    }

    /// Asks the backfill coordinator for the re-enrichments a reload started.
    fn start_reenrichments(&self, jobs: Vec<(usize, Option<String>)>) {
        if jobs.is_empty() {
            return;
        }
        let Some(asks) = &self.asks else {
            tracing::warn!(
                "reenrich_on_change needs a `snapshot:` section (its signal table); nothing was started"
            );
            return;
        };
        for (pipeline, filter) in jobs {
            let _ = asks.send(Ask::Job(Job {
                pipeline,
                request: None,
                filter,
                after: None,
                after_key: None,
                rows_done: 0,
            }));
        }
    }

    /// Retires the removed pipelines' metrics, keeps the new stages' tasks, updates the
    /// backfill coordinator's view, and asks it for the added pipelines' initial backfills.
    fn after_swap(&self, change: &Change, tasks: Vec<super::outputs::StageTask>, n: usize) {
        for &i in &change.removed {
            self.stages.metrics.pipelines[i]
                .retired
                .store(true, Ordering::Relaxed);
        }
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(tasks);
        {
            let mut s = self.slots.write().unwrap_or_else(|p| p.into_inner());
            s.resize(n, None);
            for &i in &change.removed {
                s[i] = None;
            }
            for (i, p) in &change.added {
                s[*i] = Some(p.clone());
            }
        }
        let Some(asks) = &self.asks else {
            return;
        };
        for (i, p) in &change.added {
            if p.snapshot == crate::config::pipeline::SnapshotMode::Initial {
                let _ = asks.send(Ask::Job(Job {
                    pipeline: *i,
                    request: None,
                    filter: None,
                    after: None,
                    after_key: None,
                    rows_done: 0,
                }));
            }
        }
    }
}
