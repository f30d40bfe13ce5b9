//! RFC 3339 times, read and written without a date library: the credentials' `Expiration`
//! is the only time this server handles, and it only compares it with the clock and renders it
//! back in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// An instant: seconds since the Unix epoch and a nanosecond part (always `0..1e9`), so that
/// the derived order is the order in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => Timestamp {
                seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
                nanos: since.subsec_nanos(),
            },
            // A clock before 1970: everything has expired, which is the safe reading.
            Err(before) => {
                let back = before.duration();
                let mut seconds = -i64::try_from(back.as_secs()).unwrap_or(i64::MAX);
                let mut nanos = 0;
                if back.subsec_nanos() > 0 {
                    seconds -= 1;
                    nanos = 1_000_000_000 - back.subsec_nanos();
                }
                Timestamp { seconds, nanos }
            }
        }
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (also `t`/space as separator, `z`,
    /// `±HHMM` and `±HH` offsets, `,` before the fraction; a leap second 60 reads as 59).
    /// `None` for anything else, including impossible dates.
    pub fn parse(text: &str) -> Option<Timestamp> {
        let b = text.as_bytes();
        let number = |from: usize, len: usize| -> Option<i64> {
            let digits = b.get(from..from + len)?;
            digits.iter().try_fold(0i64, |n, d| {
                d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
            })
        };
        let year = number(0, 4)?;
        let month = number(5, 2)?;
        let day = number(8, 2)?;
        let hour = number(11, 2)?;
        let minute = number(14, 2)?;
        let second = number(17, 2)?;
        if b.get(4) != Some(&b'-')
            || b.get(7) != Some(&b'-')
            || !matches!(b.get(10), Some(b'T' | b't' | b' '))
            || b.get(13) != Some(&b':')
            || b.get(16) != Some(&b':')
        {
            return None;
        }
        if !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(year, month)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        let mut at = 19;
        let mut nanos = 0u32;
        if matches!(b.get(at), Some(b'.' | b',')) {
            at += 1;
            let start = at;
            while b.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            let digits = at - start;
            if !(1..=9).contains(&digits) {
                return None;
            }
            let fraction = u32::try_from(number(start, digits)?).ok()?;
            nanos = fraction * 10u32.pow(9 - digits as u32);
        }
        let offset_seconds = match b.get(at) {
            Some(b'Z' | b'z') if at + 1 == b.len() => 0,
            Some(sign @ (b'+' | b'-')) => {
                let hours = number(at + 1, 2)?;
                let minutes = match b.len() - at {
                    3 => 0,
                    5 => number(at + 3, 2)?,
                    6 if b[at + 3] == b':' => number(at + 4, 2)?,
                    _ => return None,
                };
                if hours > 23 || minutes > 59 {
                    return None;
                }
                let offset = hours * 3600 + minutes * 60;
                if *sign == b'-' { -offset } else { offset }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_seconds;
        Some(Timestamp { seconds, nanos })
    }

    /// `YYYY-MM-DDTHH:MM:SSZ`: UTC, whole seconds (the fraction is dropped), the form the
    /// controller writes and SDKs read.
    pub fn to_rfc3339(self) -> String {
        let days = self.seconds.div_euclid(86_400);
        let in_day = self.seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            in_day / 3600,
            in_day % 3600 / 60,
            in_day % 60
        )
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the era-based method: 400-year
/// cycles of 146,097 days, years starting in March so the leap day comes last).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap_or_else(|| panic!("{text:?} was refused"))
    }

    #[test]
    fn known_instants() {
        assert_eq!(
            at("1970-01-01T00:00:00Z"),
            Timestamp {
                seconds: 0,
                nanos: 0
            }
        );
        // date -u -d 2026-11-26T23:00:00Z +%s
        assert_eq!(at("2026-11-26T23:00:00Z").seconds, 1_795_734_000);
        assert_eq!(at("2000-02-29T12:00:00Z").seconds, 951_825_600);
        assert_eq!(at("1969-12-31T23:59:59Z").seconds, -1);
        assert_eq!(
            at("2026-11-26T23:00:00.5Z"),
            Timestamp {
                seconds: 1_795_734_000,
                nanos: 500_000_000
            }
        );
        assert_eq!(at("2026-11-26T23:00:00.123456789Z").nanos, 123_456_789);
    }

    #[test]
    fn offsets_and_spellings() {
        let utc = at("2026-11-26T23:00:00Z");
        for same in [
            "2026-11-27T00:00:00+01:00",
            "2026-11-27T00:30:00+0130",
            "2026-11-26T22:00:00-01",
            "2026-11-26t23:00:00z",
            "2026-11-26 23:00:00Z",
            "2026-11-26T23:00:00,0Z",
            "2026-11-26T23:00:00-00:00",
        ] {
            assert_eq!(at(same), utc, "{same}");
        }
        assert_eq!(at("2026-12-31T23:59:60Z"), at("2026-12-31T23:59:59Z"));
    }

    #[test]
    fn refuses_what_is_not_rfc3339() {
        for bad in [
            "",
            "2026-11-26",
            "2026-11-26T23:00:00",
            "2026-11-26T23:00Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T23:60:00Z",
            "2026-11-26T23:00:61Z",
            "2026-11-26X23:00:00Z",
            "2026-11-26T23:00:00.Z",
            "2026-11-26T23:00:00.1234567890Z",
            "2026-11-26T23:00:00+1:00",
            "2026-11-26T23:00:00+24:00",
            "2026-11-26T23:00:00Zjunk",
            "2026-11-26T23:00:00+01:00x",
            "+2026-11-26T23:00:00Z",
            "２０２６-11-26T23:00:00Z",
            "2026-1-26T23:00:00Z",
        ] {
            assert_eq!(Timestamp::parse(bad), None, "{bad:?} was accepted");
        }
    }

    #[test]
    fn renders_utc_whole_seconds() {
        assert_eq!(
            at("2026-11-27T00:00:00.999+01:00").to_rfc3339(),
            "2026-11-26T23:00:00Z"
        );
        assert_eq!(
            Timestamp {
                seconds: -1,
                nanos: 0
            }
            .to_rfc3339(),
            "1969-12-31T23:59:59Z"
        );
        assert_eq!(
            at("0001-01-01T00:00:00Z").to_rfc3339(),
            "0001-01-01T00:00:00Z"
        );
        assert_eq!(
            at("9999-12-31T23:59:59Z").to_rfc3339(),
            "9999-12-31T23:59:59Z"
        );
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        // 1900..2300 covers non-leap centuries (1900, 2100, 2200) and a leap one (2000).
        let mut days = days_from_civil(1900, 1, 1);
        for year in 1900..2300 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(
                        days_from_civil(year, month, day),
                        days,
                        "{year}-{month}-{day}"
                    );
                    assert_eq!(civil_from_days(days), (year, month, day));
                    days += 1;
                }
            }
        }
    }

    #[test]
    fn order_is_time_order() {
        assert!(at("2026-11-26T23:00:00Z") < at("2026-11-26T23:00:00.000000001Z"));
        assert!(at("2026-11-26T23:00:00.9Z") < at("2026-11-26T23:00:01Z"));
        assert!(Timestamp::now() > at("2026-01-01T00:00:00Z"));
    }
}
