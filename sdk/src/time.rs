//! Calendar days from timestamps, since the sandbox has no clock and no time zone:
//! every function here is pure and works in UTC.
//!
//! Timestamps are milliseconds since the Unix epoch, as in readings. Dates use the
//! proleptic Gregorian calendar (Howard Hinnant's `civil_from_days` and
//! `days_from_civil`).
//!
//! ```
//! use hearth_sdk::time;
//!
//! let ts = 1_795_689_000_123; // 2026-11-26T10:30:00.123Z
//! assert_eq!(time::utc_day(ts), (2026, 11, 26));
//! assert_eq!(time::format_day(ts), "2026-11-26");
//! assert_eq!(time::format_utc(ts), "2026-11-26T10:30:00Z");
//! assert_eq!(time::day_start(ts), time::utc_midnight(2026, 11, 26).unwrap());
//! assert_eq!(time::day_start(ts) + time::DAY_MS, time::utc_midnight(2026, 11, 27).unwrap());
//! ```

/// Milliseconds in a day (UTC has no daylight saving; leap seconds are not counted).
pub const DAY_MS: u64 = 86_400_000;

/// Days from 0000-03-01 to 1970-01-01.
const EPOCH_SHIFT: u64 = 719_468;
/// Days in a 400-year era.
const ERA_DAYS: u64 = 146_097;

/// The UTC date `(year, month 1..=12, day 1..=31)` of `ts_ms`.
pub fn utc_day(ts_ms: u64) -> (i32, u32, u32) {
    civil_from_days(ts_ms / DAY_MS)
}

/// The first millisecond of the UTC day of `ts_ms`.
pub fn day_start(ts_ms: u64) -> u64 {
    ts_ms - ts_ms % DAY_MS
}

/// The UTC date of `ts_ms` as `YYYY-MM-DD`.
pub fn format_day(ts_ms: u64) -> String {
    let (y, m, d) = utc_day(ts_ms);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `ts_ms` as an RFC 3339 UTC time to the second, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(ts_ms: u64) -> String {
    let secs = (ts_ms % DAY_MS) / 1000;
    let (h, min, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    format!("{}T{h:02}:{min:02}:{s:02}Z", format_day(ts_ms))
}

/// The first millisecond of the UTC day `year-month-day`; `None` when that is no date
/// or lies before 1970-01-01.
pub fn utc_midnight(year: i32, month: u32, day: u32) -> Option<u64> {
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // Years start in March, so that the leap day is the last of the year.
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // 0..=399
    let mp = i64::from((month + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // 0..=365
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // 0..=146096
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days).ok()?.checked_mul(DAY_MS)
}

fn is_leap(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The date `days` days after 1970-01-01.
fn civil_from_days(days: u64) -> (i32, u32, u32) {
    let z = days + EPOCH_SHIFT;
    let era = z / ERA_DAYS;
    let doe = z % ERA_DAYS; // 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // 0..=11, March = 0
    let day = doy - (153 * mp + 2) / 5 + 1; // 1..=31
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // 1..=12
    let year = era * 400 + yoe + u64::from(month <= 2);
    // u64::MAX milliseconds is in the year 584 556 019, well inside i32; day and
    // month are small by construction.
    (
        i32::try_from(year).unwrap_or(i32::MAX),
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(utc_day(0), (1970, 1, 1));
        assert_eq!(utc_day(DAY_MS - 1), (1970, 1, 1));
        assert_eq!(utc_day(DAY_MS), (1970, 1, 2));
        // 2000-02-29T12:00:00Z, a leap day in a century divisible by 400.
        assert_eq!(utc_day(951_825_600_000), (2000, 2, 29));
        // 2026-11-20T00:00:00Z.
        assert_eq!(utc_day(1_795_132_800_000), (2026, 11, 20));
        assert_eq!(format_day(1_795_132_800_000), "2026-11-20");
        assert_eq!(
            format_utc(1_795_132_800_000 + 3_723_456),
            "2026-11-20T01:02:03Z"
        );
        // The last millisecond of 1999.
        assert_eq!(format_utc(946_684_799_999), "1999-12-31T23:59:59Z");
    }

    #[test]
    fn the_largest_timestamp_has_a_date() {
        let (y, m, d) = utc_day(u64::MAX);
        assert_eq!((y, m, d), (584_556_019, 4, 3));
        assert_eq!(utc_midnight(y, m, d), Some(day_start(u64::MAX)));
    }

    #[test]
    fn midnight_round_trips_every_day_for_a_thousand_years() {
        let mut expected = 0;
        let (mut y, mut m, mut d) = (1970, 1, 1);
        while y < 2970 {
            assert_eq!(utc_midnight(y, m, d), Some(expected), "{y}-{m}-{d}");
            assert_eq!(utc_day(expected), (y, m, d));
            assert_eq!(utc_day(expected + DAY_MS - 1), (y, m, d));
            assert_eq!(day_start(expected + DAY_MS / 2), expected);
            expected += DAY_MS;
            d += 1;
            if d > days_in_month(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn invalid_or_early_dates_have_no_midnight() {
        assert_eq!(utc_midnight(1969, 12, 31), None);
        assert_eq!(utc_midnight(2026, 2, 29), None);
        assert_eq!(utc_midnight(1900, 2, 29), None);
        assert!(utc_midnight(2000, 2, 29).is_some());
        assert_eq!(utc_midnight(2026, 13, 1), None);
        assert_eq!(utc_midnight(2026, 0, 1), None);
        assert_eq!(utc_midnight(2026, 4, 31), None);
        assert_eq!(utc_midnight(2026, 4, 0), None);
    }
}
