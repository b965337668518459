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

const SUPPORTED: &[Supported] = &[
    Supported {
        api: ApiKey::Produce,
        name: "produce",
        min: 0,
        served_min: 3,
        max: 10,
    },
    Supported {
        api: ApiKey::Fetch,
        name: "fetch",
        min: 4,
        served_min: 4,
        max: 12,
    },
    Supported {
        api: ApiKey::ListOffsets,
        name: "list_offsets",
        min: 1,
        served_min: 1,
        max: 6,
    },
    Supported {
        api: ApiKey::Metadata,
        name: "metadata",
        min: 0,
        served_min: 0,
        max: 12,
    },
    Supported {
        api: ApiKey::ApiVersions,
        name: "api_versions",
        min: 0,
        served_min: 0,
        max: 4,
    },
    Supported {
        api: ApiKey::CreateTopics,
        name: "create_topics",
        min: 2,
        served_min: 2,
        max: 4,
    },
    Supported {
        api: ApiKey::DeleteTopics,
        name: "delete_topics",
        min: 1,
        served_min: 1,
        max: 4,
    },
    Supported {
        api: ApiKey::OffsetForLeaderEpoch,
        name: "offset_for_leader_epoch",
        min: 2,
        served_min: 2,
        max: 3,
    },
    Supported {
        api: ApiKey::DescribeConfigs,
        name: "describe_configs",
        min: 1,
        served_min: 1,
        max: 2,
    },
    Supported {
        api: ApiKey::CreatePartitions,
        name: "create_partitions",
        min: 0,
        served_min: 0,
        max: 2,
    },
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
