//! PostgreSQL timestamps as ISO 8601 text in UTC with microseconds,
//! `2026-11-22T04:30:00.123456Z`: what `restore-points` and `wal-info` print.

use crate::wal::TimestampTz;

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (proleptic Gregorian calendar, UTC).
pub fn iso8601(t: TimestampTz) -> String {
    let us = t.unix_micros();
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time, and its parts (for ids made of them).
pub fn utc_parts(unix_secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let (y, m, d) = civil_from_days(unix_secs.div_euclid(86_400));
    let sod = unix_secs.rem_euclid(86_400);
    (
        y,
        m,
        d,
        (sod / 3600) as u32,
        (sod / 60 % 60) as u32,
        (sod % 60) as u32,
    )
}

/// Year, month, day of the day `days` after 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Microseconds since 2000-01-01 of a Unix time.
    fn pg(unix_secs: i64, micros: i64) -> TimestampTz {
        TimestampTz((unix_secs - 946_684_800) * 1_000_000 + micros)
    }

    #[test]
    fn formats_like_postgres_in_utc() {
        assert_eq!(iso8601(TimestampTz(0)), "2000-01-01T00:00:00.000000Z");
        // date -u -d @1795321800 -> 2026-11-22 04:30:00 UTC
        assert_eq!(
            iso8601(pg(1_795_321_800, 123_456)),
            "2026-11-22T04:30:00.123456Z"
        );
        assert_eq!(iso8601(pg(951_782_400, 1)), "2000-02-29T00:00:00.000001Z");
        assert_eq!(iso8601(pg(0, 0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(iso8601(TimestampTz(-1)), "1999-12-31T23:59:59.999999Z");
        assert_eq!(
            iso8601(pg(4_102_444_799, 999_999)),
            "2099-12-31T23:59:59.999999Z"
        );
    }
}
