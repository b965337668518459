//! The search API over HTTP: `/api/v1/search`, `/histogram`, `/fields` and `/tail` (server-sent
//! events). Searches run on the blocking pool behind a semaphore, so they never hold up the
//! indexer's threads or each other beyond `max_concurrent_searches`; at most 16 tails are open,
//! and they end when the process stops.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use crate::consumer::now_ms;
use crate::metrics::SearchMetrics;
use crate::search::time::{parse_duration_ms, parse_time};
use crate::search::{QuerySpec, SearchError, SearchService, TailCursor};

const DEFAULT_LIMIT: usize = 100;
const TAIL_POLL: Duration = Duration::from_millis(250);

/// Live tails open at once; each polls every 250 ms.
const MAX_TAILS: usize = 16;

#[derive(Clone)]
struct Api {
    service: Arc<SearchService>,
    permits: Arc<Semaphore>,
    tails: Arc<Semaphore>,
    metrics: SearchMetrics,
    /// Turns true when the process stops: open tails end, so the HTTP server can drain.
    closing: watch::Receiver<bool>,
}

/// The API's routes, ready to merge into the process's HTTP router; `closing` turning true ends
/// the live tails.
pub fn router(
    service: Arc<SearchService>,
    max_concurrent: usize,
    metrics: SearchMetrics,
    closing: watch::Receiver<bool>,
) -> Router {
    let api = Api {
        service,
        permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        tails: Arc::new(Semaphore::new(MAX_TAILS)),
        metrics,
        closing,
    };
    Router::new()
        .route("/api/v1/search", get(search))
        .route("/api/v1/histogram", get(histogram))
        .route("/api/v1/fields", get(fields))
        .route("/api/v1/tail", get(tail))
        .with_state(api)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    q: Option<String>,
    start: Option<String>,
    end: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistogramParams {
    q: Option<String>,
    start: Option<String>,
    end: Option<String>,
    interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldsParams {
    q: Option<String>,
    start: Option<String>,
    end: Option<String>,
    /// Fields answered at most (default `FIELDS_DEFAULT`, at most `FIELDS_MOST`).
    limit: Option<usize>,
}

/// Fields `/fields` answers unless asked for another number, and the most it answers.
const FIELDS_DEFAULT: usize = 50;
const FIELDS_MOST: usize = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TailParams {
    q: Option<String>,
}

/// A refused or failed request: a status and a sentence for the caller.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> Self {
        match e {
            SearchError::BadRequest(message) => ApiError(StatusCode::BAD_REQUEST, message),
            SearchError::Internal(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        // serde's words for a negative or non-numeric count.
        let text = e.body_text().replace(
            "invalid digit found in string",
            "expected a whole number, 0 or more",
        );
        ApiError(StatusCode::BAD_REQUEST, text)
    }
}

fn spec(q: Option<String>, start: Option<&str>, end: Option<&str>) -> Result<QuerySpec, ApiError> {
    let now = now_ms();
    let time = |name: &str, text: Option<&str>| {
        text.filter(|t| !t.is_empty())
            .map(|t| {
                parse_time(t, now)
                    .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("{name}: {e}")))
            })
            .transpose()
    };
    Ok(QuerySpec {
        q: q.unwrap_or_default(),
        start_ms: time("start", start)?,
        end_ms: time("end", end)?,
    })
}

impl Api {
    /// Runs `job` on the blocking pool once a search permit is free, timing and counting it.
    async fn run<T, F>(&self, endpoint: &'static str, job: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&SearchService) -> Result<T, SearchError> + Send + 'static,
    {
        let started = Instant::now();
        let result = self.run_uncounted(job).await;
        self.metrics
            .duration_seconds
            .with_label_values(&[endpoint])
            .observe(started.elapsed().as_secs_f64());
        self.count(endpoint, &result);
        result
    }

    /// Runs `job` on the blocking pool with a search permit, which the job holds to its end even
    /// if the client hangs up.
    async fn run_uncounted<T, F>(&self, job: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&SearchService) -> Result<T, SearchError> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))?;
        let service = self.service.clone();
        tokio::task::spawn_blocking(move || {
            let result = job(&service);
            drop(permit);
            result
        })
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        .and_then(|r| r.map_err(ApiError::from))
    }

    fn count<T>(&self, endpoint: &str, result: &Result<T, ApiError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(ApiError(status, _)) if status.is_client_error() => "bad_request",
            // A limit reached (live tails) or a shutdown, not a failure.
            Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, _)) => "refused",
            Err(_) => "error",
        };
        self.metrics
            .requests
            .with_label_values(&[endpoint, outcome])
            .inc();
    }

    /// Reads a request's parameters with `read`; a refusal is counted under `endpoint`.
    fn accept<P, T>(
        &self,
        endpoint: &str,
        params: Result<Query<P>, QueryRejection>,
        read: impl FnOnce(P) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let result = params.map_err(ApiError::from).and_then(|Query(p)| read(p));
        if result.is_err() {
            self.count(endpoint, &result);
        }
        result
    }
}

async fn search(
    State(api): State<Api>,
    params: Result<Query<SearchParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (spec, limit, offset) = api.accept("search", params, |p| {
        let spec = spec(p.q, p.start.as_deref(), p.end.as_deref())?;
        Ok((
            spec,
            p.limit
                .unwrap_or(DEFAULT_LIMIT.min(api.service.limits().max_limit)),
            p.offset.unwrap_or(0),
        ))
    })?;
    let started = Instant::now();
    let q = spec.q.clone();
    let result = api
        .run("search", move |s| s.search(&spec, limit, offset))
        .await?;
    Ok(Json(json!({
        "query": q,
        "total": result.total,
        "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
        "limit": limit.min(api.service.limits().max_limit),
        "offset": offset,
        // Fewer hits than `limit` though more match: the answer reached its size bound; the
        // next page starts at offset + the hits given.
        "cut": result.cut,
        "hits": result.hits,
    })))
}

async fn histogram(
    State(api): State<Api>,
    params: Result<Query<HistogramParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (spec, interval) = api.accept("histogram", params, |p| {
        let interval = p
            .interval
            .as_deref()
            .filter(|i| !i.is_empty())
            .map(|i| {
                parse_duration_ms(i)
                    .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("interval: {e}")))
            })
            .transpose()?;
        Ok((spec(p.q, p.start.as_deref(), p.end.as_deref())?, interval))
    })?;
    let started = Instant::now();
    let (interval_ms, buckets) = api
        .run("histogram", move |s| s.histogram(&spec, interval))
        .await?;
    Ok(Json(json!({
        "interval_ms": interval_ms,
        "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
        "total": buckets.iter().map(|b| b.count).sum::<u64>(),
        "buckets": buckets,
    })))
}

async fn fields(
    State(api): State<Api>,
    params: Result<Query<FieldsParams>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (spec, limit) = api.accept("fields", params, |p| {
        let limit = p.limit.unwrap_or(FIELDS_DEFAULT);
        if !(1..=FIELDS_MOST).contains(&limit) {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("limit: expected 1 to {FIELDS_MOST}, got {limit}"),
            ));
        }
        Ok((spec(p.q, p.start.as_deref(), p.end.as_deref())?, limit))
    })?;
    let started = Instant::now();
    let found = api.run("fields", move |s| s.fields(&spec, limit)).await?;
    Ok(Json(json!({
        "total": found.total,
        "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
        "complete": found.complete,
        "known": found.known,
        "fields": found.fields,
    })))
}

async fn tail(
    State(api): State<Api>,
    params: Result<Query<TailParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let spec = api.accept("tail", params, |p| spec(p.q, None, None))?;
    let Ok(slot) = api.tails.clone().try_acquire_owned() else {
        let refused = Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_TAILS} live tails are open already; try again later"),
        ));
        api.count("tail", &refused);
        return refused;
    };
    let checked = spec.clone();
    let cursor = api
        .run("tail", move |s| {
            s.build_query(&checked)?;
            s.tail_cursor()
        })
        .await?;
    let (events, received) = tokio::sync::mpsc::channel::<Event>(64);
    tokio::spawn(async move {
        follow(api, spec, cursor, events).await;
        drop(slot);
    });
    Ok(Sse::new(ReceiverStream::new(received).map(Ok)).keep_alive(KeepAlive::default()))
}

/// Polls for newly committed matches and sends each as an SSE `hit` event until the client goes.
async fn follow(
    api: Api,
    spec: QuerySpec,
    mut cursor: TailCursor,
    events: tokio::sync::mpsc::Sender<Event>,
) {
    let spec = Arc::new(spec);
    let mut closing = api.closing.clone();
    while !events.is_closed() && !*closing.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(TAIL_POLL) => {}
            _ = closing.changed() => return,
        }
        let polled = {
            let spec = spec.clone();
            let mut moved = std::mem::take(&mut cursor);
            let hits = api
                .run_uncounted(move |s| s.tail(&spec, &mut moved).map(|hits| (hits, moved)))
                .await;
            match hits {
                Ok((hits, moved)) => {
                    cursor = moved;
                    hits
                }
                Err(ApiError(_, message)) => {
                    let _ = events
                        .send(Event::default().event("error").data(message))
                        .await;
                    return;
                }
            }
        };
        for hit in polled {
            let Ok(event) = Event::default().event("hit").json_data(&hit) else {
                continue;
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}
