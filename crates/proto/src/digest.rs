//! File digests: SHA-256 through the fastest implementation this CPU offers, and
//! BLAKE3, behind one [`Hasher`] type.
//!
//! Upload clients and servers hash every byte they move, so the hash sets the
//! ceiling of an upload. Which SHA-256 code is fastest depends on the CPU:
//!
//! - with SHA extensions (x86 `sha_ni`, aarch64 `sha2`), the `sha2` crate's
//!   hardware path (about 1.9 GB/s on one core of a recent Xeon);
//! - without them, `ring`'s assembly (AVX2/SSSE3 message schedule), about 1.8x
//!   `sha2`'s portable Rust code. `ring` is already the workspace's crypto crate
//!   (rustls uses it), so no second one is pulled in.
//!
//! [`Sha256Backend::active`] picks one at run time; every backend gives the same
//! digest, which `tests::all_backends_agree_on_random_input` checks on random input.
//! The [`Sha256Backend::Portable`] backend (a plain FIPS 180-4 implementation here)
//! is what the `sha2` crate runs on a CPU without SHA extensions; it exists so that
//! benchmarks on a SHA-NI machine can show what such a CPU gets.
//!
//! The environment variable `SOCKCHAT_SHA256` (`sha2`, `ring`, `portable` or
//! `auto`) overrides the choice for benchmarks and tests. Binaries should call
//! [`Sha256Backend::from_env`] once at start-up so a misspelt value is reported as
//! an error instead of being ignored.
//!
//! [`Algorithm`] names the digest on the wire (`sha256`, `blake3`); see
//! `docs/PROTOCOL.md`.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The environment variable that overrides the SHA-256 backend.
pub const SHA256_BACKEND_ENV: &str = "SOCKCHAT_SHA256";

/// Length in bytes of every digest produced here (SHA-256 and BLAKE3 alike).
pub const DIGEST_LEN: usize = 32;

/// A digest algorithm an upload can be verified with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// SHA-256 (FIPS 180-4); the default, checked by `sha256sum -c`.
    #[default]
    Sha256,
    /// BLAKE3 (32-byte output); checked by `b3sum -c`.
    Blake3,
}

impl Algorithm {
    /// Every algorithm, in order of preference for compatibility.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Blake3];

    /// The name used on the wire and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        }
    }

    /// The algorithm called `name` on the wire (exact, lower case).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Algorithm, DigestError> {
        Algorithm::from_name(s).ok_or_else(|| DigestError::UnknownAlgorithm(s.to_owned()))
    }
}

/// A SHA-256 implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sha256Backend {
    /// The `sha2` crate: SHA extensions when the CPU has them.
    Sha2,
    /// `ring::digest`: assembly tuned for CPUs with or without SHA extensions.
    Ring,
    /// Portable Rust code, as `sha2` runs without SHA extensions (for measurement).
    Portable,
}

impl Sha256Backend {
    /// Every backend.
    pub const ALL: [Sha256Backend; 3] = [
        Sha256Backend::Sha2,
        Sha256Backend::Ring,
        Sha256Backend::Portable,
    ];

    /// The name accepted in `SOCKCHAT_SHA256` and shown in benchmarks.
    pub const fn name(self) -> &'static str {
        match self {
            Sha256Backend::Sha2 => "sha2",
            Sha256Backend::Ring => "ring",
            Sha256Backend::Portable => "portable",
        }
    }

    /// The fastest backend for this CPU: `sha2` with SHA extensions, `ring` without.
    pub fn detect() -> Sha256Backend {
        if cpu_has_sha_extensions() {
            Sha256Backend::Sha2
        } else {
            Sha256Backend::Ring
        }
    }

    /// The backend `SOCKCHAT_SHA256` asks for: `Ok(None)` when it is unset, empty
    /// or `auto`, an error naming the accepted values when it is anything else.
    pub fn from_env() -> Result<Option<Sha256Backend>, DigestError> {
        match std::env::var(SHA256_BACKEND_ENV) {
            Ok(value) => Sha256Backend::parse_override(&value),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(raw)) => Err(DigestError::UnknownBackend(
                raw.to_string_lossy().into_owned(),
            )),
        }
    }

    /// Parses an override value (`sha2`, `ring`, `portable`; `auto` or empty = none).
    pub fn parse_override(value: &str) -> Result<Option<Sha256Backend>, DigestError> {
        match value.trim() {
            "" | "auto" => Ok(None),
            name => Sha256Backend::ALL
                .into_iter()
                .find(|b| b.name() == name)
                .map(Some)
                .ok_or_else(|| DigestError::UnknownBackend(name.to_owned())),
        }
    }

    /// The backend in use by [`Hasher::new`]: the override if it is set and valid,
    /// else [`Sha256Backend::detect`]. Decided once per process.
    pub fn active() -> Sha256Backend {
        static ACTIVE: OnceLock<Sha256Backend> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            Sha256Backend::from_env()
                .ok()
                .flatten()
                .unwrap_or_else(Sha256Backend::detect)
        })
    }
}

impl fmt::Display for Sha256Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether the CPU has the SHA-256 instructions the `sha2` crate uses.
pub fn cpu_has_sha_extensions() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        // The same set sha2's SHA-NI backend requires.
        std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("sse2")
            && std::is_x86_feature_detected!("ssse3")
            && std::is_x86_feature_detected!("sse4.1")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("sha2")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A bad digest name or backend override.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// A digest algorithm name that is not `sha256` or `blake3`.
    #[error("unknown digest algorithm {0:?} (use sha256 or blake3)")]
    UnknownAlgorithm(String),
    /// A `SOCKCHAT_SHA256` value that names no backend.
    #[error(
        "unknown {SHA256_BACKEND_ENV} value {0:?} (use sha2, ring, portable or auto, or unset it)"
    )]
    UnknownBackend(String),
}

/// An incremental hasher for one [`Algorithm`].
///
/// ```
/// use proto::digest::{Algorithm, Hasher};
/// let mut h = Hasher::new(Algorithm::Sha256);
/// h.update(b"ab");
/// h.update(b"c");
/// assert_eq!(
///     h.finalize().to_hex(),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub struct Hasher {
    inner: Inner,
}

enum Inner {
    Sha2(sha2::Sha256),
    Ring(ring::digest::Context),
    Portable(portable::Sha256),
    // Boxed: BLAKE3's state (its chunk stack) is far larger than the others.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    /// A hasher for `algorithm`; SHA-256 uses [`Sha256Backend::active`].
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::sha256_with(Sha256Backend::active()),
            Algorithm::Blake3 => Hasher {
                inner: Inner::Blake3(Box::new(blake3::Hasher::new())),
            },
        }
    }

    /// A SHA-256 hasher on a chosen backend (benchmarks and tests).
    pub fn sha256_with(backend: Sha256Backend) -> Hasher {
        use sha2::Digest as _;
        let inner = match backend {
            Sha256Backend::Sha2 => Inner::Sha2(sha2::Sha256::new()),
            Sha256Backend::Ring => Inner::Ring(ring::digest::Context::new(&ring::digest::SHA256)),
            Sha256Backend::Portable => Inner::Portable(portable::Sha256::new()),
        };
        Hasher { inner }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> Algorithm {
        match self.inner {
            Inner::Blake3(_) => Algorithm::Blake3,
            _ => Algorithm::Sha256,
        }
    }

    /// Feeds `bytes` into the digest.
    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        match &mut self.inner {
            Inner::Sha2(h) => h.update(bytes),
            Inner::Ring(h) => h.update(bytes),
            Inner::Portable(h) => h.update(bytes),
            Inner::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    /// The digest of everything fed in.
    pub fn finalize(self) -> Digest {
        use sha2::Digest as _;
        let algorithm = self.algorithm();
        let mut bytes = [0u8; DIGEST_LEN];
        match self.inner {
            Inner::Sha2(h) => bytes.copy_from_slice(&h.finalize()),
            Inner::Ring(h) => bytes.copy_from_slice(h.finish().as_ref()),
            Inner::Portable(h) => bytes = h.finalize(),
            Inner::Blake3(h) => bytes = *h.finalize().as_bytes(),
        }
        Digest { algorithm, bytes }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match self.inner {
            Inner::Sha2(_) => "sha2",
            Inner::Ring(_) => "ring",
            Inner::Portable(_) => "portable",
            Inner::Blake3(_) => "blake3",
        };
        f.debug_struct("Hasher").field("backend", &backend).finish()
    }
}

/// A finished digest and the algorithm that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    bytes: [u8; DIGEST_LEN],
}

impl Digest {
    /// The algorithm that produced this digest.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.bytes
    }

    /// Lower-case hex, as `sha256sum` and `b3sum` print it.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// The digest of `bytes` in one call.
pub fn digest(algorithm: Algorithm, bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::new(algorithm);
    hasher.update(bytes);
    hasher.finalize()
}

/// SHA-256 in plain Rust, written from FIPS 180-4 section 6.2: the code path a CPU
/// without SHA extensions runs in the `sha2` crate, kept for measurement and as a
/// reference the fast backends are tested against.
mod portable {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    const H0: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];

    /// Incremental state: chaining value, a partial block and the total length.
    pub struct Sha256 {
        state: [u32; 8],
        block: [u8; 64],
        filled: usize,
        total: u64,
    }

    impl Sha256 {
        pub fn new() -> Sha256 {
            Sha256 {
                state: H0,
                block: [0; 64],
                filled: 0,
                total: 0,
            }
        }

        pub fn update(&mut self, mut bytes: &[u8]) {
            self.total = self.total.wrapping_add(bytes.len() as u64);
            if self.filled > 0 {
                let take = (64 - self.filled).min(bytes.len());
                let (head, rest) = bytes.split_at(take);
                self.block[self.filled..self.filled + take].copy_from_slice(head);
                self.filled += take;
                bytes = rest;
                if self.filled < 64 {
                    return;
                }
                let block = self.block;
                compress(&mut self.state, &block);
                self.filled = 0;
            }
            let mut blocks = bytes.chunks_exact(64);
            for block in &mut blocks {
                let block: &[u8; 64] = block.try_into().expect("chunks_exact yields 64 bytes");
                compress(&mut self.state, block);
            }
            let rest = blocks.remainder();
            self.block[..rest.len()].copy_from_slice(rest);
            self.filled = rest.len();
        }

        pub fn finalize(mut self) -> [u8; 32] {
            let bits = self.total.wrapping_mul(8);
            let mut pad = [0u8; 72];
            pad[0] = 0x80;
            // Pad to 56 mod 64, then the 64-bit big-endian bit length.
            let zeros = (119 - self.filled) % 64;
            pad[1 + zeros..9 + zeros].copy_from_slice(&bits.to_be_bytes());
            let total = self.total;
            self.update(&pad[..9 + zeros]);
            debug_assert_eq!(self.filled, 0);
            self.total = total;
            let mut out = [0u8; 32];
            for (chunk, word) in out.chunks_exact_mut(4).zip(self.state) {
                chunk.copy_from_slice(&word.to_be_bytes());
            }
            out
        }
    }

    fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
        let mut w = [0u32; 64];
        for (i, chunk) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_BLAKE3: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    fn sha256_hex(backend: Sha256Backend, chunks: &[&[u8]]) -> String {
        let mut h = Hasher::sha256_with(backend);
        for chunk in chunks {
            h.update(chunk);
        }
        h.finalize().to_hex()
    }

    #[test]
    fn every_backend_gives_the_fips_test_vectors() {
        let two_block = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        for backend in Sha256Backend::ALL {
            assert_eq!(sha256_hex(backend, &[]), EMPTY_SHA256, "{backend}");
            assert_eq!(sha256_hex(backend, &[b"a", b"bc"]), ABC_SHA256, "{backend}");
            assert_eq!(
                sha256_hex(backend, &[two_block]),
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
                "{backend}"
            );
        }
    }

    #[test]
    fn blake3_matches_its_reference_vector() {
        let d = digest(Algorithm::Blake3, b"");
        assert_eq!(d.to_hex(), EMPTY_BLAKE3);
        assert_eq!(d.algorithm(), Algorithm::Blake3);
    }

    #[test]
    fn algorithm_names_round_trip_and_unknown_names_are_refused() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>(), Ok(a));
        }
        assert_eq!(Algorithm::default(), Algorithm::Sha256);
        let err = "SHA256".parse::<Algorithm>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown digest algorithm \"SHA256\" (use sha256 or blake3)"
        );
    }

    #[test]
    fn backend_override_accepts_names_and_auto_and_refuses_typos() {
        assert_eq!(
            Sha256Backend::parse_override("ring"),
            Ok(Some(Sha256Backend::Ring))
        );
        assert_eq!(Sha256Backend::parse_override("auto"), Ok(None));
        assert_eq!(Sha256Backend::parse_override(""), Ok(None));
        let err = Sha256Backend::parse_override("rign").unwrap_err();
        assert!(
            err.to_string().contains("use sha2, ring, portable"),
            "{err}"
        );
    }

    #[test]
    fn detection_prefers_sha2_exactly_when_the_cpu_has_sha_extensions() {
        let expected = if cpu_has_sha_extensions() {
            Sha256Backend::Sha2
        } else {
            Sha256Backend::Ring
        };
        assert_eq!(Sha256Backend::detect(), expected);
    }

    proptest! {
        #[test]
        fn all_backends_agree_on_random_input(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            cut in any::<prop::sample::Index>(),
        ) {
            let cut = cut.index(data.len() + 1);
            let (head, tail) = data.split_at(cut);
            let reference = sha256_hex(Sha256Backend::Sha2, &[&data]);
            for backend in Sha256Backend::ALL {
                prop_assert_eq!(&sha256_hex(backend, &[head, tail]), &reference, "{}", backend);
            }
            let mut b3 = Hasher::new(Algorithm::Blake3);
            b3.update(head);
            b3.update(tail);
            prop_assert_eq!(b3.finalize(), digest(Algorithm::Blake3, &data));
        }
    }
}
