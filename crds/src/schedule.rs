//! `spec.schedule`: cron expressions and time zones as a Kubernetes CronJob reads them (five
//! fields `minute hour day-of-month month day-of-week`, the `@hourly`-style macros, IANA time
//! zones), parsed with `croner`. A sixth, leading seconds field is accepted only where the caller
//! allows it (the local backend, which runs the schedule itself).

use std::str::FromStr;

use chrono::{TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Longest `spec.schedule.cron`.
pub const MAX_CRON: u32 = 128;
/// Longest `spec.schedule.timeZone` (IANA names are shorter).
pub const MAX_TIME_ZONE: u32 = 64;

/// Parses `expression`; `seconds` allows a leading seconds field (six fields).
///
/// # Errors
/// A message saying what is wrong with the expression.
pub fn parse_cron(expression: &str, seconds: bool) -> Result<Cron, String> {
    let parser = CronParser::builder()
        .seconds(if seconds {
            Seconds::Optional
        } else {
            Seconds::Disallowed
        })
        .year(Year::Disallowed)
        .build();
    parser.parse(expression).map_err(|e| {
        let fields = expression.split_whitespace().count();
        if fields == 6 && !seconds {
            format!(
                "`{expression}` has 6 fields: a seconds field is only supported by the local \
                 backend (a Kubernetes CronJob has minute granularity: `minute hour day month weekday`)"
            )
        } else {
            format!("`{expression}` is not a cron expression ({e}); e.g. `*/15 * * * *` or `@hourly`")
        }
    })
}

/// Parses an IANA time zone name (`Europe/Zurich`); `None` is UTC.
///
/// # Errors
/// A message naming the unknown zone.
pub fn parse_time_zone(name: Option<&str>) -> Result<chrono_tz::Tz, String> {
    match name {
        None => Ok(chrono_tz::UTC),
        Some(name) => chrono_tz::Tz::from_str(name)
            .map_err(|_| format!("`{name}` is not an IANA time zone name such as `Europe/Zurich`")),
    }
}

/// The first time (ms since the epoch) after `after_ms` at which `expression` fires in `zone`.
///
/// # Errors
/// As [`parse_cron`] and [`parse_time_zone`], or when no time matches.
pub fn next_after(
    expression: &str,
    zone: Option<&str>,
    seconds: bool,
    after_ms: i64,
) -> Result<i64, String> {
    let cron = parse_cron(expression, seconds)?;
    let zone = parse_time_zone(zone)?;
    let after = Utc
        .timestamp_millis_opt(after_ms)
        .single()
        .ok_or_else(|| format!("{after_ms} ms is out of range"))?
        .with_timezone(&zone);
    cron.find_next_occurrence(&after, false)
        .map(|next| next.timestamp_millis())
        .map_err(|e| format!("`{expression}` never fires: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_macros_and_zones_as_a_cronjob_reads_them() {
        // 2026-12-07T09:10:00Z
        let at = 1_796_634_600_000;
        assert_eq!(
            next_after("*/15 * * * *", None, false, at),
            Ok(at + 5 * 60_000)
        );
        assert_eq!(next_after("@hourly", None, false, at), Ok(at + 50 * 60_000));
        // 10:00 in Zurich (UTC+1 in December) is 09:00 UTC: the next is tomorrow.
        assert_eq!(
            next_after("0 10 * * *", Some("Europe/Zurich"), false, at),
            Ok(at - 10 * 60_000 + 24 * 3_600_000)
        );
        assert!(
            parse_cron("*/5 * * * * *", false)
                .err()
                .is_some_and(|e| e.contains("only supported by the local backend"))
        );
        assert_eq!(next_after("*/5 * * * * *", None, true, at), Ok(at + 5_000));
        assert!(parse_cron("61 * * * *", false).is_err());
        assert!(parse_time_zone(Some("Mars/Olympus")).is_err());
    }
}
