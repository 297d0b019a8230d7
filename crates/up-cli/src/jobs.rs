//! Turns command-line paths into [`FileJob`]s: a local path, the name the
//! server stores it under, and its size.
//!
//! A plain file is uploaded under its file name (or `--as NAME`), below
//! `--to DIR` when given. With `-r`, a directory keeps its relative layout
//! under its own name: `up-cli -r photos` offers `photos/a.jpg` and
//! `photos/sub/b.png`. Names go through the shared policy
//! ([`proto::upload::name`]) here, so a refusal is explained before anything
//! is sent. Devices, FIFOs and sockets are refused (their size says nothing
//! about what they would yield; pipe a stream to `up-cli - --as NAME`).
//! Symlinked directories are skipped during recursion, by policy, so a link
//! cycle cannot loop forever.

use std::fs::Metadata;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use proto::upload::name;

/// One file to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileJob {
    /// Local path.
    pub path: PathBuf,
    /// `/`-separated name offered to the server, in NFC.
    pub name: String,
    /// Size when collected; the upload declares this size.
    pub size: u64,
}

/// How names are made: `--as` and `--to`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Naming<'a> {
    /// The name of a single upload instead of its file name.
    pub as_name: Option<&'a str>,
    /// A directory on the server every name goes under.
    pub to_dir: Option<&'a str>,
}

impl Naming<'_> {
    /// The name offered for a file whose own name is `base`, checked
    /// against the shared policy.
    pub fn name(&self, base: &str) -> Result<String, String> {
        let leaf = self.as_name.unwrap_or(base);
        let full = match self.to_dir.map(|d| d.trim_end_matches('/')) {
            Some(dir) if !dir.is_empty() => format!("{dir}/{leaf}"),
            _ => leaf.to_string(),
        };
        let full = name::nfc(&full);
        name::validate(&full).map_err(|e| format!("{full:?}: {e}"))?;
        Ok(full)
    }
}

/// What [`collect`] found.
#[derive(Debug, Default)]
pub struct Collected {
    /// Files to upload, in order.
    pub jobs: Vec<FileJob>,
    /// One line per path that cannot be uploaded (a failure).
    pub errors: Vec<String>,
    /// One line per path skipped by policy (not a failure).
    pub skipped: Vec<String>,
}

/// Collects the files named by `paths`. Problems with one path (missing, a
/// directory without `-r`, a device, a refused name) become one error line
/// each and do not stop the others.
pub fn collect(paths: &[PathBuf], recursive: bool, naming: Naming<'_>) -> Collected {
    let mut found = Collected::default();
    for path in paths {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                found.errors.push(format!(
                    "cannot read {}: {}",
                    path.display(),
                    crate::plain(&e)
                ));
                continue;
            }
        };
        let Some(base) = base_name(path) else {
            found.errors.push(format!(
                "cannot upload {}: it has no usable file name",
                path.display()
            ));
            continue;
        };
        if meta.is_dir() {
            if !recursive {
                found.errors.push(format!(
                    "cannot upload {}: is a directory (pass -r to upload directories)",
                    path.display()
                ));
                continue;
            }
            let prefix = match naming.name(&base) {
                Ok(p) => p,
                Err(e) => {
                    found
                        .errors
                        .push(format!("cannot upload {} as {e}", path.display()));
                    continue;
                }
            };
            walk(path, &prefix, &mut found);
        } else {
            add_file(path, &base, &meta, naming, &mut found);
        }
    }
    found
}

/// Adds a regular file, or the line saying why it is refused.
fn add_file(path: &Path, base: &str, meta: &Metadata, naming: Naming<'_>, found: &mut Collected) {
    if let Some(kind) = not_regular(meta) {
        found.errors.push(format!(
            "cannot upload {}: it is {kind}, not a regular file (to send a stream: ... | up-cli - --as NAME)",
            path.display()
        ));
        return;
    }
    match naming.name(base) {
        Ok(name) => found.jobs.push(FileJob {
            path: path.to_path_buf(),
            name,
            size: meta.len(),
        }),
        Err(e) => found
            .errors
            .push(format!("cannot upload {} as {e}", path.display())),
    }
}

/// What a non-regular file is, for the refusal line.
fn not_regular(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// The last component of `path` as UTF-8, resolving `.` and `..` first.
fn base_name(path: &Path) -> Option<String> {
    let name = path.file_name().map(|n| n.to_os_string()).or_else(|| {
        std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_os_string()))
    })?;
    name.into_string().ok()
}

fn walk(dir: &Path, prefix: &str, found: &mut Collected) {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            found.errors.push(format!(
                "cannot list {}: {}",
                dir.display(),
                crate::plain(&e)
            ));
            return;
        }
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Ok(file_name) = entry.file_name().into_string() else {
            found.errors.push(format!(
                "cannot upload {}: name is not UTF-8",
                path.display()
            ));
            continue;
        };
        let Ok(link_meta) = entry.file_type() else {
            found.errors.push(format!("cannot read {}", path.display()));
            continue;
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                found.errors.push(format!(
                    "cannot read {}: {}",
                    path.display(),
                    crate::plain(&e)
                ));
                continue;
            }
        };
        if meta.is_dir() {
            if link_meta.is_symlink() {
                found.skipped.push(format!(
                    "skipped {}: symlinked directory (not followed)",
                    path.display()
                ));
            } else {
                match Naming::default().name(&format!("{prefix}/{file_name}")) {
                    Ok(name) => walk(&path, &name, found),
                    Err(e) => found
                        .errors
                        .push(format!("cannot upload {} as {e}", path.display())),
                }
            }
        } else {
            let naming = Naming {
                as_name: None,
                to_dir: Some(prefix),
            };
            add_file(&path, &file_name, &meta, naming, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursive_directories_keep_relative_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let photos = tmp.path().join("photos");
        std::fs::create_dir_all(photos.join("sub")).expect("mkdir");
        std::fs::write(photos.join("a.jpg"), b"a").expect("write");
        std::fs::write(photos.join("sub/b.png"), b"bb").expect("write");
        std::os::unix::fs::symlink(&photos, photos.join("loop")).expect("symlink");
        let found = collect(std::slice::from_ref(&photos), true, Naming::default());
        assert!(found.errors.is_empty(), "{:?}", found.errors);
        assert_eq!(
            found.skipped.len(),
            1,
            "the symlinked dir is skipped, not failed"
        );
        let names: Vec<_> = found
            .jobs
            .iter()
            .map(|j| (j.name.as_str(), j.size))
            .collect();
        assert_eq!(names, [("photos/a.jpg", 1), ("photos/sub/b.png", 2)]);

        let to = Naming {
            as_name: None,
            to_dir: Some("backup/"),
        };
        let found = collect(std::slice::from_ref(&photos), true, to);
        assert_eq!(found.jobs[0].name, "backup/photos/a.jpg");

        let found = collect(&[photos], false, Naming::default());
        assert!(found.jobs.is_empty());
        assert!(found.errors[0].contains("pass -r"), "{:?}", found.errors);
    }

    #[test]
    fn missing_paths_devices_and_bad_names_are_one_line_each() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let f = tmp.path().join("f.txt");
        std::fs::write(&f, b"x").expect("write");
        let bidi = tmp.path().join("\u{202e}evil\u{202d}gpj.exe");
        std::fs::write(&bidi, b"x").expect("write");
        let paths = [
            tmp.path().join("nope"),
            f.clone(),
            PathBuf::from("/dev/null"),
            bidi,
        ];
        let found = collect(&paths, false, Naming::default());
        assert_eq!(found.jobs.len(), 1);
        assert_eq!(found.jobs[0].name, "f.txt");
        assert_eq!(found.errors.len(), 3, "{:?}", found.errors);
        assert!(
            found.errors[1].contains("character device"),
            "{:?}",
            found.errors
        );
        assert!(
            found.errors[2].contains("bidirectional"),
            "{:?}",
            found.errors
        );

        let renamed = Naming {
            as_name: Some("notes.txt"),
            to_dir: Some("docs"),
        };
        let found = collect(&[f], false, renamed);
        assert_eq!(found.jobs[0].name, "docs/notes.txt");
    }
}
