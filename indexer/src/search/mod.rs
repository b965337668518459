//! Searching every partition's indexes, whoever writes them.
//!
//! The service lists the index directories of the data dir on each request, opens what is new,
//! and reloads a reader when its `meta.json` changed (another process's commit included), so a
//! search sees every partition, including those other indexer processes own, as of their last
//! commit. `query` reads the user's query text, `requests` holds the four questions the API
//! asks, and `time` parses their time bounds.

mod query;
mod requests;
pub mod time;

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tantivy::query::{AllQuery, BooleanQuery, Query, QueryParser, RangeQuery};
use tantivy::{DateTime, Index, IndexReader, ReloadPolicy, Searcher, Term};

pub use requests::{FieldSummary, HistogramBucket, Hit, SearchResult, TailCursor, TopValue};

use crate::layout;
use crate::schema::{self, LogSchema};

/// What a search request asks for.
#[derive(Debug, Clone, Default)]
pub struct QuerySpec {
    pub q: String,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    #[error("search failed: {0}")]
    Internal(#[from] tantivy::TantivyError),
}

/// Caps every request is held to.
#[derive(Debug, Clone)]
pub struct SearchLimits {
    pub max_limit: usize,
    pub max_window: usize,
}

/// One bucket index, open for reading.
struct OpenIndex {
    partition: i32,
    reader: IndexReader,
    /// `meta.json`'s identity at the last reload: Tantivy replaces the file on every commit.
    meta_stamp: Mutex<Option<(i64, i64, u64)>>,
}

/// A consistent view of one bucket index for the length of a request.
pub struct View {
    pub partition: i32,
    pub searcher: Searcher,
}

pub struct SearchService {
    topic_dir: PathBuf,
    schema: LogSchema,
    parser: QueryParser,
    limits: SearchLimits,
    open: Mutex<HashMap<PathBuf, Arc<OpenIndex>>>,
    /// Buckets that could not be opened, said once each: searches go on without them.
    unreadable: Mutex<HashSet<PathBuf>>,
}

impl SearchService {
    pub fn new(data_dir: &Path, topic: &str, limits: SearchLimits) -> Self {
        let schema = LogSchema::new();
        let mut parser = QueryParser::new(
            schema.schema.clone(),
            schema.default_search_fields(),
            schema::tokenizers(),
        );
        // Log search narrows: `connection refused` wants both words, as in Graylog and Quickwit.
        parser.set_conjunction_by_default();
        parser.allow_regexes();
        Self {
            topic_dir: layout::topic_dir(data_dir, topic),
            schema,
            parser,
            limits,
            open: Mutex::new(HashMap::new()),
            unreadable: Mutex::default(),
        }
    }

    pub fn schema(&self) -> &LogSchema {
        &self.schema
    }

    pub fn limits(&self) -> &SearchLimits {
        &self.limits
    }

    /// Searchers over every bucket index on disk, each as of its latest commit.
    pub fn views(&self) -> Result<Vec<View>, SearchError> {
        let mut listed = Vec::new();
        for (partition, dir) in layout::partitions(&self.topic_dir) {
            for (_, bucket) in layout::buckets(&dir) {
                listed.push((partition, bucket));
            }
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|path, _| listed.iter().any(|(_, p)| p == path));
        let mut views = Vec::with_capacity(listed.len());
        for (partition, dir) in listed {
            let index = match open.get(&dir) {
                Some(index) => index.clone(),
                None => match self.open_index(partition, &dir) {
                    Ok(index) => {
                        open.insert(dir.clone(), index.clone());
                        index
                    }
                    // Retention may delete a bucket between the listing and the open.
                    Err(e) if !dir.exists() => {
                        tracing::debug!(error = %e, "bucket vanished");
                        continue;
                    }
                    // One damaged bucket must not fail every search.
                    Err(e) => {
                        let mut unreadable =
                            self.unreadable.lock().unwrap_or_else(|p| p.into_inner());
                        if unreadable.insert(dir.clone()) {
                            tracing::error!(bucket = %dir.display(), error = %e, "search: an index bucket cannot be opened; searches leave it out");
                        }
                        continue;
                    }
                },
            };
            refresh(&index, &dir);
            views.push(View {
                partition,
                searcher: index.reader.searcher(),
            });
        }
        Ok(views)
    }

    fn open_index(&self, partition: i32, dir: &Path) -> tantivy::Result<Arc<OpenIndex>> {
        let index: Index = self.schema.open(dir)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Arc::new(OpenIndex {
            partition,
            reader,
            meta_stamp: Mutex::new(meta_stamp(dir)),
        }))
    }

    /// The user's query, narrowed to the time range.
    pub fn build_query(&self, spec: &QuerySpec) -> Result<Box<dyn Query>, SearchError> {
        let q = spec.q.trim();
        let parsed: Box<dyn Query> = if q.is_empty() || q == "*" {
            Box::new(AllQuery)
        } else {
            query::parse(&self.parser, q)
                .map_err(|why| SearchError::BadRequest(format!("bad query `{q}`: {why}")))?
        };
        if let (Some(start), Some(end)) = (spec.start_ms, spec.end_ms) {
            if start > end {
                return Err(SearchError::BadRequest(format!(
                    "start ({}) is after end ({})",
                    time::format_ms(start),
                    time::format_ms(end)
                )));
            }
        }
        if spec.start_ms.is_none() && spec.end_ms.is_none() {
            return Ok(parsed);
        }
        let bound = |ms: Option<i64>, inclusive: bool| match ms {
            None => Bound::Unbounded,
            Some(ms) => {
                let term = Term::from_field_date(
                    self.schema.timestamp,
                    DateTime::from_timestamp_millis(ms),
                );
                if inclusive {
                    Bound::Included(term)
                } else {
                    Bound::Excluded(term)
                }
            }
        };
        let range = RangeQuery::new(bound(spec.start_ms, true), bound(spec.end_ms, false));
        Ok(Box::new(BooleanQuery::intersection(vec![
            parsed,
            Box::new(range),
        ])))
    }
}

/// Reloads the reader when the index's `meta.json` is not the one it last loaded.
fn refresh(index: &OpenIndex, dir: &Path) {
    let now = meta_stamp(dir);
    let mut seen = index.meta_stamp.lock().unwrap_or_else(|p| p.into_inner());
    if now != *seen {
        match index.reader.reload() {
            Ok(()) => *seen = now,
            // A merge may remove files between the stat and the load; the next request retries.
            Err(e) => tracing::debug!(partition = index.partition, error = %e, "reader reload"),
        }
    }
}

fn meta_stamp(dir: &Path) -> Option<(i64, i64, u64)> {
    let meta = std::fs::metadata(dir.join("meta.json")).ok()?;
    Some((meta.mtime(), meta.mtime_nsec(), meta.ino()))
}
