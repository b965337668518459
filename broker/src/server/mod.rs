//! The Kafka protocol server: one task per connection reads size-prefixed frames, decodes them
//! with `kafka-protocol`'s codecs and dispatches by API key to the handler modules. Responses
//! leave in request order. Work that only waits (an acks=all fsync, a long-polling fetch) runs
//! in its own task, so one connection can have several requests waiting at once (bounded by
//! `max_in_flight_per_connection`) while their side effects still happen in arrival order.

mod admin;
mod alter_configs;
mod fetch;
mod groups;
mod init_producer_id;
mod metadata;
mod offsets;
mod produce;
mod versions;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::coordinator::Coordinator;
use crate::metrics::BrokerMetrics;
use crate::storage::Storage;

/// What every handler may use.
pub struct Context {
    pub storage: Arc<Storage>,
    pub coordinator: Arc<Coordinator>,
    pub metrics: BrokerMetrics,
    pub node_id: i32,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub cluster_id: String,
    /// The most record bytes one Fetch response carries (beyond a first oversized batch).
    pub fetch_max_bytes: usize,
    /// Connections closed and corrupt reads are said once a minute each.
    pub quiet: crate::quiet::Quiet,
}

/// A request's answer: ready now, still being worked on, or none (acks=0).
enum Reply {
    Now(Option<Bytes>),
    Later(JoinHandle<Option<Bytes>>),
}

/// Why a connection is closed instead of answered.
#[derive(Debug)]
struct Close {
    kind: &'static str,
    detail: String,
}

impl Close {
    fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// Accepts connections until `shutdown` resolves; then ends every connection, so nothing
/// appends once the storage is being closed.
pub async fn serve(
    ctx: Arc<Context>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    limits: Limits,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                connections.abort_all();
                while connections.join_next().await.is_some() {}
                return Ok(());
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of descriptors, most likely: every accept fails until some close.
                        if ctx.quiet.first_in_a_while("accept") {
                            tracing::warn!(error = %e, "accept failed; connections wait in the backlog (said once a minute; out of file descriptors? raise LimitNOFILE)");
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                let limits = limits.clone();
                connections.spawn(async move {
                    let gauge = ctx.metrics.connections.with_label_values(&["kafka"]);
                    gauge.inc();
                    connection(ctx.clone(), stream, peer, limits).await;
                    gauge.dec();
                });
            }
        }
    }
}

/// What bounds the connections: a request's size, the bytes of requests being received over all
/// of them, the requests one has in flight, and how long one may idle or take to send a request.
#[derive(Clone)]
pub struct Limits {
    max_frame: u32,
    /// `queued_max_request_bytes`, in bytes.
    receiving: Arc<Semaphore>,
    max_in_flight: usize,
    idle: Duration,
}

impl Limits {
    pub fn of(config: &crate::config::BrokerConfig) -> Self {
        let queued = usize::try_from(config.queued_max_request_bytes).unwrap_or(usize::MAX);
        Self {
            max_frame: config.max_request_bytes,
            receiving: Arc::new(Semaphore::new(queued.min(Semaphore::MAX_PERMITS))),
            max_in_flight: config.max_in_flight_per_connection.max(1),
            idle: Duration::from_millis(config.connections_max_idle_ms),
        }
    }
}

/// A request whose size has come must come whole within this long (or `connections_max_idle_ms`
/// when shorter): a client that announces a large request and sends it slowly, or not at all,
/// holds that much of the receiving budget.
const REQUEST_ARRIVAL: Duration = Duration::from_secs(60);

/// What is set aside for a request before its bytes come; more as they do.
const FIRST_READ: usize = 64 << 10;

/// Serves one connection until the client leaves or sends something that closes it.
async fn connection(
    ctx: Arc<Context>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    limits: Limits,
) {
    let max_frame = limits.max_frame;
    let (mut reader, mut writer) = stream.into_split();
    let (queue, mut replies) =
        mpsc::channel::<(Reply, &'static str, Instant)>(limits.max_in_flight);
    let metrics = ctx.metrics.clone();
    let write_task = tokio::spawn(async move {
        while let Some((reply, api, started)) = replies.recv().await {
            let bytes = match reply {
                Reply::Now(bytes) => bytes,
                Reply::Later(task) => match task.await {
                    Ok(Some(bytes)) => Some(bytes),
                    // A request that expected an answer got none: every later answer on this
                    // connection would be taken for the wrong request, so close it instead.
                    _ => {
                        tracing::warn!(api, "a request got no answer; closing its connection");
                        return;
                    }
                },
            };
            metrics
                .request_seconds
                .with_label_values(&[api])
                .observe(started.elapsed().as_secs_f64());
            if let Some(bytes) = bytes {
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        }
    });
    let result: Result<(), Close> = async {
        loop {
            let mut size = [0u8; 4];
            match tokio::time::timeout(limits.idle, reader.read_exact(&mut size)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Ok(Err(e)) => return Err(Close::new("io", e.to_string())),
                Err(_) => {
                    tracing::debug!(%peer, "closing a connection idle for connections_max_idle_ms");
                    return Ok(());
                }
            }
            let size = i32::from_be_bytes(size);
            if size < 8 || size as u32 > max_frame {
                return Err(Close::new(
                    "bad_frame_size",
                    match &size.to_be_bytes()[..3] {
                        // "GET ", "POS"T, "PUT ", "HEA"D: a browser or curl on the Kafka port.
                        b"GET" | b"POS" | b"PUT" | b"HEA" => "not Kafka: the client speaks HTTP \
                            (the HTTP API is on the [http] address)"
                            .to_owned(),
                        _ => format!("frame of {size} bytes (allowed 8 to {max_frame})"),
                    },
                ));
            }
            // Memory follows the bytes that come, not the size announced; what is being
            // received over all connections is bounded (a request waits for its share, as
            // Kafka mutes a connection), and a request must come in time once its share is had.
            let _permit = limits
                .receiving
                .acquire_many(size as u32)
                .await
                .map_err(|_| Close::new("io", "the broker is stopping"))?;
            let mut frame = Vec::with_capacity((size as usize).min(FIRST_READ));
            let arrival = REQUEST_ARRIVAL.min(limits.idle);
            let read = tokio::time::timeout(
                arrival,
                (&mut reader).take(size as u64).read_to_end(&mut frame),
            )
            .await
            .map_err(|_| {
                Close::new(
                    "slow_request",
                    format!("a {size}-byte request did not arrive within {arrival:?}"),
                )
            })?
            .map_err(|e| Close::new("io", e.to_string()))?;
            if read < size as usize {
                return Err(Close::new(
                    "io",
                    format!("the connection ended {read} bytes into a {size}-byte request"),
                ));
            }
            let started = Instant::now();
            let (api, reply) = dispatch(&ctx, Bytes::from(frame), peer).await?;
            if queue.send((reply, api, started)).await.is_err() {
                return Ok(());
            }
        }
    }
    .await;
    // Counted while the socket is still open, so whoever sees it close sees the count too.
    if let Err(close) = result {
        // A client retrying what was refused comes back within milliseconds: said once a
        // minute for each kind and peer host, all counted.
        if ctx
            .quiet
            .first_in_a_while(&format!("{} {}", close.kind, peer.ip()))
        {
            tracing::warn!(%peer, kind = close.kind, detail = %close.detail, "closing connection (said once a minute for this kind and host; sluice_broker_protocol_errors_total counts them all)");
        } else {
            tracing::debug!(%peer, kind = close.kind, detail = %close.detail, "closing connection");
        }
        ctx.metrics
            .protocol_errors
            .with_label_values(&[close.kind])
            .inc();
    }
    drop(queue);
    let _ = write_task.await;
}

/// A decoded request: header, API, version, and the undecoded body.
struct Request {
    header: RequestHeader,
    version: i16,
    body: Bytes,
    /// The client's address, as DescribeGroups reports it.
    peer: String,
}

impl Request {
    fn decode<T: Decodable + Message>(&mut self) -> Result<T, Close> {
        T::decode(&mut self.body, self.version)
            .map_err(|e| Close::new("malformed", format!("v{} body: {e:#}", self.version)))
    }

    fn respond<T: Encodable>(&self, api: ApiKey, body: &T) -> Result<Bytes, Close> {
        encode_response(api, self.version, self.header.correlation_id, body)
    }
}

fn encode_response<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Bytes, Close> {
    let header_version = api.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encode = || -> anyhow::Result<Bytes> {
        let size = header.compute_size(header_version)? + body.compute_size(version)?;
        let mut buf = BytesMut::with_capacity(4 + size);
        buf.put_i32(size as i32);
        header.encode(&mut buf, header_version)?;
        body.encode(&mut buf, version)?;
        Ok(buf.freeze())
    };
    encode().map_err(|e| Close::new("encode", format!("{api:?} v{version} response: {e:#}")))
}

async fn dispatch(
    ctx: &Arc<Context>,
    mut frame: Bytes,
    peer: std::net::SocketAddr,
) -> Result<(&'static str, Reply), Close> {
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api) = ApiKey::try_from(key) else {
        return Err(Close::new("unknown_api", format!("API key {key}")));
    };
    let Some(name) = versions::supported_name(api) else {
        return Err(Close::new("unknown_api", format!("{api:?} is not served")));
    };
    if api == ApiKey::ApiVersions && !versions::serves(api, version) {
        return Ok((
            name,
            Reply::Now(Some(versions::unsupported_version(correlation_id)?)),
        ));
    }
    if !versions::serves(api, version) {
        return Err(Close::new(
            "unsupported_version",
            format!("{api:?} v{version}"),
        ));
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| Close::new("malformed", format!("request header: {e:#}")))?;
    let mut req = Request {
        header,
        version,
        body: frame,
        peer: format!("/{}", peer.ip()),
    };
    let reply = match api {
        ApiKey::ApiVersions => Reply::Now(Some(versions::handle(&mut req)?)),
        ApiKey::Metadata => Reply::Now(Some(metadata::handle(ctx, &mut req).await?)),
        ApiKey::Produce => produce::handle(ctx, &mut req).await?,
        ApiKey::Fetch => fetch::handle(ctx, &mut req)?,
        ApiKey::ListOffsets => Reply::Later(offsets::list_offsets(ctx, &mut req)?),
        ApiKey::OffsetForLeaderEpoch => Reply::Now(Some(offsets::leader_epoch(ctx, &mut req)?)),
        ApiKey::CreateTopics => Reply::Now(Some(admin::create_topics(ctx, &mut req).await?)),
        ApiKey::DeleteTopics => Reply::Now(Some(admin::delete_topics(ctx, &mut req).await?)),
        ApiKey::CreatePartitions => {
            Reply::Now(Some(admin::create_partitions(ctx, &mut req).await?))
        }
        ApiKey::DescribeConfigs => Reply::Now(Some(admin::describe_configs(ctx, &mut req)?)),
        ApiKey::AlterConfigs => Reply::Now(Some(alter_configs::replace(ctx, &mut req).await?)),
        ApiKey::IncrementalAlterConfigs => {
            Reply::Now(Some(alter_configs::incremental(ctx, &mut req).await?))
        }
        ApiKey::InitProducerId => Reply::Now(Some(init_producer_id::handle(ctx, &mut req)?)),
        ApiKey::FindCoordinator => Reply::Now(Some(groups::find_coordinator(ctx, &mut req)?)),
        ApiKey::JoinGroup => Reply::Later(groups::join_group(ctx, &mut req)?),
        ApiKey::SyncGroup => Reply::Later(groups::sync_group(ctx, &mut req)?),
        ApiKey::Heartbeat => Reply::Now(Some(groups::heartbeat(ctx, &mut req)?)),
        ApiKey::LeaveGroup => Reply::Now(Some(groups::leave_group(ctx, &mut req)?)),
        ApiKey::OffsetCommit => Reply::Now(Some(groups::offset_commit(ctx, &mut req).await?)),
        ApiKey::OffsetFetch => Reply::Now(Some(groups::offset_fetch(ctx, &mut req)?)),
        ApiKey::DescribeGroups => Reply::Now(Some(groups::describe_groups(ctx, &mut req)?)),
        ApiKey::ListGroups => Reply::Now(Some(groups::list_groups(ctx, &mut req)?)),
        ApiKey::DeleteGroups => Reply::Now(Some(groups::delete_groups(ctx, &mut req).await?)),
        ApiKey::OffsetDelete => Reply::Now(Some(groups::offset_delete(ctx, &mut req).await?)),
        _ => return Err(Close::new("unknown_api", format!("{api:?} is not served"))),
    };
    Ok((name, reply))
}
