//! The HTTP endpoint every process serves: `/metrics` (Prometheus text) and `/health`, plus the
//! search API where an indexer runs.

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Binds `addr`, naming it in the error so the operator sees which port is taken.
pub async fn bind(what: &str, addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{what} {addr}: cannot listen: {e}"))
}

/// Serves the endpoints, and `routes` beside them (the search API), until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    routes: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(registry)
        .merge(routes);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn metrics(State(registry): State<Registry>) -> impl IntoResponse {
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
        body,
    )
}

async fn health() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}\n",
    )
}

/// The registry every part registers into: process metrics and a build-info gauge come with it.
pub fn new_registry() -> Registry {
    let registry = Registry::new();
    let build_info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("sluice_build_info", "Build of the running sluice binary"),
        &["version"],
    )
    .expect("static metric definition");
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    registry
        .register(Box::new(build_info))
        .expect("first registration");
    registry
        .register(Box::new(ProcessMetrics(
            prometheus::process_collector::ProcessCollector::for_self(),
        )))
        .expect("first registration");
    registry
}

/// The prometheus crate's process metrics, with `process_cpu_seconds_total` to the clock tick:
/// the crate counts whole seconds, so a process using a fraction of a core showed none for
/// seconds at a time (`rate()` of 0 while the appliance was busy).
struct ProcessMetrics(prometheus::process_collector::ProcessCollector);

impl prometheus::core::Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.0.collect();
        if let Ok(seconds) = crate::cpu_time::cpu_seconds(std::process::id()) {
            let cpu = families
                .iter_mut()
                .filter(|f| f.name() == "process_cpu_seconds_total")
                .flat_map(|f| f.mut_metric().iter_mut());
            for metric in cpu {
                let mut counter = prometheus::proto::Counter::default();
                counter.set_value(seconds);
                metric.set_counter(counter);
            }
        }
        families
    }
}
