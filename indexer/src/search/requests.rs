//! The four questions the API asks of the indexes: hits, counts over time, field values, and
//! what arrived since the last look (the live tail).

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use serde::Serialize;
use serde_json::Value;
use tantivy::aggregation::agg_req::Aggregations;
use tantivy::aggregation::intermediate_agg_result::IntermediateAggregationResults;
use tantivy::aggregation::{
    AggContextParams, AggregationLimitsGuard, DistributedAggregationCollector,
};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{BooleanQuery, Query, RangeQuery};
use tantivy::schema::{Type, Value as _};
use tantivy::{DocAddress, DocId, Order, SegmentReader, TantivyDocument, Term};

use super::{time, QuerySpec, SearchError, SearchService, View};
use crate::schema;

#[derive(Debug, Serialize)]
pub struct Hit {
    pub timestamp: String,
    pub partition: u64,
    pub offset: u64,
    /// The indexed event: the record's JSON object, or `{"message": ...}` for plain text.
    pub event: Value,
}

#[derive(Debug, Serialize)]
pub struct SearchResult {
    pub total: u64,
    pub hits: Vec<Hit>,
    /// Fewer hits than asked for, to keep the answer under `MAX_ANSWER_BYTES`: the next page
    /// starts after the last one given.
    pub cut: bool,
}

/// Bytes of events one search or tail call answers with at most (a thousand 1 MiB events would
/// be a gigabyte); at least one hit is always given.
const MAX_ANSWER_BYTES: usize = 16 << 20;

#[derive(Debug, Serialize)]
pub struct HistogramBucket {
    pub start: String,
    pub start_ms: i64,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct TopValue {
    pub value: Value,
    pub count: u64,
}

/// What `fields` found.
#[derive(Debug, Serialize)]
pub struct Fields {
    /// Matching documents.
    pub total: u64,
    /// Whether every field the index knows was looked at and every one the matching documents
    /// have is here (false: ask for more with a larger limit, or narrow the query).
    pub complete: bool,
    /// Fields the index knows.
    pub known: usize,
    pub fields: Vec<FieldSummary>,
}

#[derive(Debug, Serialize)]
pub struct FieldSummary {
    pub name: String,
    pub values: Vec<TopValue>,
}

/// Where the live tail has read up to, per partition, and the partition whose turn comes first
/// at the next call (so that a bounded answer does not always favour the low partitions).
#[derive(Debug, Default, Clone)]
pub struct TailCursor(BTreeMap<i32, u64>, i32);

/// Most buckets a histogram may have; more is a request for a coarser interval.
const MAX_BUCKETS: i64 = 10_000;
/// Buckets an automatic interval aims for.
const AUTO_BUCKETS: i64 = 100;
/// Fields one aggregation request summarises.
const FIELDS_AT_ONCE: usize = 50;
/// Fields `fields` looks at, at most, for ones the matching documents have: JSON events can
/// carry thousands of keys.
const MAX_FIELDS_LOOKED_AT: usize = 1000;
const TOP_VALUES: usize = 10;
/// Documents one tail poll returns per partition.
const TAIL_BATCH: usize = 1000;

impl SearchService {
    /// Newest-first hits and the total count.
    pub fn search(
        &self,
        spec: &QuerySpec,
        limit: usize,
        offset: usize,
    ) -> Result<SearchResult, SearchError> {
        let limit = limit.min(self.limits().max_limit);
        if offset.saturating_add(limit) > self.limits().max_window {
            return Err(SearchError::BadRequest(format!(
                "offset + limit may not pass {} (narrow the query or the time range)",
                self.limits().max_window
            )));
        }
        let query = self.build_query(spec)?;
        let views = self.views()?;
        // Newest first; ties (a batch shares its timestamp) go by partition and offset, so pages
        // never overlap.
        let collector = (
            TopDocs::with_limit((offset + limit).max(1)).order_by(time_then_offset),
            Count,
        );
        let mut total = 0;
        let mut ranked: Vec<((i64, i32, u64), usize, DocAddress)> = Vec::new();
        for (i, view) in views.iter().enumerate() {
            let (top, count) = view.searcher.search(&query, &collector)?;
            total += count as u64;
            ranked.extend(
                top.into_iter()
                    .map(|((ms, offset), address)| ((ms, view.partition, offset), i, address)),
            );
            // Keep memory to one page's depth however many bucket indexes there are.
            ranked.sort_by_key(|hit| std::cmp::Reverse(hit.0));
            ranked.truncate(offset + limit);
        }
        let (mut hits, mut bytes, mut cut) = (Vec::new(), 0, false);
        for ((ms, _, _), i, address) in ranked.into_iter().skip(offset).take(limit) {
            if bytes >= MAX_ANSWER_BYTES {
                cut = true;
                break;
            }
            let (hit, size) = self.hit(&views[i], ms, address)?;
            bytes += size;
            hits.push(hit);
        }
        Ok(SearchResult { total, hits, cut })
    }

    /// The hit, and the size of its event.
    fn hit(&self, view: &View, ms: i64, address: DocAddress) -> Result<(Hit, usize), SearchError> {
        let doc: TantivyDocument = view.searcher.doc(address)?;
        let schema = self.schema();
        let number = |field| doc.get_first(field).and_then(|v| v.as_u64()).unwrap_or(0);
        let source = doc
            .get_first(schema.source_doc)
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let hit = Hit {
            timestamp: time::format_ms(ms),
            partition: number(schema.partition),
            offset: number(schema.offset),
            event: serde_json::from_str(source).unwrap_or_else(|_| Value::String(source.into())),
        };
        Ok((hit, source.len()))
    }

    /// Matching documents counted per time bucket, empty buckets included, with the interval
    /// used (`interval_ms`, or one chosen for the range; `None` when nothing matches).
    pub fn histogram(
        &self,
        spec: &QuerySpec,
        interval_ms: Option<i64>,
    ) -> Result<(Option<i64>, Vec<HistogramBucket>), SearchError> {
        let query = self.build_query(spec)?;
        let views = self.views()?;
        let Some((first, last)) = self.time_extent(spec, &views)? else {
            return Ok((interval_ms, Vec::new()));
        };
        let span = (last - first).max(1);
        let interval = match interval_ms {
            Some(ms) => ms,
            None => nice_interval(span / AUTO_BUCKETS),
        };
        // Tantivy keeps the interval in nanoseconds.
        if interval > i64::MAX / 1_000_000 {
            return Err(SearchError::BadRequest(format!(
                "interval {interval} ms is longer than a histogram can use"
            )));
        }
        if span / interval >= MAX_BUCKETS {
            return Err(SearchError::BadRequest(format!(
                "interval {interval} ms makes more than {MAX_BUCKETS} buckets over this range; \
                 use a longer interval"
            )));
        }
        let request = serde_json::json!({
            "histogram": { "date_histogram": {
                "field": "timestamp",
                "fixed_interval": format!("{interval}ms"),
                "min_doc_count": 0,
                "extended_bounds": { "min": first, "max": last },
            }}
        });
        let result = self.aggregate(&views, &query, request)?;
        let buckets = result["histogram"]["buckets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let buckets = buckets
            .iter()
            .filter_map(|bucket| {
                // Keys are milliseconds as floats from nanoseconds: 2 ms may come as 1.999...
                let start_ms = bucket["key"].as_f64()?.round() as i64;
                Some(HistogramBucket {
                    start: time::format_ms(start_ms),
                    start_ms,
                    count: bucket["doc_count"].as_u64().unwrap_or(0),
                })
            })
            .collect();
        Ok((Some(interval), buckets))
    }

    /// The range a histogram covers: the request's bounds, else the matching data's own.
    fn time_extent(
        &self,
        spec: &QuerySpec,
        views: &[View],
    ) -> Result<Option<(i64, i64)>, SearchError> {
        let mut first = i64::MAX;
        let mut last = i64::MIN;
        for view in views {
            for segment in view.searcher.segment_readers() {
                if segment.num_docs() == 0 {
                    continue;
                }
                let Ok(column) = segment.fast_fields().date("timestamp") else {
                    continue;
                };
                first = first.min(column.min_value().into_timestamp_millis());
                last = last.max(column.max_value().into_timestamp_millis());
            }
        }
        let first = spec.start_ms.unwrap_or(first);
        let last = match (spec.start_ms, spec.end_ms) {
            (_, Some(end)) => end - 1,
            // From a time on, and no end: up to now, empty buckets included, as `end=now`.
            (Some(_), None) => last.max(crate::consumer::now_ms() - 1),
            (None, None) => last,
        };
        Ok((first <= last).then_some((first, last)))
    }

    /// Up to `limit` field names with their most frequent values among the matching documents:
    /// the contract's own fields first, then JSON paths, the most common first (by the size of
    /// their columns), so that one event with thousands of keys does not push out the fields
    /// every event has. Fields no matching document has are left out and the next are looked
    /// at, up to `MAX_FIELDS_LOOKED_AT`.
    pub fn fields(&self, spec: &QuerySpec, limit: usize) -> Result<Fields, SearchError> {
        let query = self.build_query(spec)?;
        let views = self.views()?;
        let mut weights: HashMap<String, u64> = HashMap::new();
        for segment in views.iter().flat_map(|v| v.searcher.segment_readers()) {
            for field in segment.fields_metadata()? {
                let summarised = matches!(
                    field.typ,
                    Type::Str | Type::U64 | Type::I64 | Type::F64 | Type::Bool
                ) && !matches!(field.field_name.as_str(), "partition" | "offset");
                if let (true, Some(size)) = (summarised, field.fast_size) {
                    *weights.entry(field.field_name).or_default() += size.get_bytes();
                }
            }
        }
        let mut names: Vec<(String, u64)> = weights.into_iter().collect();
        names.sort_by(|(a, wa), (b, wb)| {
            (a.contains('.'), std::cmp::Reverse(*wa), a).cmp(&(
                b.contains('.'),
                std::cmp::Reverse(*wb),
                b,
            ))
        });
        let mut total = 0;
        for view in &views {
            total += view.searcher.search(&query, &Count)? as u64;
        }
        let known = names.len();
        let mut summaries = Vec::new();
        let mut looked_at = 0;
        for chunk in names.chunks(FIELDS_AT_ONCE) {
            if summaries.len() >= limit || looked_at >= MAX_FIELDS_LOOKED_AT {
                break;
            }
            looked_at += chunk.len();
            let request: serde_json::Map<String, Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, (name, _))| {
                    let agg = serde_json::json!({ "terms": { "field": name, "size": TOP_VALUES } });
                    (format!("f{i}"), agg)
                })
                .collect();
            let result = self.aggregate(&views, &query, Value::Object(request))?;
            for (i, (name, _)) in chunk.iter().enumerate() {
                let values: Vec<TopValue> = result[format!("f{i}")]["buckets"]
                    .as_array()
                    .map(|buckets| {
                        buckets
                            .iter()
                            .map(|b| TopValue {
                                value: b["key"].clone(),
                                count: b["doc_count"].as_u64().unwrap_or(0),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if !values.is_empty() && summaries.len() < limit {
                    summaries.push(FieldSummary {
                        name: name.clone(),
                        values,
                    });
                }
            }
        }
        Ok(Fields {
            total,
            complete: looked_at == known && summaries.len() < limit,
            known,
            fields: summaries,
        })
    }

    /// Runs a Tantivy aggregation request over every view and merges the results.
    fn aggregate(
        &self,
        views: &[View],
        query: &dyn Query,
        request: Value,
    ) -> Result<Value, SearchError> {
        let aggregations: Aggregations = serde_json::from_value(request)
            .map_err(|e| SearchError::BadRequest(format!("aggregation: {e}")))?;
        let limits = || AggregationLimitsGuard::new(Some(256 << 20), Some(MAX_BUCKETS as u32 + 1));
        let collector = DistributedAggregationCollector::from_aggs(
            aggregations.clone(),
            AggContextParams::new(limits(), schema::tokenizers()),
        );
        let mut merged: Option<IntermediateAggregationResults> = None;
        for view in views {
            let fruit = view
                .searcher
                .search(query, &collector)
                .map_err(aggregation_error)?;
            match merged.as_mut() {
                Some(merged) => merged.merge_fruits(fruit).map_err(aggregation_error)?,
                None => merged = Some(fruit),
            }
        }
        let Some(merged) = merged else {
            return Ok(Value::Null);
        };
        let result = merged
            .into_final_result(aggregations, limits())
            .map_err(aggregation_error)?;
        serde_json::to_value(result)
            .map_err(|e| SearchError::BadRequest(format!("aggregation: {e}")))
    }

    /// A cursor at the current end of every partition: the tail shows what comes after.
    pub fn tail_cursor(&self) -> Result<TailCursor, SearchError> {
        let mut cursor = TailCursor::default();
        for view in self.views()? {
            for segment in view.searcher.segment_readers() {
                if segment.num_docs() == 0 {
                    continue;
                }
                if let Ok(column) = segment.fast_fields().u64("offset") {
                    let end = cursor.0.entry(view.partition).or_insert(0);
                    *end = (*end).max(column.max_value() + 1);
                }
            }
        }
        Ok(cursor)
    }

    /// Matching documents committed since `cursor`, oldest first, and the cursor moved past them:
    /// at most `TAIL_BATCH` a bucket index and about `MAX_ANSWER_BYTES` of events, the rest
    /// left for the next call.
    pub fn tail(&self, spec: &QuerySpec, cursor: &mut TailCursor) -> Result<Vec<Hit>, SearchError> {
        let query = self.build_query(spec)?;
        let views = self.views()?;
        // (partition, offset, view, address) of every match, documents not loaded yet.
        let mut matches: Vec<(i32, u64, usize, DocAddress)> = Vec::new();
        // Per partition, the offset the cursor may not reach this time: where a view returned a
        // full batch it may hold more below what other buckets returned.
        let mut below: BTreeMap<i32, u64> = BTreeMap::new();
        for (i, view) in views.iter().enumerate() {
            let from = cursor.0.get(&view.partition).copied().unwrap_or(0);
            let after = RangeQuery::new(
                Bound::Included(Term::from_field_u64(self.schema().offset, from)),
                Bound::Unbounded,
            );
            let narrowed = BooleanQuery::intersection(vec![query.box_clone(), Box::new(after)]);
            let top = view.searcher.search(
                &narrowed,
                &TopDocs::with_limit(TAIL_BATCH).order_by_fast_field::<u64>("offset", Order::Asc),
            )?;
            if top.len() == TAIL_BATCH {
                if let Some((last, _)) = top.last() {
                    let end = below.entry(view.partition).or_insert(u64::MAX);
                    *end = (*end).min(last.unwrap_or(0) + 1);
                }
            }
            matches.extend(
                top.into_iter()
                    .map(|(offset, address)| (view.partition, offset.unwrap_or(0), i, address)),
            );
        }
        matches.retain(|(partition, offset, _, _)| {
            below.get(partition).is_none_or(|end| offset < end)
        });
        // Each partition's matches in offset order, the partitions taking turns: the first
        // match always loads, and no partition waits on another's flood.
        matches.sort_by_key(|(partition, offset, _, _)| (*partition, *offset));
        let mut turn: BTreeMap<i32, usize> = BTreeMap::new();
        let mut ranked: Vec<(usize, (i32, u64, usize, DocAddress))> = matches
            .into_iter()
            .map(|m| {
                let rank = turn.entry(m.0).or_insert(0);
                *rank += 1;
                (*rank, m)
            })
            .collect();
        let first = cursor.1;
        ranked.sort_by_key(|(rank, (partition, _, _, _))| (*rank, *partition < first, *partition));
        let (mut found, mut bytes) = (Vec::new(), 0);
        for (_, (partition, offset, i, address)) in ranked {
            if bytes >= MAX_ANSWER_BYTES || below.get(&partition).is_some_and(|end| offset >= *end)
            {
                // Left for the next call, and so is everything after it in its partition.
                let end = below.entry(partition).or_insert(u64::MAX);
                *end = (*end).min(offset);
                continue;
            }
            let view = &views[i];
            let ms = view
                .searcher
                .segment_reader(address.segment_ord)
                .fast_fields()
                .date("timestamp")?
                .first(address.doc_id)
                .map_or(0, |t| t.into_timestamp_millis());
            let (hit, size) = self.hit(view, ms, address)?;
            bytes += size;
            found.push((partition, offset, hit));
            cursor.1 = partition + 1;
        }
        found.sort_by_key(|(partition, offset, _)| (*partition, *offset));
        for (partition, offset, _) in &found {
            let end = cursor.0.entry(*partition).or_insert(0);
            *end = (*end).max(offset + 1);
        }
        Ok(found.into_iter().map(|(_, _, hit)| hit).collect())
    }
}

/// The sort key of a hit within one bucket index: (timestamp in ms, offset).
fn time_then_offset(segment: &SegmentReader) -> impl FnMut(DocId) -> (i64, u64) {
    let times = segment.fast_fields().date("timestamp").ok();
    let offsets = segment.fast_fields().u64("offset").ok();
    move |doc| {
        let ms = times
            .as_ref()
            .and_then(|c| c.first(doc))
            .map_or(i64::MIN, |t| t.into_timestamp_millis());
        let offset = offsets.as_ref().and_then(|c| c.first(doc)).unwrap_or(0);
        (ms, offset)
    }
}

/// Rounds a raw interval up to one people read easily (1s, 5s, 1m, 1h, 1d, ...).
fn nice_interval(raw_ms: i64) -> i64 {
    const STEPS: [i64; 16] = [
        1, 10, 100, 1_000, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000, 1_800_000, 3_600_000,
        10_800_000, 21_600_000, 43_200_000, 86_400_000,
    ];
    STEPS
        .iter()
        .copied()
        .find(|&step| step >= raw_ms)
        .unwrap_or_else(|| (raw_ms + 86_399_999) / 86_400_000 * 86_400_000)
}

/// An aggregation over its limits (buckets, memory) or malformed is the request's fault: a 400
/// that says so, not a 500.
fn aggregation_error(e: tantivy::TantivyError) -> SearchError {
    use tantivy::aggregation::AggregationError as Agg;
    match e {
        tantivy::TantivyError::AggregationError(
            e @ (Agg::MemoryExceeded { .. }
            | Agg::BucketLimitExceeded { .. }
            | Agg::InvalidRequest(_)
            | Agg::DateHistogramParseError(_)),
        ) => SearchError::BadRequest(format!(
            "aggregation: {e}; narrow the time range or the interval"
        )),
        e => SearchError::Internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::{aggregation_error, nice_interval, SearchError};

    /// Two partitions of twenty 900 KB events each: a tail call answers with about 16 MB,
    /// both partitions taking turns, and the calls after it give the rest, each event once.
    #[test]
    fn a_tail_answers_a_bounded_share_of_every_partition_and_goes_on_from_there() {
        use super::super::{QuerySpec, SearchLimits, SearchService};
        use super::TailCursor;
        use crate::mapping::Record;
        use crate::partition::{PartitionIndex, WriterSettings};
        use crate::schema::LogSchema;
        let tmp = tempfile::tempdir().unwrap();
        let topic_dir = crate::layout::topic_dir(tmp.path(), "logs");
        let filler = "x".repeat(900_000);
        for partition in 0..2 {
            let settings = WriterSettings::for_tests();
            let mut index =
                PartitionIndex::open(&topic_dir, partition, LogSchema::new(), settings).unwrap();
            for offset in 0..20 {
                let payload = format!("{{\"message\":\"big {partition} {offset} {filler}\"}}");
                let record = Record {
                    partition,
                    offset,
                    timestamp_ms: 1_000,
                    payload: payload.as_bytes(),
                };
                index.add(&record, 1_000).unwrap();
            }
            index.commit().unwrap();
            index.close().unwrap();
        }
        let limits = SearchLimits {
            max_limit: 1000,
            max_window: 10_000,
        };
        let service = SearchService::new(tmp.path(), "logs", limits);
        let spec = QuerySpec {
            q: "*".into(),
            start_ms: None,
            end_ms: None,
        };
        let mut cursor = TailCursor::default();
        let first = service.tail(&spec, &mut cursor).unwrap();
        assert!(
            first.len() < 40,
            "{} events of 900 KB in one answer",
            first.len()
        );
        for partition in 0..2 {
            assert!(first.iter().any(|hit| hit.partition == partition));
        }
        let mut seen: Vec<(u64, u64)> = first.iter().map(|h| (h.partition, h.offset)).collect();
        loop {
            let more = service.tail(&spec, &mut cursor).unwrap();
            if more.is_empty() {
                break;
            }
            seen.extend(more.iter().map(|h| (h.partition, h.offset)));
        }
        let count = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!((count, seen.len()), (40, 40));
    }

    #[test]
    fn aggregations_over_their_limits_are_bad_requests() {
        use tantivy::aggregation::AggregationError;
        let over = AggregationError::BucketLimitExceeded {
            limit: 10,
            current: 11,
        };
        assert!(matches!(
            aggregation_error(over.into()),
            SearchError::BadRequest(why) if why.contains("bucket limit")
        ));
        let internal = AggregationError::InternalError("broken".into());
        assert!(matches!(
            aggregation_error(internal.into()),
            SearchError::Internal(_)
        ));
    }

    #[test]
    fn intervals_round_up_to_readable_steps() {
        assert_eq!(nice_interval(0), 1);
        assert_eq!(nice_interval(36_000), 60_000);
        assert_eq!(nice_interval(86_400_001), 172_800_000);
    }
}
