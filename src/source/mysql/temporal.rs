//! Date and time values of the binlog row format, rendered as ISO-style strings.
//!
//! Fractional seconds are printed with as many digits as the column declares (`DATETIME(6)`
//! gives six), so no precision is lost and none is invented.

use super::cursor::Cursor;

// Digits are written into a stack buffer, then copied into the String once: this is on the
// decode hot path, where `format!` cost a fifth of the time.

/// A small ASCII buffer.
struct Buf {
    b: [u8; 40],
    len: usize,
}

impl Buf {
    fn new() -> Self {
        Buf { b: [0; 40], len: 0 }
    }
    fn byte(&mut self, c: u8) {
        if self.len < self.b.len() {
            self.b[self.len] = c;
            self.len += 1;
        }
    }
    /// `v` as at least `width` digits, zero padded (no digits beyond 20 are needed).
    fn digits(&mut self, v: u64, width: usize) {
        let mut n = v;
        let mut w = 1;
        while n >= 10 {
            n /= 10;
            w += 1;
        }
        let w = w.max(width);
        if self.len + w > self.b.len() {
            return;
        }
        let mut n = v;
        for i in (self.len..self.len + w).rev() {
            self.b[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.len += w;
    }
    fn date(&mut self, y: u64, m: u64, d: u64) {
        self.digits(y, 4);
        self.byte(b'-');
        self.digits(m, 2);
        self.byte(b'-');
        self.digits(d, 2);
    }
    /// `hh:mm:ss` (hours may have three digits)
    fn time(&mut self, h: u64, m: u64, s: u64) {
        self.digits(h, 2);
        self.byte(b':');
        self.digits(m, 2);
        self.byte(b':');
        self.digits(s, 2);
    }
    /// `.ffffff` cut to `fsp` digits (nothing for `fsp == 0`).
    fn frac(&mut self, micros: u32, fsp: u8) {
        if fsp == 0 {
            return;
        }
        let fsp = fsp.min(6) as u32;
        self.byte(b'.');
        self.digits((micros / 10u32.pow(6 - fsp)) as u64, fsp as usize);
    }
    fn finish(&self) -> String {
        // Only ASCII digits and separators were written: this cannot fail.
        String::from_utf8(self.b[..self.len].to_vec()).unwrap_or_default()
    }
}

/// A DATE, DATETIME or TIMESTAMP from its parts (as a query over the binary protocol gives
/// them), in the same form as the binlog's: `YYYY-MM-DD` for a date, else
/// `YYYY-MM-DDThh:mm:ss[.f]` with `fsp` digits, and `Z` for a TIMESTAMP (read in UTC).
#[allow(clippy::too_many_arguments)]
pub fn from_parts(
    date_only: bool,
    y: u16,
    mo: u8,
    d: u8,
    h: u8,
    mi: u8,
    s: u8,
    micros: u32,
    fsp: u8,
    zulu: bool,
) -> String {
    let mut b = Buf::new();
    b.date(y as u64, mo as u64, d as u64);
    if !date_only {
        b.byte(b'T');
        b.time(h as u64, mi as u64, s as u64);
        b.frac(micros, fsp);
        if zulu {
            b.byte(b'Z');
        }
    }
    b.finish()
}

/// A TIME from its parts: `[-]hh:mm:ss[.f]`, hours counting the days.
pub fn time_from_parts(neg: bool, days: u32, h: u8, mi: u8, s: u8, micros: u32, fsp: u8) -> String {
    let mut b = Buf::new();
    if neg {
        b.byte(b'-');
    }
    b.time(days as u64 * 24 + h as u64, mi as u64, s as u64);
    b.frac(micros, fsp);
    b.finish()
}

/// `YYYY-MM-DD` from the 3-byte NEWDATE encoding.
pub fn date_from_packed(v: u32) -> String {
    let mut b = Buf::new();
    b.date((v >> 9) as u64, ((v >> 5) & 15) as u64, (v & 31) as u64);
    b.finish()
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
    let mut b = Buf::new();
    b.date(year, month, day);
    b.byte(b'T');
    b.time(hour, minute, second);
    b.frac(micros, fsp);
    b.finish()
}

/// Old (pre-5.6) DATETIME: the decimal number YYYYMMDDhhmmss.
pub fn datetime_from_decimal(v: u64) -> String {
    let (date, time) = (v / 1_000_000, v % 1_000_000);
    let mut b = Buf::new();
    b.date(date / 10_000, (date / 100) % 100, date % 100);
    b.byte(b'T');
    b.time(time / 10_000, (time / 100) % 100, time % 100);
    b.finish()
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
    let mut b = Buf::new();
    if neg {
        b.byte(b'-');
    }
    b.time(hour, minute, second);
    b.frac(micros, fsp);
    b.finish()
}

/// Old TIME: the signed decimal number [-]HHMMSS.
pub fn time_from_decimal(v: i32) -> String {
    let neg = v < 0;
    let v = v.unsigned_abs() as u64;
    let mut b = Buf::new();
    if neg {
        b.byte(b'-');
    }
    b.time(v / 10_000, (v / 100) % 100, v % 100);
    b.finish()
}

/// TIMESTAMP: seconds since the epoch in UTC, `YYYY-MM-DDThh:mm:ss[.f]Z`.
/// The zero timestamp is MySQL's `0000-00-00 00:00:00` and is printed as such.
pub fn timestamp(secs: i64, micros: u32, fsp: u8) -> String {
    let mut b = Buf::new();
    if secs == 0 && micros == 0 {
        b.date(0, 0, 0);
        b.byte(b'T');
        b.time(0, 0, 0);
        b.frac(0, fsp);
        b.byte(b'Z');
        return b.finish();
    }
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    b.date(y.max(0) as u64, m as u64, d as u64);
    b.byte(b'T');
    let rem = rem as u64;
    b.time(rem / 3600, (rem / 60) % 60, rem % 60);
    b.frac(micros, fsp);
    b.byte(b'Z');
    b.finish()
}

/// The fraction of a MySQL 5.6 temporal value (TIME2, DATETIME2, TIMESTAMP2), in
/// microseconds: 1, 2 or 3 big-endian bytes for 1–2, 3–4, 5–6 digits, in units of 1/100,
/// 1/10,000 and 1/1,000,000 s (MySQL `my_time.cc`, `my_*_packed_from_binary`).
pub fn fraction56(c: &mut Cursor<'_>, fsp: u8) -> Result<u32, String> {
    Ok(match fsp {
        0 => 0,
        1 | 2 => c.u8()? as u32 * 10_000,
        3 | 4 => c.be(2)? as u32 * 100,
        5 | 6 => c.be(3)? as u32,
        _ => return Err(format!("fractional digits {fsp} (at most 6)")),
    })
}

/// TIME2 → the packed number `(hh << 12 | mm << 6 | ss) << 24 + µs`, signed.
///
/// Written here rather than taken from `mysql_common` (`my_time_packed_from_binary`, 0.37),
/// which garbles negative values with 1 or 2 fractional digits (`-00:00:00.1` read as
/// `624:63:63.166`). A negative TIME2 is the complement of the whole packed number, fraction
/// included: with 1–4 digits the fraction byte(s) count down from the next second, so the
/// integer part is one too small and the fraction is `-(2^8k - frac)` (MySQL `my_time.cc`).
pub fn time2_packed(c: &mut Cursor<'_>, fsp: u8) -> Result<i64, String> {
    const INT_OFS: i64 = 0x80_0000;
    Ok(match fsp {
        0 => (c.be(3)? as i64 - INT_OFS) << 24,
        1 | 2 => frac_time(c.be(3)? as i64 - INT_OFS, c.u8()? as i64, 0x100, 10_000),
        3 | 4 => frac_time(c.be(3)? as i64 - INT_OFS, c.be(2)? as i64, 0x1_0000, 100),
        5 | 6 => c.be(6)? as i64 - 0x8000_0000_0000,
        _ => return Err(format!("TIME with {fsp} fractional digits (at most 6)")),
    })
}

fn frac_time(mut int: i64, mut frac: i64, modulus: i64, unit: i64) -> i64 {
    if int < 0 && frac != 0 {
        int += 1;
        frac -= modulus;
    }
    (int << 24) + frac * unit
}

/// DATETIME2 → the packed number `ymdhms << 24 | µs` (never negative).
pub fn datetime2_packed(c: &mut Cursor<'_>, fsp: u8) -> Result<i64, String> {
    let int = c.be(5)? as i64 - 0x80_0000_0000;
    let frac = fraction56(c, fsp)? as i64;
    Ok((int << 24) + frac)
}

/// `10^(6 - fsp)`: the unit of MariaDB's 5.3-format fractions (`sec_part_shift`).
fn hires_unit(fsp: u8) -> Result<i64, String> {
    match fsp {
        0..=6 => Ok(10i64.pow(6 - fsp as u32)),
        _ => Err(format!("fractional digits {fsp} (at most 6)")),
    }
}

/// MariaDB 5.3 TIME(n): `time_hires_bytes` big-endian bytes holding the signed microsecond
/// count shifted to n digits plus the zero point (MariaDB `field.cc`, `Field_time_hires`).
pub fn time_hires(c: &mut Cursor<'_>, fsp: u8) -> Result<String, String> {
    const BYTES: [usize; 7] = [3, 4, 4, 5, 5, 5, 6];
    let unit = hires_unit(fsp)?;
    let zero = 3_020_400i64 * (1_000_000 / unit); // (838:59:59 + 1 s) in units
    let units = c.be(BYTES[fsp as usize])? as i64 - zero;
    let micros = units * unit;
    let (neg, m) = (micros < 0, micros.unsigned_abs());
    let secs = m / 1_000_000;
    let mut b = Buf::new();
    if neg {
        b.byte(b'-');
    }
    b.time(secs / 3600, (secs / 60) % 60, secs % 60);
    b.frac((m % 1_000_000) as u32, fsp);
    Ok(b.finish())
}

/// MariaDB 5.3 DATETIME(n): `datetime_hires_bytes` big-endian bytes holding the packed
/// `((((year·13 + month)·32 + day)·24 + hour)·60 + minute)·60 + second` microseconds, shifted
/// to n digits (MariaDB `pack_time`).
pub fn datetime_hires(c: &mut Cursor<'_>, fsp: u8) -> Result<String, String> {
    const BYTES: [usize; 7] = [5, 6, 6, 7, 7, 7, 8];
    let unit = hires_unit(fsp)? as u64;
    let x = c.be(BYTES[fsp as usize])? * unit;
    let micros = (x % 1_000_000) as u32;
    let mut t = x / 1_000_000;
    let mut next = |m: u64| {
        let v = t % m;
        t /= m;
        v
    };
    let (s, mi, h, d, mo) = (next(60), next(60), next(24), next(32), next(13));
    let mut b = Buf::new();
    b.date(t, mo, d);
    b.byte(b'T');
    b.time(h, mi, s);
    b.frac(micros, fsp);
    Ok(b.finish())
}

/// MariaDB 5.3 TIMESTAMP(n): seconds as 4 big-endian bytes, then the fraction shifted to n
/// digits in `sec_part_bytes` (0, 1, 1, 2, 2, 3, 3) big-endian bytes.
pub fn timestamp_hires(c: &mut Cursor<'_>, fsp: u8) -> Result<String, String> {
    const BYTES: [usize; 7] = [0, 1, 1, 2, 2, 3, 3];
    let unit = hires_unit(fsp)?;
    let secs = c.be(4)? as i64;
    let micros = c.be(BYTES[fsp as usize])? as i64 * unit;
    Ok(timestamp(secs, micros as u32, fsp))
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
        let mut b = Buf::new();
        b.frac(120_000, 2);
        assert_eq!(b.finish(), ".12");
        assert_eq!(
            time_from_packed(-(838i64 << 36 | 59 << 30 | 59 << 24), 0),
            "-838:59:59"
        );
        let mut b = Buf::new();
        b.digits(7, 4);
        b.digits(12345, 2);
        assert_eq!(b.finish(), "000712345");
    }
}
