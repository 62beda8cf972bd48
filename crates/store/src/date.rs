//! FHIR dates as half-open ranges of instants.
//!
//! Every date-like value (a `date`, `dateTime`, `instant` or a search value) stands for the
//! range of instants its precision covers: `2020` is all of 2020, `2020-05-03T10:00` is one
//! minute. Both the index and the search compare such ranges, in microseconds since the epoch,
//! so partial dates behave as the FHIR search spec says.

use chrono::{FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

/// Lower bound for an open-ended range (a Period without `start`).
pub(crate) const MIN_US: i64 = -(1 << 62);
/// Upper bound for an open-ended range (a Period without `end`).
pub(crate) const MAX_US: i64 = 1 << 62;

/// The range `[lo, hi)` of instants, in microseconds since the epoch, that a FHIR
/// `date`/`dateTime`/`instant` string covers. Values without a timezone are taken as UTC.
pub(crate) fn parse_range(s: &str) -> Option<(i64, i64)> {
    let s = s.trim();
    let (date_part, time_part) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut it = date_part.split('-');
    let year: i32 = digits(it.next()?, 4)?.try_into().ok()?;
    let month = match it.next() {
        Some(m) => Some(digits(m, 2)?),
        None => None,
    };
    let day = match it.next() {
        Some(d) => Some(digits(d, 2)?),
        None => None,
    };
    if it.next().is_some() || year < 1 {
        return None;
    }
    match (month, day, time_part) {
        (None, None, None) => {
            let lo = date_us(NaiveDate::from_ymd_opt(year, 1, 1)?)?;
            let hi = date_us(NaiveDate::from_ymd_opt(year + 1, 1, 1)?)?;
            Some((lo, hi))
        }
        (Some(m), None, None) => {
            let start = NaiveDate::from_ymd_opt(year, u32::try_from(m).ok()?, 1)?;
            let next = if m == 12 {
                NaiveDate::from_ymd_opt(year + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(year, u32::try_from(m + 1).ok()?, 1)?
            };
            Some((date_us(start)?, date_us(next)?))
        }
        (Some(m), Some(d), None) => {
            let day =
                NaiveDate::from_ymd_opt(year, u32::try_from(m).ok()?, u32::try_from(d).ok()?)?;
            let lo = date_us(day)?;
            Some((lo, lo + 86_400_000_000))
        }
        (Some(m), Some(d), Some(t)) => {
            let day =
                NaiveDate::from_ymd_opt(year, u32::try_from(m).ok()?, u32::try_from(d).ok()?)?;
            parse_time(day, t)
        }
        _ => None,
    }
}

/// `hh:mm[:ss[.fff…]]` followed by `Z`, `±hh:mm` or nothing (UTC).
fn parse_time(day: NaiveDate, t: &str) -> Option<(i64, i64)> {
    let tz_at = t.find(['Z', 'z', '+', '-']);
    let (clock, tz) = match tz_at {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let offset_secs = match tz {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            let (h, m) = tz[1..].split_once(':')?;
            let (h, m) = (digits(h, 2)?, digits(m, 2)?);
            if h > 14 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let mut parts = clock.split(':');
    let hour = digits(parts.next()?, 2)?;
    let minute = digits(parts.next()?, 2)?;
    let (second, frac, width) = match parts.next() {
        None => (0, 0, 60_000_000),
        Some(sec) => {
            let (whole, frac) = match sec.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (sec, None),
            };
            let second = digits(whole, 2)?;
            match frac {
                None => (second, 0, 1_000_000),
                Some(f) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => {
                    // Keep microsecond precision; finer digits only narrow the range to 1 µs.
                    let n = f.len().min(6);
                    let micros: i64 = f[..n].parse().ok()?;
                    let scale = 10_i64.pow(u32::try_from(6 - n).ok()?);
                    (second, micros * scale, scale)
                }
                Some(_) => return None,
            }
        }
    };
    if parts.next().is_some() {
        return None;
    }
    let time = NaiveTime::from_hms_opt(
        u32::try_from(hour).ok()?,
        u32::try_from(minute).ok()?,
        u32::try_from(second).ok()?,
    )?;
    let offset = FixedOffset::east_opt(i32::try_from(offset_secs).ok()?)?;
    let local = NaiveDateTime::new(day, time);
    let at = offset.from_local_datetime(&local).single()?;
    let lo = at.timestamp_micros() + frac;
    Some((lo, lo + width))
}

fn date_us(d: NaiveDate) -> Option<i64> {
    Some(
        Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?)
            .timestamp_micros(),
    )
}

/// Exactly `n` ASCII digits.
fn digits(s: &str, n: usize) -> Option<i64> {
    if s.len() == n && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// The current instant, as FHIR `meta.lastUpdated` (UTC, microseconds) and as microseconds.
pub(crate) fn now() -> (String, i64) {
    let t = Utc::now();
    (
        t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        t.timestamp_micros(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> (i64, i64) {
        parse_range(s).unwrap_or_else(|| panic!("{s} did not parse"))
    }

    #[test]
    fn partial_dates_expand_to_their_whole_range() {
        let (lo, hi) = r("2020");
        assert_eq!(lo, r("2020-01-01").0);
        assert_eq!(hi, r("2021-01-01").0);
        let (lo, hi) = r("2020-02");
        assert_eq!((lo, hi), (r("2020-02-01").0, r("2020-03-01").0));
        let (lo, hi) = r("2020-12");
        assert_eq!(hi, r("2021").0);
        assert_eq!(lo, r("2020-12-01T00:00:00Z").0);
        let (lo, hi) = r("2020-05-03");
        assert_eq!(hi - lo, 86_400_000_000);
    }

    #[test]
    fn times_carry_their_precision_and_offset() {
        assert_eq!(
            r("2020-05-03T10:00Z").1 - r("2020-05-03T10:00Z").0,
            60_000_000
        );
        assert_eq!(
            r("2020-05-03T10:00:00Z").1 - r("2020-05-03T10:00:00Z").0,
            1_000_000
        );
        assert_eq!(
            r("2020-05-03T10:00:00.5Z").0 - r("2020-05-03T10:00:00Z").0,
            500_000
        );
        assert_eq!(
            r("2020-05-03T10:00:00.123456789Z").1 - r("2020-05-03T10:00:00.123456789Z").0,
            1
        );
        assert_eq!(
            r("2020-05-03T12:00:00+02:00").0,
            r("2020-05-03T10:00:00Z").0
        );
        assert_eq!(r("2020-05-03T05:00:00-05:00").0, r("2020-05-03T10:00:00").0);
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            "",
            "20",
            "2020-13",
            "2020-02-30",
            "2020-1-1",
            "abcd",
            "2020-01-01T25:00Z",
            "2020-01-01T10:00+99:00",
            "2020-01-01T10:00:00.Z",
            "2020-01-01T10",
            "2020-01-01-02",
        ] {
            assert!(parse_range(bad).is_none(), "{bad} should not parse");
        }
    }
}
