//! The indexer's and the search API's Prometheus metrics. Labels are bounded: partition (the
//! topic's partition count), malformed reason and endpoint (fixed lists).

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::mapping::Malformed;
use crate::metrics_view::Refused;

#[derive(Clone)]
pub struct IndexerMetrics {
    pub documents_indexed: IntCounter,
    pub duplicates_skipped: IntCounter,
    pub log_restarts: IntCounter,
    pub offsets_gone: IntCounter,
    pub malformed: IntCounterVec,
    pub commit_seconds: Histogram,
    pub freshness_seconds: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub partitions_owned: IntGauge,
    pub partitions_waiting: IntGauge,
    pub index_bytes: IntGauge,
    pub buckets_deleted: IntCounter,
    pub errors: IntCounterVec,
}

impl IndexerMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            documents_indexed: IntCounter::new(
                "sluice_indexer_documents_indexed_total",
                "Documents committed to the partition indexes",
            )?,
            duplicates_skipped: IntCounter::new(
                "sluice_indexer_duplicates_skipped_total",
                "Records skipped because their id was already indexed",
            )?,
            log_restarts: IntCounter::new(
                "sluice_indexer_log_restarts_total",
                "Times a partition's log began again below what its index held (the topic \
                 deleted and made again, or the broker's data new): indexed from its start",
            )?,
            offsets_gone: IntCounter::new(
                "sluice_indexer_offsets_gone_total",
                "Offsets of the log gone when the indexer read on, never indexed: deleted by the \
                 broker's retention while the indexer was behind or away (or compacted away)",
            )?,
            malformed: IntCounterVec::new(
                Opts::new(
                    "sluice_indexer_malformed_records_total",
                    "Records indexed despite bad input, by what was wrong",
                ),
                &["reason"],
            )?,
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "sluice_indexer_commit_duration_seconds",
                    "Duration of one partition index commit",
                )
                .buckets(exponential_buckets(0.001, 2.0, 14)?),
            )?,
            freshness_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "sluice_indexer_freshness_seconds",
                    "From a record's Kafka timestamp to the commit that made it searchable",
                )
                // Up to an hour: a backlog after a restart or an outage is when it matters.
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0,
                    900.0, 3600.0,
                ]),
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "sluice_indexer_consumer_lag",
                    "Records in the partition not yet committed to its index",
                ),
                &["partition"],
            )?,
            partitions_owned: IntGauge::new(
                "sluice_indexer_partitions_owned",
                "Partitions this process indexes",
            )?,
            partitions_waiting: IntGauge::new(
                "sluice_indexer_partitions_waiting",
                "Partitions assigned to this process whose index is not open (held by another \
                 process, or failed): nothing of them is indexed until it opens",
            )?,
            index_bytes: IntGauge::new(
                "sluice_indexer_index_bytes",
                "Bytes of the indexes this process owns",
            )?,
            buckets_deleted: IntCounter::new(
                "sluice_indexer_buckets_deleted_total",
                "Index time buckets deleted by retention",
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "sluice_indexer_errors_total",
                    "Failures of the indexer, by stage (consume; open: an index not available; index: a \
                     partition worker failed indexing, committing or in retention, and is reopened)",
                ),
                &["stage"],
            )?,
        };
        registry.register(Box::new(metrics.documents_indexed.clone()))?;
        registry.register(Box::new(metrics.duplicates_skipped.clone()))?;
        registry.register(Box::new(metrics.log_restarts.clone()))?;
        registry.register(Box::new(metrics.offsets_gone.clone()))?;
        registry.register(Box::new(metrics.malformed.clone()))?;
        registry.register(Box::new(metrics.commit_seconds.clone()))?;
        registry.register(Box::new(metrics.freshness_seconds.clone()))?;
        registry.register(Box::new(metrics.consumer_lag.clone()))?;
        registry.register(Box::new(metrics.partitions_owned.clone()))?;
        registry.register(Box::new(metrics.partitions_waiting.clone()))?;
        registry.register(Box::new(metrics.index_bytes.clone()))?;
        registry.register(Box::new(metrics.buckets_deleted.clone()))?;
        registry.register(Box::new(metrics.errors.clone()))?;
        for reason in Malformed::ALL {
            metrics.malformed.with_label_values(&[reason.label()]);
        }
        for stage in ["consume", "open", "index"] {
            metrics.errors.with_label_values(&[stage]);
        }
        Ok(metrics)
    }
}

#[derive(Clone)]
pub struct SearchMetrics {
    pub duration_seconds: HistogramVec,
    pub requests: IntCounterVec,
}

impl SearchMetrics {
    pub const ENDPOINTS: [&'static str; 4] = ["search", "histogram", "fields", "tail"];

    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_search_duration_seconds",
                    "Time to answer a search API request",
                )
                .buckets(exponential_buckets(0.0005, 2.0, 16)?),
                &["endpoint"],
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "sluice_search_requests_total",
                    "Search API requests by endpoint and outcome (ok, bad_request, refused: a limit \
                     or a shutdown, error)",
                ),
                &["endpoint", "outcome"],
            )?,
        };
        registry.register(Box::new(metrics.duration_seconds.clone()))?;
        registry.register(Box::new(metrics.requests.clone()))?;
        for endpoint in Self::ENDPOINTS {
            metrics.duration_seconds.with_label_values(&[endpoint]);
            for outcome in ["ok", "bad_request", "refused", "error"] {
                metrics.requests.with_label_values(&[endpoint, outcome]);
            }
        }
        Ok(metrics)
    }
}

/// The metrics view's own metrics.
#[derive(Clone)]
pub struct ViewMetrics {
    pub series: IntGauge,
    pub samples: IntCounter,
    pub refused: IntCounterVec,
    pub expired: IntCounter,
}

impl ViewMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self {
            series: IntGauge::new(
                "sluice_metrics_view_series",
                "Series the metrics view holds",
            )?,
            samples: IntCounter::new(
                "sluice_metrics_view_samples_total",
                "Agent samples the metrics view took",
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "sluice_metrics_view_samples_refused_total",
                    "Agent samples the metrics view did not take, by reason",
                ),
                &["reason"],
            )?,
            expired: IntCounter::new(
                "sluice_metrics_view_series_expired_total",
                "Series dropped because no agent reported them for expire_after_ms",
            )?,
        };
        registry.register(Box::new(metrics.series.clone()))?;
        registry.register(Box::new(metrics.samples.clone()))?;
        registry.register(Box::new(metrics.refused.clone()))?;
        registry.register(Box::new(metrics.expired.clone()))?;
        for reason in Refused::ALL {
            metrics.refused.with_label_values(&[reason.label()]);
        }
        Ok(metrics)
    }
}
