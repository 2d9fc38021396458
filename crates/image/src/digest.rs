//! `sha256:<hex>` digests: parsing (they end up in file names, so they are
//! validated strictly) and hashing readers.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::ImageError;

/// A validated sha256 digest. Only sha256 is supported (it is what every
/// registry produces); the hex part is 64 lowercase hex characters, so it is
/// safe to use as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Digest {
    hex: String,
}

impl Digest {
    pub(crate) fn parse(s: &str) -> Result<Digest, ImageError> {
        let bad = |reason: &str| ImageError::InvalidDigest {
            digest: s.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(bad("expected <algorithm>:<hex>"));
        };
        if algo != "sha256" {
            return Err(bad("only sha256 digests are supported"));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("expected 64 lowercase hexadecimal characters"));
        }
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }

    pub(crate) fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    pub(crate) fn from_hasher(h: Sha256) -> Digest {
        Digest {
            hex: hex::encode(h.finalize()),
        }
    }

    pub(crate) fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Hashes (and counts) everything read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads whatever is left, then returns the digest of everything.
    pub(crate) fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_hasher(self.hasher), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::parse(&s).unwrap(), d);
        for bad in [
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:../../etc",
            "sha512:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:",
        ] {
            assert!(
                matches!(Digest::parse(bad), Err(ImageError::InvalidDigest { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn hashing_reader_counts_the_rest() {
        let mut r = HashingReader::new(&b"hello"[..]);
        let mut two = [0u8; 2];
        r.read_exact(&mut two).unwrap();
        let (d, n) = r.finish().unwrap();
        assert_eq!(n, 5);
        assert_eq!(d, Digest::of(b"hello"));
    }
}
