//! Turns one Kafka record into one Tantivy document.
//!
//! A JSON object is read as an event of the contract in the design brief (`id`, `timestamp`,
//! `host`, `source`, `container`, `stream`, `level`, `message`, `fields`); unknown keys join
//! `fields`. Anything else (plain text, a JSON scalar) is indexed as a message with the record's
//! own timestamp. Nothing here fails: odd input is indexed as well as it can be and the oddity is
//! reported, so one bad record never stops a partition.

use serde_json::{Map, Value};
use tantivy::schema::OwnedValue;
use tantivy::time::format_description::well_known::Rfc3339;
use tantivy::time::OffsetDateTime;
use tantivy::{DateTime, TantivyDocument};

use crate::schema::LogSchema;

/// One consumed record, as the mapping needs it.
pub struct Record<'a> {
    pub partition: i32,
    pub offset: i64,
    /// The record's Kafka timestamp, in milliseconds since the epoch.
    pub timestamp_ms: i64,
    pub payload: &'a [u8],
}

/// What was odd about a record; the label of the malformed-records counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Bytes that are not UTF-8: indexed with replacement characters.
    InvalidUtf8,
    /// Starts like a JSON object but does not parse: indexed as text.
    InvalidJson,
    /// A `timestamp` that is neither RFC 3339 nor epoch milliseconds: the record's time is used.
    BadTimestamp,
    /// Larger than `max_document_bytes`: indexed as text, cut.
    Oversize,
}

impl Malformed {
    pub fn label(self) -> &'static str {
        match self {
            Malformed::InvalidUtf8 => "invalid_utf8",
            Malformed::InvalidJson => "invalid_json",
            Malformed::BadTimestamp => "bad_timestamp",
            Malformed::Oversize => "oversize",
        }
    }

    pub const ALL: [Malformed; 4] = [
        Malformed::InvalidUtf8,
        Malformed::InvalidJson,
        Malformed::BadTimestamp,
        Malformed::Oversize,
    ];
}

/// A record ready for the index.
pub struct Mapped {
    pub doc: TantivyDocument,
    /// What a repeat of the event is known by, when it carries an `id` (see `repeat_key`): the
    /// index skips keys it already holds.
    pub id: Option<String>,
    pub malformed: Option<Malformed>,
}

/// Keys the contract gives a field of their own; every other key goes under `fields`.
const MESSAGE_KEYS: [&str; 3] = ["message", "msg", "log"];

/// `now_ms` is the indexer's clock: with the record's time, the latest an event's own time may
/// plausibly be.
pub fn map_record(
    schema: &LogSchema,
    record: &Record<'_>,
    max_bytes: usize,
    now_ms: i64,
) -> Mapped {
    let mut malformed = None;
    let mut payload = record.payload;
    if payload.len() > max_bytes {
        payload = &payload[..max_bytes];
        malformed = Some(Malformed::Oversize);
    }
    let text = match std::str::from_utf8(payload) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(e) if malformed == Some(Malformed::Oversize) && e.error_len().is_none() => {
            // The cut fell inside a character: drop the partial character only.
            std::borrow::Cow::Borrowed(
                std::str::from_utf8(&payload[..e.valid_up_to()]).expect("valid prefix"),
            )
        }
        Err(_) => {
            malformed = Some(Malformed::InvalidUtf8);
            String::from_utf8_lossy(payload)
        }
    };
    let mut doc = TantivyDocument::new();
    doc.add_u64(schema.partition, record.partition as u64);
    doc.add_u64(schema.offset, record.offset as u64);

    let event = if malformed.is_none() && text.trim_start().starts_with('{') {
        match serde_json::from_str::<Map<String, Value>>(&text) {
            Ok(event) => Some(event),
            Err(_) => {
                malformed = Some(Malformed::InvalidJson);
                None
            }
        }
    } else {
        None
    };
    let id = match event {
        Some(event) => {
            doc.add_text(schema.source_doc, text.as_ref());
            let latest = record.timestamp_ms.max(now_ms).saturating_add(MAX_AHEAD_MS);
            let (id, bad_timestamp) =
                map_event(schema, event, record.timestamp_ms, latest, &mut doc);
            if bad_timestamp {
                malformed = Some(Malformed::BadTimestamp);
            }
            id
        }
        None => {
            let source = serde_json::json!({ "message": text.as_ref() });
            doc.add_text(schema.source_doc, source.to_string());
            doc.add_text(schema.message, text.as_ref());
            doc.add_date(
                schema.timestamp,
                DateTime::from_timestamp_millis(record.timestamp_ms),
            );
            None
        }
    };
    Mapped { doc, id, malformed }
}

/// What a repeat of an event is known by: its `id` and what it says (`source` and message). An
/// agent's re-sent line says the same again under the same id and is skipped; another
/// producer's next event under an id it reuses (an order's, a user's) says something else and is
/// kept. Indexed as a second term of `id` (after a unit separator), so `id:` searches are
/// unchanged.
fn repeat_key(id: &str, event: &Map<String, Value>) -> String {
    let text = |key: &str| event.get(key).map(Value::to_string).unwrap_or_default();
    let message = MESSAGE_KEYS
        .iter()
        .find_map(|key| event.get(*key))
        .map(Value::to_string)
        .unwrap_or_default();
    let said = (u64::from(crc32c::crc32c(text("source").as_bytes())) << 32)
        | u64::from(crc32c::crc32c(message.as_bytes()));
    format!("{id}\u{1f}{said:016x}")
}

/// Adds an event's fields to `doc`; returns its repeat key (when it has an id) and whether its
/// timestamp was unreadable.
fn map_event(
    schema: &LogSchema,
    mut event: Map<String, Value>,
    record_ms: i64,
    latest_ms: i64,
    doc: &mut TantivyDocument,
) -> (Option<String>, bool) {
    // An id that names nothing (null, "", an object) would make every such event a duplicate.
    let id = event.remove("id").and_then(|id| match id {
        Value::String(text) if !text.is_empty() => Some(text),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let id = id.map(|id| {
        doc.add_text(schema.id, &id);
        let key = repeat_key(&id, &event);
        doc.add_text(schema.id, &key);
        key
    });
    let (timestamp_ms, bad_timestamp) = match event.remove("timestamp") {
        None | Some(Value::Null) => (record_ms, false),
        Some(value) => match parse_event_time(&value) {
            // A day or more past both its record's time and the indexer's clock is a clock or
            // a format gone wrong: indexed there, it would sit in a bucket retention does not
            // reach for years.
            Some(ms) if ms <= latest_ms => (ms, false),
            _ => {
                event.insert("timestamp".into(), value);
                (record_ms, true)
            }
        },
    };
    doc.add_date(
        schema.timestamp,
        DateTime::from_timestamp_millis(timestamp_ms),
    );
    // An object under a message key stays a field, searchable by its paths.
    let message_key = MESSAGE_KEYS
        .iter()
        .find(|key| event.get(**key).is_some_and(|v| !v.is_object()));
    if let Some(message) = message_key.and_then(|key| event.remove(*key)) {
        doc.add_text(schema.message, into_text(message));
    }
    for (key, field) in [
        ("level", schema.level),
        ("host", schema.host),
        ("source", schema.source),
        ("stream", schema.stream),
    ] {
        if let Some(value) = event.remove(key) {
            match value {
                Value::Object(_) | Value::Array(_) => {
                    event.insert(key.into(), value);
                }
                Value::Null => {}
                scalar => doc.add_text(field, into_text(scalar)),
            }
        }
    }
    match event.remove("container") {
        Some(Value::Object(container)) => {
            doc.add_field_value(schema.container, &OwnedValue::from(container))
        }
        Some(Value::String(name)) => {
            let mut container = Map::new();
            container.insert("name".into(), Value::String(name));
            doc.add_field_value(schema.container, &OwnedValue::from(container));
        }
        Some(other) => {
            event.insert("container".into(), other);
        }
        None => {}
    }
    // The contract's `fields` object and any key the contract does not name are searched alike:
    // `fields.user.id` reaches both `{"fields":{"user":{"id":..}}}` and `{"user":{"id":..}}`.
    let mut rest = match event.remove("fields") {
        Some(Value::Object(fields)) => fields,
        Some(other) => {
            let mut rest = Map::new();
            rest.insert("fields".into(), other);
            rest
        }
        None => Map::new(),
    };
    for (key, value) in event {
        rest.entry(key).or_insert(value);
    }
    if message_key.is_none() {
        // An event with no message key (structlog's `event`, a metric's name) is still found by
        // a search without a field: its other text stands in for the message. Not stored; the
        // hit shows the event as it was.
        let mut words = String::new();
        for value in rest.values() {
            text_of(value, &mut words);
        }
        if !words.is_empty() {
            doc.add_text(schema.message, words);
        }
    }
    if !rest.is_empty() {
        doc.add_field_value(schema.fields, &OwnedValue::from(rest));
    }
    (id, bad_timestamp)
}

/// Appends the strings and numbers in `value`, each followed by a space.
fn text_of(value: &Value, out: &mut String) {
    match value {
        Value::String(text) => {
            out.push_str(text);
            out.push(' ');
        }
        Value::Number(n) => {
            out.push_str(&n.to_string());
            out.push(' ');
        }
        Value::Array(items) => items.iter().for_each(|v| text_of(v, out)),
        Value::Object(map) => map.values().for_each(|v| text_of(v, out)),
        Value::Bool(_) | Value::Null => {}
    }
}

/// An event's own time: RFC 3339 text, or a number of seconds, milliseconds, microseconds or
/// nanoseconds since the epoch (told apart by size, as log shippers do).
pub fn parse_event_time(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => parse_rfc3339_ms(text),
        Value::Number(number) => epoch_number_ms(number.as_f64()?),
        _ => None,
    }
}

/// Milliseconds from an epoch number by its size: below 10^11 seconds (10^11 s is the year
/// 5138), below 10^14 milliseconds, below 10^17 microseconds, else nanoseconds.
pub fn epoch_number_ms(n: f64) -> Option<i64> {
    let ms = match n.abs() {
        a if a < 1e11 => n * 1e3,
        a if a < 1e14 => n,
        a if a < 1e17 => n / 1e3,
        _ => n / 1e6,
    };
    ms.is_finite()
        .then_some(ms as i64)
        .filter(|&ms| in_range(ms))
}

pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    rfc3339_ms_any_year(text).filter(|&ms| in_range(ms))
}

/// An RFC 3339 time in milliseconds whatever its year (`i64::MAX` past what that holds).
pub fn rfc3339_ms_any_year(text: &str) -> Option<i64> {
    let time = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    Some(i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
}

/// How far an event's own time may be past its Kafka record's and the indexer's clock; further
/// is a bad timestamp (the event keeps it, the index uses the record's time).
const MAX_AHEAD_MS: i64 = 24 * 3_600_000;

/// Tantivy keeps dates as i64 nanoseconds: the years 1677 to 2262.
pub const MAX_TIME_MS: i64 = i64::MAX / 1_000_000;

pub fn in_range(ms: i64) -> bool {
    (-MAX_TIME_MS..=MAX_TIME_MS).contains(&ms)
}

fn into_text(value: Value) -> String {
    match value {
        Value::String(text) => text,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use tantivy::schema::Value as _;

    use super::*;

    /// The Kafka time of `map`'s records (2027-01-15T08:00:00Z): after every event time below.
    const RECORD_MS: i64 = 1_800_000_000_000;

    fn map(payload: &[u8]) -> Mapped {
        let schema = LogSchema::new();
        map_record(
            &schema,
            &Record {
                partition: 1,
                offset: 7,
                timestamp_ms: RECORD_MS,
                payload,
            },
            256,
            RECORD_MS,
        )
    }

    fn text_of(mapped: &Mapped, field: tantivy::schema::Field) -> Option<String> {
        mapped
            .doc
            .get_first(field)
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    fn time_of(mapped: &Mapped) -> i64 {
        let schema = LogSchema::new();
        mapped
            .doc
            .get_first(schema.timestamp)
            .and_then(|v| v.as_datetime())
            .unwrap()
            .into_timestamp_millis()
    }

    #[test]
    fn event_fields_land_in_their_fields() {
        let schema = LogSchema::new();
        let m = map(br#"{"id":"a1","timestamp":"2026-01-02T03:04:05.678Z","level":"warn","message":"disk low","user":"bo"}"#);
        assert_eq!(text_of(&m, schema.id).as_deref(), Some("a1"));
        assert!(m.id.as_deref().unwrap().starts_with("a1\u{1f}"));
        assert!(m.malformed.is_none());
        assert_eq!(time_of(&m), 1_767_323_045_678);
        assert_eq!(text_of(&m, schema.level).as_deref(), Some("warn"));
        assert_eq!(text_of(&m, schema.message).as_deref(), Some("disk low"));
        assert!(m.doc.get_first(schema.fields).is_some());
    }

    #[test]
    fn plain_text_is_a_message_at_the_record_time() {
        let schema = LogSchema::new();
        let m = map(b"just a line");
        assert!(m.malformed.is_none() && m.id.is_none());
        assert_eq!(text_of(&m, schema.message).as_deref(), Some("just a line"));
        assert_eq!(time_of(&m), RECORD_MS);
    }

    #[test]
    fn odd_input_is_indexed_and_reported() {
        let schema = LogSchema::new();
        let m = map(b"{\"message\": broken");
        assert_eq!(m.malformed, Some(Malformed::InvalidJson));
        assert_eq!(
            text_of(&m, schema.message).as_deref(),
            Some("{\"message\": broken")
        );
        let m = map(b"bad \xff byte");
        assert_eq!(m.malformed, Some(Malformed::InvalidUtf8));
        let m = map(br#"{"timestamp":"yesterday","message":"x"}"#);
        assert_eq!(m.malformed, Some(Malformed::BadTimestamp));
        assert_eq!(time_of(&m), RECORD_MS);
        let m = map("é".repeat(200).as_bytes());
        assert_eq!(m.malformed, Some(Malformed::Oversize));
        assert_eq!(text_of(&m, schema.message).unwrap().len(), 256);
    }

    /// An event with no message key is found by a search without a field: its other text
    /// stands in for the message (indexed, not stored).
    #[test]
    fn an_event_without_a_message_key_is_searchable_by_its_text() {
        let schema = LogSchema::new();
        let m = map(br#"{"event":"payment failed","user":{"name":"bo"},"amount":42,"ok":false}"#);
        let text = text_of(&m, schema.message).unwrap();
        let mut words: Vec<&str> = text.split_whitespace().collect();
        words.sort_unstable();
        assert_eq!(words, ["42", "bo", "failed", "payment"]);
        let with_message = map(br#"{"message":"disk low","user":"bo"}"#);
        assert_eq!(
            text_of(&with_message, schema.message).as_deref(),
            Some("disk low")
        );
    }

    #[test]
    fn ids_that_name_nothing_are_no_ids() {
        for event in [
            &br#"{"id":null,"message":"a"}"#[..],
            br#"{"id":"","message":"a"}"#,
            br#"{"id":{},"message":"a"}"#,
        ] {
            assert_eq!(map(event).id, None);
        }
        assert!(map(br#"{"id":7}"#).id.unwrap().starts_with("7\u{1f}"));
    }

    #[test]
    fn times_a_day_past_their_record_are_bad_timestamps() {
        // The record's time in `map` is 2027-01-15T08:00:00Z.
        let m = map(br#"{"timestamp":"2027-01-16T07:00:00Z","message":"x"}"#);
        assert_eq!(
            m.malformed, None,
            "less than a day ahead: a clock a little off"
        );
        let m = map(br#"{"timestamp":"2030-01-01T00:00:00Z","message":"x"}"#);
        assert_eq!(m.malformed, Some(Malformed::BadTimestamp));
        assert_eq!(time_of(&m), RECORD_MS);
    }

    #[test]
    fn times_outside_tantivys_range_are_bad_timestamps() {
        let m = map(br#"{"timestamp":"9999-12-31T00:00:00Z","message":"x"}"#);
        assert_eq!(m.malformed, Some(Malformed::BadTimestamp));
        assert_eq!(time_of(&m), RECORD_MS);
        assert_eq!(
            parse_event_time(&serde_json::json!(1_700_000_000_123_456i64)),
            Some(1_700_000_000_123),
            "microseconds"
        );
        assert_eq!(
            parse_event_time(&serde_json::json!(1_700_000_000_123_456_789i64)),
            Some(1_700_000_000_123),
            "nanoseconds"
        );
    }

    #[test]
    fn epoch_numbers_are_seconds_or_milliseconds() {
        assert_eq!(
            parse_event_time(&serde_json::json!(1_700_000_000)),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_event_time(&serde_json::json!(1_700_000_000_123i64)),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_event_time(&serde_json::json!(true)), None);
    }
}
