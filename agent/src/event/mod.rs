//! Events as the design brief's contract has them on the `logs` topic: `id`, `timestamp`,
//! `host`, `source`, `stream`, `level`, `message` and `fields` for the rest. `json` writes them;
//! the file input uses it directly, line by line, without building an `Event`.

pub mod json;

use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub struct Event {
    /// Deterministic from the source's identity and position: a re-sent event has the same id.
    pub id: String,
    /// RFC 3339; the event's own time where the source gives one.
    pub timestamp: String,
    pub host: String,
    pub source: String,
    /// `id`, `name`, `image`, `labels`, as far as the source knows them.
    pub container: Option<Value>,
    pub stream: Option<String>,
    pub level: Option<String>,
    pub message: String,
    pub fields: Map<String, Value>,
}

impl Event {
    /// The event's JSON object; parts it does not have are left out.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.message.len());
        out.push(b'{');
        let string = |out: &mut Vec<u8>, name, value: &str| {
            json::push_key(out, name);
            json::push_str(out, value.as_bytes());
        };
        string(&mut out, "id", &self.id);
        string(&mut out, "timestamp", &self.timestamp);
        string(&mut out, "host", &self.host);
        string(&mut out, "source", &self.source);
        if let Some(container) = &self.container {
            json::push_key(&mut out, "container");
            json::push_value(&mut out, container);
        }
        if let Some(stream) = &self.stream {
            string(&mut out, "stream", stream);
        }
        if let Some(level) = &self.level {
            string(&mut out, "level", level);
        }
        string(&mut out, "message", &self.message);
        if !self.fields.is_empty() {
            json::push_key(&mut out, "fields");
            json::push_value(&mut out, &self.fields);
        }
        out.push(b'}');
        out
    }
}

/// How many of a message's `message` bytes to keep so that its event, `event` bytes now, fits
/// in `budget`: in proportion, and a tenth less (escaping makes some bytes longer than others),
/// so that cutting takes a pass or two.
pub fn message_kept(message: usize, event: usize, budget: usize) -> usize {
    (message as u128 * budget as u128 / event.max(1) as u128) as usize * 9 / 10
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Now, as RFC 3339 with milliseconds in UTC.
pub fn now_rfc3339() -> String {
    rfc3339_ms(now_ms())
}

/// The latest time RFC 3339 can write (the end of year 9999), in epoch milliseconds.
pub const LATEST_MS: i64 = 253_402_300_799_999;

/// Epoch milliseconds as RFC 3339 in UTC (civil-from-days, so no date crate is needed).
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_from_epoch_ms() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_341_600_123), "2026-11-22T10:00:00.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn optional_parts_are_left_out() {
        let event = Event {
            id: "a".into(),
            timestamp: rfc3339_ms(0),
            host: "h".into(),
            source: "s".into(),
            container: None,
            stream: None,
            level: None,
            message: "m".into(),
            fields: Map::new(),
        };
        let json: Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"a","timestamp":"1970-01-01T00:00:00.000Z","host":"h","source":"s","message":"m"})
        );
    }
}
