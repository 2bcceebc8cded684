//! FHIR date, dateTime and instant values as the time ranges they cover (https://hl7.org/fhir/R4/search.html#date).
//!
//! Every value is turned into a closed range of microseconds since the Unix epoch, UTC, so that
//! indexing and search comparisons reduce to integer range arithmetic.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};

/// A closed range [lo, hi] of microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub lo: i64,
    pub hi: i64,
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// 0001-01-01T00:00:00Z: FHIR years have exactly four digits and year 0000 is not allowed.
const FIRST_FHIR_MICROS: i64 = -62_135_596_800 * MICROS_PER_SECOND;
/// 9999-12-31T23:59:59.999999Z.
const LAST_FHIR_MICROS: i64 = 253_402_300_800 * MICROS_PER_SECOND - 1;

/// Parses a FHIR date, dateTime or instant into the range it covers.
///
/// Accepted forms: `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm`, `YYYY-MM-DDThh:mm:ss` and
/// `YYYY-MM-DDThh:mm:ss.f…`, each time form optionally followed by `Z` or `±hh:mm`.
/// A partial date covers the whole year, month or day; a time covers the minute, the second or the
/// fraction's last digit (fractions finer than a microsecond are truncated to the microsecond).
/// A time without a timezone and all partial dates are taken as UTC, because the server keeps no
/// local timezone of its own. Leap seconds (`:60`) are not representable and are rejected.
/// Returns None for anything malformed: month 13, day 32, 30 February, a bad offset, trailing text.
pub fn parse_range(s: &str) -> Option<DateRange> {
    let b = s.as_bytes();
    let year = digits(b, 0, 4)?;
    if year == 0 {
        return None;
    }
    let year = i32::try_from(year).ok()?;
    if b.len() == 4 {
        let lo = day_start(NaiveDate::from_ymd_opt(year, 1, 1)?);
        let hi = day_start(NaiveDate::from_ymd_opt(year + 1, 1, 1)?) - 1;
        return Some(DateRange { lo, hi });
    }

    expect(b, 4, b'-')?;
    let month = digits(b, 5, 2)?;
    let first_of_month = NaiveDate::from_ymd_opt(year, month, 1)?;
    if b.len() == 7 {
        let next = if month == 12 {
            NaiveDate::from_ymd_opt(year + 1, 1, 1)?
        } else {
            NaiveDate::from_ymd_opt(year, month + 1, 1)?
        };
        let lo = day_start(first_of_month);
        return Some(DateRange {
            lo,
            hi: day_start(next) - 1,
        });
    }

    expect(b, 7, b'-')?;
    let date = NaiveDate::from_ymd_opt(year, month, digits(b, 8, 2)?)?;
    if b.len() == 10 {
        let lo = day_start(date);
        return Some(DateRange {
            lo,
            hi: lo + MICROS_PER_DAY - 1,
        });
    }

    expect(b, 10, b'T')?;
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b':')?;
    let minute = digits(b, 14, 2)?;
    let mut pos = 16;
    let mut second = 0;
    let mut fraction = 0;
    let mut width = MICROS_PER_MINUTE;
    if b.get(pos) == Some(&b':') {
        second = digits(b, pos + 1, 2)?;
        pos += 3;
        width = MICROS_PER_SECOND;
        if b.get(pos) == Some(&b'.') {
            pos += 1;
            let start = pos;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            let written = b.get(start..pos)?;
            if written.is_empty() {
                return None;
            }
            let kept = &written[..written.len().min(6)];
            let mut scale = MICROS_PER_SECOND;
            for d in kept {
                scale /= 10;
                fraction += i64::from(d - b'0') * scale;
            }
            width = scale;
        }
    }
    let offset_micros = parse_offset(b.get(pos..)?)?;

    let local = date.and_hms_opt(hour, minute, second)?.and_utc();
    let lo = local.timestamp_micros() + fraction - offset_micros;
    Some(DateRange {
        lo,
        hi: lo + width - 1,
    })
}

/// Formats microseconds since the epoch as a FHIR instant in UTC.
///
/// The format is `YYYY-MM-DDThh:mm:ss.sssZ` when the value falls on a whole millisecond and
/// `YYYY-MM-DDThh:mm:ss.ssssssZ` otherwise, so the text always carries at least milliseconds and
/// never loses a stored microsecond. Values outside years 0001–9999 are clamped to that span, the
/// only one a FHIR instant can express.
pub fn format_instant(micros: i64) -> String {
    let micros = micros.clamp(FIRST_FHIR_MICROS, LAST_FHIR_MICROS);
    let seconds = micros.div_euclid(MICROS_PER_SECOND);
    let sub = micros.rem_euclid(MICROS_PER_SECOND);
    let Some(t) = DateTime::<Utc>::from_timestamp(seconds, 0) else {
        return String::from("0001-01-01T00:00:00.000Z");
    };
    let fraction = if sub % 1000 == 0 {
        format!("{:03}", sub / 1000)
    } else {
        format!("{sub:06}")
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{fraction}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Current time in microseconds since the epoch (UTC), truncated to whole microseconds.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn day_start(date: NaiveDate) -> i64 {
    date.and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_micros())
}

/// Reads exactly `len` ASCII digits at `start`.
fn digits(b: &[u8], start: usize, len: usize) -> Option<u32> {
    let slice = b.get(start..start.checked_add(len)?)?;
    slice.iter().try_fold(0u32, |acc, d| {
        d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
    })
}

fn expect(b: &[u8], pos: usize, wanted: u8) -> Option<()> {
    (b.get(pos) == Some(&wanted)).then_some(())
}

/// The timezone suffix of a time: nothing (UTC), `Z`, or `±hh:mm` within the R4 bounds of ±14:00.
fn parse_offset(rest: &[u8]) -> Option<i64> {
    match rest {
        [] | [b'Z'] => Some(0),
        [sign @ (b'+' | b'-'), ..] if rest.len() == 6 => {
            let hours = digits(rest, 1, 2)?;
            expect(rest, 3, b':')?;
            let minutes = digits(rest, 4, 2)?;
            if minutes > 59 || hours > 14 || (hours == 14 && minutes != 0) {
                return None;
            }
            let magnitude = i64::from(hours * 60 + minutes) * MICROS_PER_MINUTE;
            Some(if *sign == b'-' { -magnitude } else { magnitude })
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn micros(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_micros()
    }

    fn range(s: &str) -> DateRange {
        parse_range(s).unwrap()
    }

    #[test]
    fn a_year_covers_every_microsecond_of_that_year() {
        assert_eq!(
            range("2024"),
            DateRange {
                lo: micros("2024-01-01T00:00:00Z"),
                hi: micros("2025-01-01T00:00:00Z") - 1,
            }
        );
    }

    #[test]
    fn a_month_covers_the_whole_month_including_december() {
        assert_eq!(
            range("2024-05"),
            DateRange {
                lo: micros("2024-05-01T00:00:00Z"),
                hi: micros("2024-06-01T00:00:00Z") - 1,
            }
        );
        assert_eq!(range("2023-12").hi, micros("2024-01-01T00:00:00Z") - 1);
    }

    #[test]
    fn a_day_covers_the_whole_utc_day() {
        assert_eq!(
            range("2024-05-06"),
            DateRange {
                lo: micros("2024-05-06T00:00:00Z"),
                hi: micros("2024-05-07T00:00:00Z") - 1,
            }
        );
    }

    #[test]
    fn a_time_without_seconds_covers_the_minute() {
        assert_eq!(
            range("2024-05-06T10:00"),
            DateRange {
                lo: micros("2024-05-06T10:00:00Z"),
                hi: micros("2024-05-06T10:01:00Z") - 1,
            }
        );
    }

    #[test]
    fn a_time_with_seconds_covers_that_second_and_defaults_to_utc() {
        let r = range("2024-05-06T10:00:00");
        assert_eq!(r.lo, micros("2024-05-06T10:00:00Z"));
        assert_eq!(r.hi, r.lo + 999_999);
        assert_eq!(range("2024-05-06T10:00:00Z"), r);
    }

    #[test]
    fn fractional_seconds_cover_the_precision_written() {
        let base = micros("2024-05-06T10:00:00Z");
        assert_eq!(
            range("2024-05-06T10:00:00.123Z"),
            DateRange {
                lo: base + 123_000,
                hi: base + 123_999,
            }
        );
        assert_eq!(range("2024-05-06T10:00:00.5Z").lo, base + 500_000);
        assert_eq!(range("2024-05-06T10:00:00.5Z").hi, base + 599_999);
        let exact = range("2024-05-06T10:00:00.123456Z");
        assert_eq!((exact.lo, exact.hi), (base + 123_456, base + 123_456));
        let finer = range("2024-05-06T10:00:00.123456789Z");
        assert_eq!((finer.lo, finer.hi), (base + 123_456, base + 123_456));
    }

    #[test]
    fn offsets_shift_the_range_to_utc() {
        assert_eq!(
            range("2024-05-06T10:00:00+02:00").lo,
            micros("2024-05-06T08:00:00Z")
        );
        assert_eq!(
            range("2024-05-06T10:00:00-05:30").lo,
            micros("2024-05-06T15:30:00Z")
        );
        assert_eq!(
            range("2015-01-15T14:30:00+01:00"),
            range("2015-01-15T13:30:00Z")
        );
        assert_eq!(
            range("2024-05-06T10:00+14:00").lo,
            micros("2024-05-05T20:00:00Z")
        );
    }

    #[test]
    fn leap_days_exist_only_in_leap_years() {
        assert!(parse_range("2024-02-29").is_some());
        assert!(parse_range("2000-02-29").is_some());
        assert!(parse_range("2023-02-29").is_none());
        assert!(parse_range("1900-02-29").is_none());
        assert_eq!(
            range("2024-02").hi - range("2024-02").lo + 1,
            29 * MICROS_PER_DAY
        );
        assert_eq!(
            range("2023-02").hi - range("2023-02").lo + 1,
            28 * MICROS_PER_DAY
        );
        assert_eq!(
            range("2024").hi - range("2024").lo + 1,
            366 * MICROS_PER_DAY
        );
    }

    #[test]
    fn malformed_values_are_rejected() {
        for bad in [
            "",
            "24",
            "20245",
            "2024-13",
            "2024-00",
            "2024-05-32",
            "2024-04-31",
            "2024-02-30",
            "0000",
            "2024-5-06",
            "2024/05/06",
            "2024-05-06T",
            "2024-05-06T24:00:00Z",
            "2024-05-06T10:60:00Z",
            "2024-05-06T10:00:60Z",
            "2024-05-06T10:00:00.Z",
            "2024-05-06T10:00:00+15:00",
            "2024-05-06T10:00:00+14:30",
            "2024-05-06T10:00:00+02:60",
            "2024-05-06T10:00:00+0200",
            "2024-05-06T10:00:00 ",
            "2024-05-06Z",
            "2024-05-06T10Z",
            "2024-05-06T10:00:00ZZ",
            "２０２４",
        ] {
            assert!(parse_range(bad).is_none(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn instants_are_formatted_with_milliseconds_or_microseconds_as_needed() {
        let base = micros("2024-05-06T10:00:00Z");
        assert_eq!(format_instant(base), "2024-05-06T10:00:00.000Z");
        assert_eq!(format_instant(base + 123_000), "2024-05-06T10:00:00.123Z");
        assert_eq!(
            format_instant(base + 123_456),
            "2024-05-06T10:00:00.123456Z"
        );
        assert_eq!(format_instant(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn formatted_instants_parse_back_to_the_same_microsecond() {
        for m in [0, 1, 999, 1_000, 1_715_000_000_123_456, -86_400_000_001] {
            assert_eq!(range(&format_instant(m)).lo, m);
        }
    }

    #[test]
    fn instants_outside_the_fhir_years_are_clamped() {
        assert_eq!(range("0001").lo, FIRST_FHIR_MICROS);
        assert_eq!(range("9999").hi, LAST_FHIR_MICROS);
        assert_eq!(format_instant(i64::MIN), "0001-01-01T00:00:00.000Z");
        assert_eq!(format_instant(i64::MAX), "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn now_is_after_this_module_was_written() {
        assert!(now_micros() > micros("2024-01-01T00:00:00Z"));
    }
}
