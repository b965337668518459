//! The broker's Prometheus metrics. Labels are bounded: topic and partition (operator-created),
//! API name (a fixed list), error kind (a fixed list).

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};

#[derive(Clone)]
pub struct BrokerMetrics {
    pub bytes_in: IntCounterVec,
    pub records_in: IntCounterVec,
    pub bytes_out: IntCounterVec,
    pub records_out: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub fsync_seconds: Histogram,
    pub fsync_batch_writes: Histogram,
    pub log_end_offset: IntGaugeVec,
    pub log_size_bytes: IntGaugeVec,
    pub io_backend: IntGaugeVec,
    pub protocol_errors: IntCounterVec,
    pub produce_refused: IntCounterVec,
    pub corrupt_reads: IntCounterVec,
    pub segments_deleted: IntCounterVec,
    pub connections: IntGaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub records_compacted: IntCounterVec,
}

impl BrokerMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let topic = &["topic"];
        let topic_partition = &["topic", "partition"];
        let metrics = Self {
            bytes_in: IntCounterVec::new(
                Opts::new(
                    "sluice_broker_bytes_in_total",
                    "Record batch bytes appended",
                ),
                topic,
            )?,
            records_in: IntCounterVec::new(
                Opts::new("sluice_broker_records_in_total", "Records appended"),
                topic,
            )?,
            bytes_out: IntCounterVec::new(
                Opts::new(
                    "sluice_broker_bytes_out_total",
                    "Record batch bytes served to fetches",
                ),
                topic,
            )?,
            records_out: IntCounterVec::new(
                Opts::new(
                    "sluice_broker_records_out_total",
                    "Records served to fetches",
                ),
                topic,
            )?,
            request_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_broker_request_duration_seconds",
                    "Time from a request's arrival to its response, per Kafka API",
                )
                .buckets(exponential_buckets(0.0001, 2.0, 16)?),
                &["api"],
            )?,
            fsync_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "sluice_broker_fsync_duration_seconds",
                    "Duration of one group-commit fdatasync cycle",
                )
                .buckets(exponential_buckets(0.00005, 2.0, 16)?),
            )?,
            fsync_batch_writes: Histogram::with_opts(
                HistogramOpts::new(
                    "sluice_broker_fsync_batch_writes",
                    "Durable writes made durable by one group-commit cycle",
                )
                .buckets(exponential_buckets(1.0, 2.0, 12)?),
            )?,
            log_end_offset: IntGaugeVec::new(
                Opts::new("sluice_broker_log_end_offset", "Next offset to be written"),
                topic_partition,
            )?,
            log_size_bytes: IntGaugeVec::new(
                Opts::new("sluice_broker_log_size_bytes", "Bytes of log on disk"),
                topic_partition,
            )?,
            io_backend: IntGaugeVec::new(
                Opts::new(
                    "sluice_broker_io_backend",
                    "Storage I/O backend in use (1 = this one)",
                ),
                &["backend"],
            )?,
            protocol_errors: IntCounterVec::new(
                Opts::new(
                    "sluice_broker_protocol_errors_total",
                    "Connections closed for bad input, by kind",
                ),
                &["kind"],
            )?,
            produce_refused: IntCounterVec::new(
                Opts::new(
                    "sluice_broker_produce_refused_total",
                    "Partition produces refused, by Kafka error",
                ),
                &["error"],
            )?,
            corrupt_reads: IntCounterVec::new(
                Opts::new(
                    "sluice_broker_corrupt_batches_total",
                    "Corrupt batches found while reading the log (never served)",
                ),
                topic,
            )?,
            segments_deleted: IntCounterVec::new(
                Opts::new(
                    "sluice_broker_segments_deleted_total",
                    "Segments deleted by retention",
                ),
                topic,
            )?,
            connections: IntGaugeVec::new(
                Opts::new("sluice_broker_connections", "Open client connections"),
                &["listener"],
            )?,
            records_compacted: IntCounterVec::new(
                Opts::new(
                    "sluice_broker_records_compacted_total",
                    "Superseded records and expired tombstones removed by compaction",
                ),
                topic,
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "sluice_broker_consumer_lag",
                    "Records between a group's committed offset and the log end",
                ),
                &["group", "topic", "partition"],
            )?,
        };
        registry.register(Box::new(metrics.consumer_lag.clone()))?;
        registry.register(Box::new(metrics.records_compacted.clone()))?;
        registry.register(Box::new(metrics.bytes_in.clone()))?;
        registry.register(Box::new(metrics.records_in.clone()))?;
        registry.register(Box::new(metrics.bytes_out.clone()))?;
        registry.register(Box::new(metrics.records_out.clone()))?;
        registry.register(Box::new(metrics.request_seconds.clone()))?;
        registry.register(Box::new(metrics.fsync_seconds.clone()))?;
        registry.register(Box::new(metrics.fsync_batch_writes.clone()))?;
        registry.register(Box::new(metrics.log_end_offset.clone()))?;
        registry.register(Box::new(metrics.log_size_bytes.clone()))?;
        registry.register(Box::new(metrics.io_backend.clone()))?;
        registry.register(Box::new(metrics.protocol_errors.clone()))?;
        registry.register(Box::new(metrics.produce_refused.clone()))?;
        registry.register(Box::new(metrics.corrupt_reads.clone()))?;
        registry.register(Box::new(metrics.segments_deleted.clone()))?;
        registry.register(Box::new(metrics.connections.clone()))?;
        // Error counters exist at zero from the start, so dashboards and alerts see a series
        // (and a rate of 0) before the first error.
        for kind in [
            "malformed",
            "unknown_api",
            "unsupported_version",
            "bad_frame_size",
            "encode",
            "slow_request",
            "io",
            "acks0_refused",
        ] {
            metrics.protocol_errors.with_label_values(&[kind]);
        }
        for error in [
            "KafkaStorageError",
            "MessageTooLarge",
            "CorruptMessage",
            "UnknownTopicOrPartition",
            "OutOfOrderSequenceNumber",
            "InvalidProducerEpoch",
            "UnknownProducerId",
        ] {
            metrics.produce_refused.with_label_values(&[error]);
        }
        Ok(metrics)
    }

    fn per_topic(&self) -> [&IntCounterVec; 7] {
        [
            &self.bytes_in,
            &self.records_in,
            &self.bytes_out,
            &self.records_out,
            &self.corrupt_reads,
            &self.segments_deleted,
            &self.records_compacted,
        ]
    }

    /// A topic's counters exist at zero from its opening, as the error counters do.
    pub fn topic_opened(&self, topic: &str) {
        for counter in self.per_topic() {
            counter.with_label_values(&[topic]);
        }
    }

    /// A deleted topic's series go with it: clients may make and delete topics of any name.
    pub fn topic_deleted(&self, topic: &str, partitions: usize) {
        for counter in self.per_topic() {
            let _ = counter.remove_label_values(&[topic]);
        }
        for partition in 0..partitions {
            let partition = partition.to_string();
            let _ = self
                .log_end_offset
                .remove_label_values(&[topic, &partition]);
            let _ = self
                .log_size_bytes
                .remove_label_values(&[topic, &partition]);
        }
    }
}
