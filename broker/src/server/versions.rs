//! Which API versions the broker advertises, and ApiVersions itself.
//!
//! The ranges are chosen for the clients people use: librdkafka (kcat, confluent-kafka) and
//! kafka-python. Produce is advertised from v0 although only v3+ is served: librdkafka before
//! 2.11.1 turns compression off unless Produce v0 is in the range (KAFKA-18659; Apache Kafka 4
//! does the same). Fetch stops at v12 so clients address topics by name, not by topic id.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use super::{encode_response, Close, Request};

struct Supported {
    api: ApiKey,
    name: &'static str,
    /// Advertised minimum.
    min: i16,
    /// Lowest version actually served (above `min` only for Produce, see above).
    served_min: i16,
    max: i16,
}

/// One row: API, metric label, advertised min, lowest served, max.
const fn api(api: ApiKey, name: &'static str, min: i16, served_min: i16, max: i16) -> Supported {
    Supported {
        api,
        name,
        min,
        served_min,
        max,
    }
}

#[rustfmt::skip]
const SUPPORTED: &[Supported] = &[
    api(ApiKey::Produce, "produce", 0, 3, 10),
    api(ApiKey::Fetch, "fetch", 4, 4, 12),
    api(ApiKey::ListOffsets, "list_offsets", 1, 1, 6),
    api(ApiKey::Metadata, "metadata", 0, 0, 12),
    api(ApiKey::ApiVersions, "api_versions", 0, 0, 4),
    api(ApiKey::CreateTopics, "create_topics", 2, 2, 4),
    api(ApiKey::DeleteTopics, "delete_topics", 1, 1, 4),
    api(ApiKey::OffsetForLeaderEpoch, "offset_for_leader_epoch", 2, 2, 3),
    api(ApiKey::DescribeConfigs, "describe_configs", 1, 1, 2),
    api(ApiKey::CreatePartitions, "create_partitions", 0, 0, 2),
    api(ApiKey::AlterConfigs, "alter_configs", 0, 0, 2),
    api(ApiKey::IncrementalAlterConfigs, "incremental_alter_configs", 0, 0, 1),
    api(ApiKey::FindCoordinator, "find_coordinator", 0, 0, 3),
    api(ApiKey::JoinGroup, "join_group", 0, 0, 5),
    api(ApiKey::SyncGroup, "sync_group", 0, 0, 3),
    api(ApiKey::Heartbeat, "heartbeat", 0, 0, 3),
    api(ApiKey::LeaveGroup, "leave_group", 0, 0, 3),
    api(ApiKey::OffsetCommit, "offset_commit", 2, 2, 8),
    api(ApiKey::OffsetFetch, "offset_fetch", 1, 1, 7),
    api(ApiKey::DescribeGroups, "describe_groups", 0, 0, 4),
    api(ApiKey::ListGroups, "list_groups", 0, 0, 4),
    api(ApiKey::DeleteGroups, "delete_groups", 0, 0, 2),
    api(ApiKey::OffsetDelete, "offset_delete", 0, 0, 0),
    api(ApiKey::InitProducerId, "init_producer_id", 0, 0, 4),
];

fn find(api: ApiKey) -> Option<&'static Supported> {
    SUPPORTED.iter().find(|s| s.api == api)
}

/// The metric label for a served API, `None` for one the broker does not serve.
pub fn supported_name(api: ApiKey) -> Option<&'static str> {
    find(api).map(|s| s.name)
}

pub fn serves(api: ApiKey, version: i16) -> bool {
    find(api).is_some_and(|s| (s.served_min..=s.max).contains(&version))
}

fn advertised() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|s| {
            ApiVersion::default()
                .with_api_key(s.api as i16)
                .with_min_version(s.min)
                .with_max_version(s.max)
        })
        .collect()
}

pub fn handle(req: &mut Request) -> Result<Bytes, Close> {
    let _: ApiVersionsRequest = req.decode()?;
    let body = ApiVersionsResponse::default().with_api_keys(advertised());
    req.respond(ApiKey::ApiVersions, &body)
}

/// The answer to an ApiVersions request newer than we know: a v0 body with UNSUPPORTED_VERSION
/// and our ApiVersions range, so the client retries at a version we speak (KIP-511).
pub fn unsupported_version(correlation_id: i32) -> Result<Bytes, Close> {
    let own = find(ApiKey::ApiVersions).expect("ApiVersions is in the table");
    let body = ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(vec![ApiVersion::default()
            .with_api_key(ApiKey::ApiVersions as i16)
            .with_min_version(own.min)
            .with_max_version(own.max)]);
    encode_response(ApiKey::ApiVersions, 0, correlation_id, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Message;

    fn codec_range(api: ApiKey) -> (i16, i16) {
        macro_rules! range {
            ($req:ty, $resp:ty) => {
                (
                    <$req>::VERSIONS.min.max(<$resp>::VERSIONS.min),
                    <$req>::VERSIONS.max.min(<$resp>::VERSIONS.max),
                )
            };
        }
        match api {
            ApiKey::Produce => range!(ProduceRequest, ProduceResponse),
            ApiKey::Fetch => range!(FetchRequest, FetchResponse),
            ApiKey::ListOffsets => range!(ListOffsetsRequest, ListOffsetsResponse),
            ApiKey::Metadata => range!(MetadataRequest, MetadataResponse),
            ApiKey::ApiVersions => range!(ApiVersionsRequest, ApiVersionsResponse),
            ApiKey::CreateTopics => range!(CreateTopicsRequest, CreateTopicsResponse),
            ApiKey::DeleteTopics => range!(DeleteTopicsRequest, DeleteTopicsResponse),
            ApiKey::OffsetForLeaderEpoch => {
                range!(OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse)
            }
            ApiKey::DescribeConfigs => range!(DescribeConfigsRequest, DescribeConfigsResponse),
            ApiKey::CreatePartitions => range!(CreatePartitionsRequest, CreatePartitionsResponse),
            ApiKey::AlterConfigs => range!(AlterConfigsRequest, AlterConfigsResponse),
            ApiKey::IncrementalAlterConfigs => {
                range!(
                    IncrementalAlterConfigsRequest,
                    IncrementalAlterConfigsResponse
                )
            }
            ApiKey::FindCoordinator => range!(FindCoordinatorRequest, FindCoordinatorResponse),
            ApiKey::JoinGroup => range!(JoinGroupRequest, JoinGroupResponse),
            ApiKey::SyncGroup => range!(SyncGroupRequest, SyncGroupResponse),
            ApiKey::Heartbeat => range!(HeartbeatRequest, HeartbeatResponse),
            ApiKey::LeaveGroup => range!(LeaveGroupRequest, LeaveGroupResponse),
            ApiKey::OffsetCommit => range!(OffsetCommitRequest, OffsetCommitResponse),
            ApiKey::OffsetFetch => range!(OffsetFetchRequest, OffsetFetchResponse),
            ApiKey::DescribeGroups => range!(DescribeGroupsRequest, DescribeGroupsResponse),
            ApiKey::ListGroups => range!(ListGroupsRequest, ListGroupsResponse),
            ApiKey::DeleteGroups => range!(DeleteGroupsRequest, DeleteGroupsResponse),
            ApiKey::OffsetDelete => range!(OffsetDeleteRequest, OffsetDeleteResponse),
            ApiKey::InitProducerId => range!(InitProducerIdRequest, InitProducerIdResponse),
            other => panic!("{other:?} missing from the test"),
        }
    }

    #[test]
    fn every_served_version_has_a_codec() {
        for s in SUPPORTED {
            let (min, max) = codec_range(s.api);
            assert!(
                s.served_min >= min && s.max <= max,
                "{:?}: serves {}..{} but codecs cover {min}..{max}",
                s.api,
                s.served_min,
                s.max
            );
        }
    }

    #[test]
    fn produce_v0_is_advertised_but_not_served() {
        assert!(!serves(ApiKey::Produce, 2));
        assert!(serves(ApiKey::Produce, 3));
        assert!(advertised()
            .iter()
            .any(|v| v.api_key == 0 && v.min_version == 0));
    }
}
