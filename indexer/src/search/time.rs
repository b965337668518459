//! Times and durations as people type them: `now`, `-15m`, `2h`, RFC 3339, epoch milliseconds.

use tantivy::time::OffsetDateTime;

use crate::mapping::{epoch_number_ms, in_range, rfc3339_ms_any_year};

/// Parses a point in time; a bare duration (`15m`, `-15m`) means that long before `now_ms`.
/// An epoch number is read by its size, as event times are (seconds below 10^11, then
/// milliseconds, microseconds, nanoseconds). Times Tantivy cannot hold (before 1677, after
/// 2262) are refused.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    let ms = if text.eq_ignore_ascii_case("now") {
        Some(now_ms)
    } else if let Some(ms) = rfc3339_ms_any_year(text) {
        // Read whatever its year, so that one past what the index holds is said to be so.
        Some(ms)
    } else if let Ok(n) = text.parse::<i64>() {
        Some(epoch_number_ms(n as f64).ok_or_else(out_of_range)?)
    } else {
        let ago = text.strip_prefix('-').unwrap_or(text);
        parse_duration_ms(ago)
            .ok()
            .map(|d| now_ms.saturating_sub(d))
    };
    match ms {
        Some(ms) if in_range(ms) => Ok(ms),
        Some(_) => Err(out_of_range()),
        None => Err(format!(
            "`{text}` is not a time: use now, a duration ago (-15m, 2h, 7d), RFC 3339 \
             (2026-11-22T10:00:00Z) or epoch seconds or milliseconds"
        )),
    }
}

fn out_of_range() -> String {
    "times must fall between the years 1677 and 2262".into()
}

/// Parses `500ms`, `30s`, `15m`, `2h`, `7d`, `1w`.
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 30s, 15m, 2h, 7d)"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(format!("`{text}`: unit must be ms, s, m, h, d or w")),
    };
    number
        .checked_mul(unit_ms)
        .filter(|&ms| ms > 0)
        .ok_or_else(|| format!("`{text}` is not a usable duration"))
}

/// RFC 3339 with milliseconds, always three digits (times sort as text), in UTC.
pub fn format_ms(ms: i64) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn relative_and_absolute_times() {
        assert_eq!(parse_time("now", NOW), Ok(NOW));
        assert_eq!(parse_time("-15m", NOW), Ok(NOW - 900_000));
        assert_eq!(parse_time("2h", NOW), Ok(NOW - 7_200_000));
        assert_eq!(
            parse_time("2026-11-22T10:00:00Z", NOW),
            Ok(1_795_341_600_000)
        );
        assert_eq!(parse_time("1700000000000", NOW), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time("1700000000", NOW),
            Ok(1_700_000_000_000),
            "seconds"
        );
        // A time the index cannot hold is said to be out of range, not "not a time".
        let err = parse_time("9999-12-31T00:00:00Z", NOW).unwrap_err();
        assert!(err.contains("between the years"), "{err}");
        assert!(parse_time("-999999d", NOW).is_err());
        let err = parse_time("yesterday", NOW).unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1w"), Ok(604_800_000));
        assert!(parse_duration_ms("0s").is_err());
        assert!(parse_duration_ms("5 minutes").is_err());
        assert!(parse_duration_ms("99999999999999999d").is_err());
    }

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(format_ms(1_795_341_600_123), "2026-11-22T10:00:00.123Z");
        assert_eq!(format_ms(1_795_341_600_500), "2026-11-22T10:00:00.500Z");
        assert_eq!(format_ms(1_795_341_600_000), "2026-11-22T10:00:00.000Z");
    }
}
