//! Checking stored uploads for `e2e` and `demo`: SHA-256 of files, `up-cli`'s
//! `<sha256>  <name>` lines, and waiting (with a deadline) for a file to appear.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The lower-case hex SHA-256 of the file at `path`, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One line of `up-cli`'s standard output: the digest and the stored name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLine {
    /// Lower-case hex SHA-256 the server reported.
    pub digest: String,
    /// The name under the upload directory.
    pub name: String,
}

/// Parses `up-cli`'s stdout (`<64 hex>  <stored name>` per line, the `sha256sum` format).
pub fn parse_stored_lines(stdout: &str) -> Result<Vec<StoredLine>> {
    stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (digest, name) = line
                .split_once("  ")
                .with_context(|| format!("not a `<sha256>  <name>` line: {line:?}"))?;
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("not a SHA-256 in hex: {digest:?} (line {line:?})");
            }
            Ok(StoredLine {
                digest: digest.to_ascii_lowercase(),
                name: name.to_owned(),
            })
        })
        .collect()
}

/// Polls until `path` exists with exactly `len` bytes, or fails after `timeout`.
///
/// The servers rename complete files into place, so the right length under the final
/// name means the file is done; polling a local file is the only event std offers.
pub fn wait_for_file(path: &Path, len: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let current = std::fs::metadata(path).map(|m| m.len()).ok();
        if current == Some(len) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            match current {
                Some(found) => bail!(
                    "{} has {found} bytes after {timeout:?}, expected {len}",
                    path.display()
                ),
                None => bail!("{} did not appear within {timeout:?}", path.display()),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_known_empty_digest() {
        assert_eq!(
            hex(&Sha256::digest(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn stored_lines_parse_names_with_spaces_and_reject_garbage() {
        let digest = "a".repeat(64);
        let lines = parse_stored_lines(&format!("{digest}  photo (1).jpg\n\n")).expect("parse");
        assert_eq!(
            lines,
            vec![StoredLine {
                digest: digest.clone(),
                name: "photo (1).jpg".into()
            }]
        );
        assert!(parse_stored_lines("uploaded 3 files").is_err());
        assert!(parse_stored_lines(&format!("{}  x", "g".repeat(64))).is_err());
    }
}
