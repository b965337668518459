//! The metrics view: reads the `metrics` topic the agents ship their samples to, keeps the latest
//! sample of every series (`store`) and serves them at `/metrics/agents` for Prometheus to scrape
//! with `honor_labels: true`.
//!
//! It reads every partition itself, outside any group: each view sees every series, and a
//! restarted view starts `expire_after_ms` back in the topic, so it shows what the agents last
//! said at once instead of after their next interval.

mod store;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::IndexerConfig;
use crate::config::MetricsViewConfig;
use crate::kafka::{self, ensure_topic};
use crate::metrics::ViewMetrics;
pub use store::Refused;
use store::SeriesStore;

/// How often the view looks for partitions added to the topic, and expires series.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

pub struct MetricsView {
    config: MetricsViewConfig,
    store: Arc<Mutex<SeriesStore>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsView {
    /// An empty view; its router serves it at once, `start` fills it.
    pub fn new(config: &MetricsViewConfig) -> Self {
        Self {
            config: config.clone(),
            store: Arc::new(Mutex::new(SeriesStore::new(config.max_series))),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    /// Creates the topic when missing (with the indexer's partition count) and starts reading
    /// it from the indexer's brokers.
    pub async fn start(
        &mut self,
        indexer: &IndexerConfig,
        metrics: ViewMetrics,
    ) -> anyhow::Result<()> {
        let topic = self.config.topic.clone();
        ensure_topic(indexer, &topic, indexer.topic_partitions).await?;
        // Only assigned, never subscribed: no group is joined and nothing is committed.
        let own = [
            ("group.id", "sluice-metrics-view"),
            ("client.id", "sluice-metrics-view"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
        ];
        let consumer: BaseConsumer<kafka::Quiet> = kafka::client(indexer, &own)
            .create_with_context(kafka::Quiet::of(indexer))
            .map_err(|e| anyhow::anyhow!("metrics view consumer: {e}"))?;
        let reader = Reader {
            consumer,
            topic: topic.clone(),
            expire_after: Duration::from_millis(self.config.expire_after_ms),
            store: self.store.clone(),
            metrics,
            assigned: 0,
        };
        let stop = self.stop.clone();
        self.thread = Some(
            std::thread::Builder::new()
                .name("sluice-metrics-view".into())
                .spawn(move || reader.run(&stop))?,
        );
        tracing::info!(%topic, "metrics view started");
        Ok(())
    }

    /// `/metrics/agents`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/metrics/agents", get(serve))
            .with_state(self.store.clone())
    }

    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

async fn serve(State(store): State<Arc<Mutex<SeriesStore>>>) -> impl IntoResponse {
    let text = store.lock().unwrap_or_else(|e| e.into_inner()).render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

struct Reader {
    consumer: BaseConsumer<kafka::Quiet>,
    topic: String,
    expire_after: Duration,
    store: Arc<Mutex<SeriesStore>>,
    metrics: ViewMetrics,
    /// Partitions assigned so far (they are numbered from 0 and never removed).
    assigned: i32,
}

impl Reader {
    fn run(mut self, stop: &AtomicBool) {
        let mut last_refresh: Option<Instant> = None;
        let mut last_expiry = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            // A topic just created may not show its partitions yet: look again soon.
            let every = if self.assigned == 0 {
                Duration::from_secs(1)
            } else {
                REFRESH_EVERY
            };
            if last_refresh.is_none_or(|t| t.elapsed() >= every) {
                last_refresh = Some(Instant::now());
                if let Err(e) = self.assign_new_partitions() {
                    tracing::warn!(error = %e, "metrics view: assigning partitions");
                }
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    let payload = message.payload().unwrap_or_default();
                    let result = self.store().apply(payload, Instant::now());
                    match result {
                        Ok(()) => self.metrics.samples.inc(),
                        Err(refused) => self
                            .metrics
                            .refused
                            .with_label_values(&[refused.label()])
                            .inc(),
                    }
                }
                Some(Err(e)) => tracing::debug!(error = %e, "metrics view: consuming"),
                None => {}
            }
            if last_expiry.elapsed() >= EXPIRE_EVERY {
                last_expiry = Instant::now();
                let mut store = self.store();
                let expired = store.expire(Instant::now(), self.expire_after);
                self.metrics.expired.inc_by(expired as u64);
                self.metrics.series.set(store.len() as i64);
            }
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, SeriesStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Assigns the partitions not yet read, each from `expire_after` ago (its end when nothing
    /// is that recent).
    fn assign_new_partitions(&mut self) -> anyhow::Result<()> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(5))?;
        let count = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
        if count <= self.assigned {
            return Ok(());
        }
        let since = crate::consumer::now_ms() - self.expire_after.as_millis() as i64;
        let mut wanted = TopicPartitionList::new();
        for partition in self.assigned..count {
            wanted.add_partition_offset(&self.topic, partition, Offset::Offset(since))?;
        }
        let starts = self
            .consumer
            .offsets_for_times(wanted, Duration::from_secs(10))?;
        let mut new = TopicPartitionList::new();
        for element in starts.elements() {
            let start = match element.offset() {
                Offset::Offset(offset) => Offset::Offset(offset),
                _ => Offset::End,
            };
            new.add_partition_offset(&self.topic, element.partition(), start)?;
        }
        self.consumer.incremental_assign(&new)?;
        tracing::info!(
            partitions = count,
            "metrics view: reading the metrics topic"
        );
        self.assigned = count;
        Ok(())
    }
}
