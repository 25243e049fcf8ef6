//! A bounds-checked reader over event bytes: every read says what it needed and where, and
//! nothing panics on short or corrupt input.

/// Reads `data` front to back.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "needs {n} bytes at offset {} but only {} remain",
                    self.pos,
                    self.data.len().saturating_sub(self.pos)
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian unsigned integer of `n` ≤ 8 bytes.
    pub fn le(&mut self, n: usize) -> Result<u64, String> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, x| (acc << 8) | *x as u64))
    }

    /// A big-endian unsigned integer of `n` ≤ 8 bytes.
    pub fn be(&mut self, n: usize) -> Result<u64, String> {
        let b = self.take(n)?;
        Ok(b.iter().fold(0u64, |acc, x| (acc << 8) | *x as u64))
    }

    /// A length-encoded integer (1, 3, 4 or 9 bytes).
    pub fn lenenc(&mut self) -> Result<u64, String> {
        match self.u8()? {
            x @ 0..=250 => Ok(x as u64),
            252 => self.le(2),
            253 => self.le(3),
            254 => self.le(8),
            x => Err(format!(
                "bad length-encoded integer prefix {x} at offset {}",
                self.pos - 1
            )),
        }
    }

    /// A string with a one-byte length, as identifiers are logged (lossy UTF-8).
    pub fn len8_str(&mut self) -> Result<String, String> {
        let n = self.u8()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    /// Everything not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.data[self.pos.min(self.data.len())..]
    }
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn reads_and_refuses_short_input() {
        let mut c = Cursor::new(&[1, 2, 3, 252, 0x10, 0x01]);
        assert_eq!(c.le(2).unwrap(), 0x0201);
        assert_eq!(c.u8().unwrap(), 3);
        assert_eq!(c.lenenc().unwrap(), 0x0110);
        assert!(c.is_empty());
        assert_eq!(
            c.take(2).unwrap_err(),
            "needs 2 bytes at offset 6 but only 0 remain"
        );
        assert_eq!(
            Cursor::new(&[0xff]).lenenc().unwrap_err(),
            "bad length-encoded integer prefix 255 at offset 0"
        );
        assert_eq!(Cursor::new(&[1, 2]).be(2).unwrap(), 0x0102);
    }
}
