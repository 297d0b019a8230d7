//! Secrets kept off the command line: token files, and comparing tokens in
//! constant time.
//!
//! A token passed as an argument shows in `ps` to every user of the host; a
//! file readable only by its owner does not.

use std::path::{Path, PathBuf};

/// A token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read token file {}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why, lower-case.
        reason: String,
    },
    /// The file holds no token.
    #[error("token file {} is empty (put the token on its first line)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Reads a token from the first line of `path`, without its line ending or
/// surrounding spaces. Logs a warning when others may read the file.
pub fn read_token_file(path: &Path) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|e| SecretError::Read {
        path: path.to_owned(),
        reason: crate::listen::lower_reason(&e),
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
    }
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "token file {} is readable by other users (chmod 600 it)",
                path.display()
            );
        }
    }
    Ok(token.to_owned())
}

/// Whether `given` equals `expected`, in time that depends on neither
/// (both are hashed first, so even the lengths stay hidden).
pub fn tokens_match(expected: &str, given: &str) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, given.as_bytes());
    let diff = a
        .as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(tokens_match("s3cret", "s3cret"));
        assert!(!tokens_match("s3cret", "s3cre"));
        assert!(!tokens_match("s3cret", "s3cret "));
        assert!(!tokens_match("s3cret", ""));
    }

    #[test]
    fn token_file_gives_its_first_line_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc123 \nignored\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "abc123");
        std::fs::write(&path, "\n").unwrap();
        let err = read_token_file(&path).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = read_token_file(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
    }
}
