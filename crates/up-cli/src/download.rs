//! `up-cli ls` and `up-cli get`: list the files an `up-srv --allow-get`
//! holds, and fetch them with the same guarantees as uploads.
//!
//! ```text
//! ls:  List{prefix} -> Entry{name, size, mtime, sha256}* ListEnd{count} | Refuse
//! get: Get{name} -> Sending{size, sha256} | Refuse ; Start{offset} ; <size - offset bytes>
//! ```
//!
//! A download lands in `.<name>.<digest prefix>.up-part` beside its final
//! name; a rerun resumes it (after hashing what is there), and it is renamed
//! only once the SHA-256 of everything received matches the digest the
//! server recorded when the file was stored. Bit rot or an edit on the
//! server therefore never reaches the final name, and an existing local
//! file is replaced only with `--force`.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use proto::upload::{name, ClientMessage, ServerMessage};
use sha2::{Digest as _, Sha256};

use crate::client::{refusal, Connection, Report};
use crate::{reader, ClientError, Options, Outcome, Reporter};

/// Size of one receive buffer.
const RECV_BUFFER: usize = 256 * 1024;

/// One stored file as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Name relative to the server's upload dir.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: u64,
    /// SHA-256 the server holds for it.
    pub sha256: [u8; 32],
}

/// Opens a connection that speaks version 2 (ls and get).
async fn open(opts: &Options) -> Result<Connection, ClientError> {
    let conn = Connection::open(opts).await?;
    if conn.version() < 2 {
        return Err(ClientError::Refused(format!(
            "{} runs an older up-srv without ls and get (upgrade it)",
            conn.addr()
        )));
    }
    Ok(conn)
}

/// The stored files whose names start with `prefix`, sorted by name.
pub async fn list(opts: &Options, prefix: &str) -> Result<Vec<Listed>, ClientError> {
    let mut conn = open(opts).await?;
    conn.send(ClientMessage::List {
        prefix: prefix.to_string(),
    })
    .await?;
    let mut out = Vec::new();
    loop {
        match conn.recv().await? {
            ServerMessage::Entry {
                name,
                size,
                mtime,
                sha256,
            } => out.push(Listed {
                name,
                size,
                mtime,
                sha256,
            }),
            ServerMessage::ListEnd { .. } => return Ok(out),
            ServerMessage::Refuse { code, reason } => {
                return Err(ClientError::Refused(refusal(code, &reason)))
            }
            other => {
                return Err(conn.broken(
                    io::ErrorKind::InvalidData,
                    format!("unexpected {} reply to a listing", other.name()),
                ))
            }
        }
    }
}

/// Where and how `get` writes.
#[derive(Debug, Clone)]
pub struct GetOptions {
    /// Directory the names are written under (`-o`).
    pub out_dir: PathBuf,
    /// Replace existing local files.
    pub force: bool,
}

/// How one download ended.
struct Fetched {
    outcome: Outcome,
    size: u64,
    keep_connection: bool,
}

fn failed(name: &str, reason: impl std::fmt::Display, keep_connection: bool) -> Fetched {
    Fetched {
        outcome: Outcome::Failed(format!("{name}: {reason}")),
        size: 0,
        keep_connection,
    }
}

/// Downloads `names` in order over as few connections as possible.
pub async fn get_all(
    opts: &Options,
    names: &[String],
    get: &GetOptions,
    reporter: &mut dyn Reporter,
) -> Report {
    let mut outcomes = Vec::with_capacity(names.len());
    let mut conn: Option<Connection> = None;
    for name in names {
        let c = match conn.take() {
            Some(c) => conn.insert(c),
            None => match open(opts).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    return Report {
                        outcomes,
                        fatal: Some(e),
                    }
                }
            },
        };
        let fetched = get_one(c, name, get, reporter).await;
        if !fetched.keep_connection {
            conn = None;
        }
        reporter.finished(fetched.size, &fetched.outcome);
        outcomes.push(fetched.outcome);
    }
    Report {
        outcomes,
        fatal: None,
    }
}

/// `.<leaf>.<digest prefix>.up-part` beside `dest`: a different stored
/// version never resumes onto the wrong prefix.
fn part_path(dest: &Path, sha256: &[u8; 32]) -> PathBuf {
    let leaf = dest
        .file_name()
        .map(|l| l.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(
        ".{leaf}.{}.up-part",
        proto::upload::hex(&sha256[..8])
    ))
}

async fn get_one(
    conn: &mut Connection,
    wanted: &str,
    get: &GetOptions,
    reporter: &mut dyn Reporter,
) -> Fetched {
    let name = name::nfc(wanted);
    if let Err(e) = name::validate(&name) {
        return failed(&format!("{name:?}"), e, true);
    }
    let dest = get.out_dir.join(&name);
    if !get.force && dest.exists() {
        return failed(
            &name,
            format!("{} exists (pass --force to replace it)", dest.display()),
            true,
        );
    }
    if let Err(e) = conn.send(ClientMessage::Get { name: name.clone() }).await {
        return failed(&name, e, false);
    }
    let (size, sha256) = match conn.recv().await {
        Ok(ServerMessage::Sending { size, sha256 }) => (size, sha256),
        Ok(ServerMessage::Refuse { code, reason }) => {
            return failed(&name, refusal(code, &reason), !code.closes_connection())
        }
        Ok(other) => return failed(&name, format!("unexpected {} reply", other.name()), false),
        Err(e) => return failed(&name, e, false),
    };
    let part = part_path(&dest, &sha256);
    let (file, hasher, offset) = match open_part(&part, size, &name, reporter).await {
        Ok(v) => v,
        // The server waits for a start: the connection cannot go on.
        Err(e) => return failed(&name, e, false),
    };
    if let Err(e) = conn.send(ClientMessage::Start { offset }).await {
        return failed(&name, e, false);
    }
    reporter.file_started(&name, size, offset);
    let digest = match receive(conn, file, hasher, size - offset, reporter).await {
        Ok(d) => d,
        Err(e) => return failed(&name, format!("{e}; run the same command to resume"), false),
    };
    let mut fetched = failed(&name, "", true);
    fetched.size = size;
    fetched.outcome = match finish(&part, &dest, digest, sha256, get.force) {
        Ok(()) => Outcome::Stored {
            name,
            sha256,
            sent: size - offset,
            resumed: offset,
        },
        Err(reason) => Outcome::Failed(format!("{name}: {reason}")),
    };
    fetched
}

/// Opens (or resumes) the partial download and hashes what it holds.
async fn open_part(
    part: &Path,
    size: u64,
    name: &str,
    reporter: &mut dyn Reporter,
) -> Result<(File, Sha256, u64), ClientError> {
    if let Some(parent) = part.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ClientError::Local {
            action: "cannot create",
            path: parent.display().to_string(),
            source: e,
        })?;
    }
    let held = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let offset = if held <= size { held } else { 0 };
    if offset > 0 {
        reporter.verifying(name, offset);
        reporter.notice(&format!(
            "resuming {name} at {}",
            proto::size::Readable(offset)
        ));
    }
    let hasher = if offset > 0 {
        reader::hash_prefix(part, offset, reporter).await?.1
    } else {
        Sha256::new()
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(part)
        .map_err(|e| ClientError::Local {
            action: "cannot write",
            path: part.display().to_string(),
            source: e,
        })?;
    file.set_len(offset).map_err(|e| ClientError::Local {
        action: "cannot write",
        path: part.display().to_string(),
        source: e,
    })?;
    let mut file = file;
    io::Seek::seek(&mut file, io::SeekFrom::Start(offset)).map_err(|e| ClientError::Local {
        action: "cannot write",
        path: part.display().to_string(),
        source: e,
    })?;
    Ok((file, hasher, offset))
}

/// Receives `len` raw bytes into `file`, hashing them.
async fn receive(
    conn: &mut Connection,
    file: File,
    mut hasher: Sha256,
    len: u64,
    reporter: &mut dyn Reporter,
) -> Result<[u8; 32], ClientError> {
    let mut file = tokio::fs::File::from_std(file);
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = conn.read_raw(&mut buf[..want]).await?;
        hasher.update(&buf[..n]);
        tokio::io::AsyncWriteExt::write_all(&mut file, &buf[..n])
            .await
            .map_err(|e| ClientError::Local {
                action: "cannot write",
                path: "the partial download".into(),
                source: e,
            })?;
        left -= n as u64;
        reporter.advanced(n as u64);
    }
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|e| ClientError::Local {
            action: "cannot write",
            path: "the partial download".into(),
            source: e,
        })?;
    Ok(hasher.finalize().into())
}

/// Checks the digest, then makes the download durable under its final name.
fn finish(
    part: &Path,
    dest: &Path,
    got: [u8; 32],
    recorded: [u8; 32],
    force: bool,
) -> Result<(), String> {
    if got != recorded {
        let _ = std::fs::remove_file(part);
        return Err(format!(
            "received data hashes to {}, but the server recorded {} when it was stored: the stored file is damaged; nothing was written",
            proto::upload::hex(&got),
            proto::upload::hex(&recorded)
        ));
    }
    let file = File::open(part)
        .map_err(|e| format!("cannot reopen {}: {}", part.display(), crate::plain(&e)))?;
    file.sync_all()
        .map_err(|e| format!("cannot sync {}: {}", part.display(), crate::plain(&e)))?;
    let placed = if force {
        std::fs::rename(part, dest)
    } else {
        // A hard link refuses an existing name atomically.
        std::fs::hard_link(part, dest).and_then(|()| std::fs::remove_file(part))
    };
    placed.map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => format!(
            "{} appeared meanwhile (pass --force to replace it); the download is kept in {}",
            dest.display(),
            part.display()
        ),
        _ => format!("cannot write {}: {}", dest.display(), crate::plain(&e)),
    })?;
    if let Some(dir) = dest.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    let _ = io::stdout().flush();
    Ok(())
}

/// `2026-12-04T14:37:14Z` for `ls -l` (UTC, no time-zone database needed).
pub fn utc_time(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_time(1_796_394_434), "2026-12-04T14:27:14Z");
    }

    #[test]
    fn part_names_carry_the_digest() {
        let p = part_path(Path::new("out/photos/a.jpg"), &[0xab; 32]);
        assert_eq!(p, Path::new("out/photos/.a.jpg.abababababababab.up-part"));
    }
}
