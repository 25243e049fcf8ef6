//! Date and time values of the binlog row format, rendered as ISO-style strings.
//!
//! Fractional seconds are printed with as many digits as the column declares (`DATETIME(6)`
//! gives six), so no precision is lost and none is invented.

use std::fmt::Write;

/// Appends `.ffffff` cut to `fsp` digits (nothing for `fsp == 0`).
fn push_frac(out: &mut String, micros: u32, fsp: u8) {
    if fsp == 0 {
        return;
    }
    let fsp = fsp.min(6) as u32;
    let v = micros / 10u32.pow(6 - fsp);
    let _ = write!(out, ".{:0width$}", v, width = fsp as usize);
}

/// `YYYY-MM-DD` from the 3-byte NEWDATE encoding.
pub fn date_from_packed(v: u32) -> String {
    let day = v & 31;
    let month = (v >> 5) & 15;
    let year = v >> 9;
    format!("{year:04}-{month:02}-{day:02}")
}

/// DATETIME2 / DATETIME from the packed integer `mysql_common` returns
/// (`my_datetime_packed_from_binary`): `YYYY-MM-DDThh:mm:ss[.f]`.
pub fn datetime_from_packed(packed: i64, fsp: u8) -> String {
    let packed = packed.unsigned_abs();
    let micros = (packed % (1 << 24)) as u32;
    let ymdhms = packed >> 24;
    let ymd = ymdhms >> 17;
    let ym = ymd >> 5;
    let hms = ymdhms % (1 << 17);
    let (year, month, day) = (ym / 13, ym % 13, ymd % (1 << 5));
    let (hour, minute, second) = (hms >> 12, (hms >> 6) % (1 << 6), hms % (1 << 6));
    let mut s = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    push_frac(&mut s, micros, fsp);
    s
}

/// Old (pre-5.6) DATETIME: the decimal number YYYYMMDDhhmmss.
pub fn datetime_from_decimal(v: u64) -> String {
    let (date, time) = (v / 1_000_000, v % 1_000_000);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        date / 10_000,
        (date / 100) % 100,
        date % 100,
        time / 10_000,
        (time / 100) % 100,
        time % 100
    )
}

/// TIME2 from the packed integer (`my_time_packed_from_binary`): `[-]hh:mm:ss[.f]`,
/// hours may exceed 24 (MySQL's TIME range is ±838:59:59).
pub fn time_from_packed(packed: i64, fsp: u8) -> String {
    let neg = packed < 0;
    let packed = packed.unsigned_abs();
    let micros = (packed % (1 << 24)) as u32;
    let hms = packed >> 24;
    let (hour, minute, second) = (
        (hms >> 12) % (1 << 10),
        (hms >> 6) % (1 << 6),
        hms % (1 << 6),
    );
    let mut s = String::with_capacity(16);
    if neg {
        s.push('-');
    }
    let _ = write!(s, "{hour:02}:{minute:02}:{second:02}");
    push_frac(&mut s, micros, fsp);
    s
}

/// Old TIME: the signed decimal number [-]HHMMSS.
pub fn time_from_decimal(v: i32) -> String {
    let neg = v < 0;
    let v = v.unsigned_abs();
    format!(
        "{}{:02}:{:02}:{:02}",
        if neg { "-" } else { "" },
        v / 10_000,
        (v / 100) % 100,
        v % 100
    )
}

/// TIMESTAMP: seconds since the epoch in UTC, `YYYY-MM-DDThh:mm:ss[.f]Z`.
/// The zero timestamp is MySQL's `0000-00-00 00:00:00` and is printed as such.
pub fn timestamp(secs: i64, micros: u32, fsp: u8) -> String {
    if secs == 0 && micros == 0 {
        let mut s = "0000-00-00T00:00:00".to_string();
        push_frac(&mut s, 0, fsp);
        s.push('Z');
        return s;
    }
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    push_frac(&mut s, micros, fsp);
    s.push('Z');
    s
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(
            timestamp(1_700_000_000, 123_456, 6),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(timestamp(1, 0, 0), "1970-01-01T00:00:01Z");
        assert_eq!(time_from_decimal(-123_456), "-12:34:56");
        assert_eq!(
            datetime_from_decimal(20_240_229_235_959),
            "2024-02-29T23:59:59"
        );
        assert_eq!(date_from_packed((2024 << 9) | (2 << 5) | 29), "2024-02-29");
        let mut s = String::new();
        push_frac(&mut s, 120_000, 2);
        assert_eq!(s, ".12");
    }
}
