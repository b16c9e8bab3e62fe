//! A running checksum of the bytes written, and a writer that keeps one.

use std::io::Write;

/// A 64-bit checksum over 8-byte words (multiply-xorshift), fast enough to
/// run at copy speed; detects corruption, not tampering. Bytes may arrive in
/// pieces of any size.
#[derive(Debug, Clone, Copy)]
pub struct Checksum {
    state: u64,
    len: u64,
    tail: [u8; 8],
    tail_len: usize,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum {
            state: 0x243F_6A88_85A3_08D3,
            len: 0,
            tail: [0; 8],
            tail_len: 0,
        }
    }
}

impl Checksum {
    fn word(&mut self, w: u64) {
        self.state = (self.state ^ w)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }

    /// Adds bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(bytes.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&bytes[..take]);
            self.tail_len += take;
            bytes = &bytes[take..];
            if self.tail_len < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.tail);
            self.word(w);
            self.tail_len = 0;
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    /// Bytes seen.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when no byte was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checksum, as 16 hex digits.
    pub fn hex(&self) -> String {
        let mut c = *self;
        if c.tail_len > 0 {
            let mut t = [0u8; 8];
            t[..c.tail_len].copy_from_slice(&c.tail[..c.tail_len]);
            c.word(u64::from_le_bytes(t) ^ (c.tail_len as u64) << 56);
        }
        let mut z = c.state ^ c.len;
        z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        z ^= z >> 33;
        format!("{z:016x}")
    }
}

/// A writer that sums what passes through it.
pub(crate) struct Summed<W> {
    pub(crate) inner: W,
    pub(crate) sum: Checksum,
}

impl<W: Write> Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sum.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
