//! Time as junction reads and writes it: the wall clock in milliseconds
//! since the Unix epoch, and RFC 3339 text. One place for both, used by every
//! stage; the join itself never reads the clock (the runtime passes `now`).

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The wall clock, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds since the Unix epoch of an RFC 3339 time.
pub fn parse_time(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// An RFC 3339 UTC time with milliseconds, as outcome records carry it.
/// Three per outcome record and one per step: written digit by digit, as
/// `fmt` took a tenth of the stream thread's time.
pub fn format_time(ms: i64) -> String {
    let mut out = Vec::with_capacity(24);
    write_time(&mut out, ms);
    String::from_utf8(out).expect("ASCII digits and separators")
}

/// Appends [`format_time`]'s text to `out`.
pub fn write_time(out: &mut Vec<u8>, ms: i64) {
    let (year, month, day) = civil_from_days(ms.div_euclid(86_400_000));
    if !(0..=9999).contains(&year) {
        out.extend_from_slice(format_time_slow(ms).as_bytes());
        return;
    }
    let in_day = ms.rem_euclid(86_400_000);
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut n: i64| {
        for i in (at..at + width).rev() {
            text[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, in_day / 3_600_000);
    put(14, 2, in_day / 60_000 % 60);
    put(17, 2, in_day / 1_000 % 60);
    put(20, 3, in_day % 1_000);
    out.extend_from_slice(&text);
}

/// (year, month, day) of a day counted from 1970-01-01, in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn format_time_slow(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_time_format_agrees_with_the_calendar() {
        let mut ms: i64 = -62_135_596_800_000; // 0001-01-01
        while ms < 253_402_300_800_000 {
            assert_eq!(format_time(ms), format_time_slow(ms), "at {ms} ms");
            ms += 86_399_999 * 7 + 12_345;
        }
        for ms in [0, -1, 951_782_400_000, 4_107_542_399_999, 1_763_805_600_123] {
            assert_eq!(format_time(ms), format_time_slow(ms), "at {ms} ms");
        }
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
    }
}
