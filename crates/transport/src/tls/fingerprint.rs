//! SHA-256 certificate fingerprints, in the form users copy between the
//! server's start-up line, `openssl x509 -noout -fingerprint -sha256` and
//! `--tls-pin`: upper-case hex pairs joined by colons. Parsing ignores
//! colons, spaces and case, and an `sha256 Fingerprint=` prefix.

use std::fmt;
use std::str::FromStr;

use super::TlsError;

/// The SHA-256 digest of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;

    fn from_str(given: &str) -> Result<Self, TlsError> {
        let bad = || TlsError::BadPin {
            given: given.to_owned(),
        };
        let text = given.trim();
        // openssl prints "sha256 Fingerprint=AB:CD:..." (or "SHA256 ...").
        let text = match text.rfind('=') {
            Some(i) if text[..i].to_ascii_lowercase().contains("fingerprint") => &text[i + 1..],
            _ => text,
        };
        let digits: Vec<u8> = text
            .bytes()
            .filter(|b| *b != b':' && !b.is_ascii_whitespace())
            .collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (out, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
            *out = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn display_is_openssl_form_and_parses_back() {
        let fp: Fingerprint = HEX.parse().unwrap();
        let shown = fp.to_string();
        assert_eq!(&shown[..12], "01:23:45:67:");
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert_eq!(shown.parse::<Fingerprint>().unwrap(), fp);
    }

    #[test]
    fn colons_case_spaces_and_openssl_prefix_are_ignored() {
        let fp: Fingerprint = HEX.parse().unwrap();
        let upper_colons = fp.to_string();
        for given in [
            HEX.to_uppercase(),
            upper_colons.to_lowercase(),
            format!("  {upper_colons}\n"),
            format!("sha256 Fingerprint={upper_colons}"),
            format!("SHA256 Fingerprint={upper_colons}"),
        ] {
            assert_eq!(given.parse::<Fingerprint>().unwrap(), fp, "{given}");
        }
    }

    #[test]
    fn wrong_length_or_non_hex_is_a_clear_error() {
        for given in ["", "AB:CD", &HEX[1..], &format!("{}zz", &HEX[2..])] {
            let err = given.parse::<Fingerprint>().unwrap_err();
            assert!(err.to_string().contains("expected 64 hex digits"), "{err}");
        }
    }

    #[test]
    fn fingerprint_is_sha256_of_the_der() {
        // SHA-256("abc"), the FIPS 180-2 test vector.
        let fp = Fingerprint::of(b"abc");
        assert_eq!(
            fp,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
                .parse()
                .unwrap()
        );
    }
}
