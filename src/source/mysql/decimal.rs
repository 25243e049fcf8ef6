//! DECIMAL text as the server prints it.

/// `0000000000000000000.5000000000` → `0.5000000000`: a DECIMAL as the server prints it
/// (`mysql_common` pads the integer part to the column's precision).
pub fn trim_integer_zeros(s: &mut String) {
    let start = usize::from(s.starts_with('-'));
    let b = s.as_bytes();
    let mut end = start;
    while end + 1 < b.len() && b[end] == b'0' && b[end + 1].is_ascii_digit() {
        end += 1;
    }
    if end > start {
        s.replace_range(start..end, "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_print_as_the_server_prints_them() {
        for (raw, want) in [
            ("0000000000000000000.5000000000", "0.5000000000"),
            ("0000000000000000000.0000000000", "0.0000000000"),
            ("-00012.50", "-12.50"),
            ("000", "0"),
            ("100", "100"),
            ("-99999", "-99999"),
        ] {
            let mut s = raw.to_string();
            trim_integer_zeros(&mut s);
            assert_eq!(s, want);
        }
    }
}
