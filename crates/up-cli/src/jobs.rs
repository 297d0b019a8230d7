//! Turns command-line paths into [`FileJob`]s: a local path, the name the
//! server stores it under, and its size.
//!
//! A plain file is uploaded under its file name. With `-r`, a directory keeps
//! its relative layout under its own name: `up-cli -r photos` offers
//! `photos/a.jpg` and `photos/sub/b.png`. Symlinked directories are skipped
//! during recursion so a link cycle cannot loop forever.

use std::path::{Path, PathBuf};

/// One file to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileJob {
    /// Local path.
    pub path: PathBuf,
    /// `/`-separated name offered to the server.
    pub name: String,
    /// Size when collected; the upload declares this size.
    pub size: u64,
}

/// Collects the files named by `paths`. Problems with one path (missing, a
/// directory without `-r`, a non-UTF-8 name) become one error line each and
/// do not stop the others.
pub fn collect(paths: &[PathBuf], recursive: bool) -> (Vec<FileJob>, Vec<String>) {
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("cannot read {}: {e}", path.display()));
                continue;
            }
        };
        let Some(base) = base_name(path) else {
            errors.push(format!(
                "cannot upload {}: it has no usable file name",
                path.display()
            ));
            continue;
        };
        if meta.is_dir() {
            if recursive {
                walk(path, &base, &mut jobs, &mut errors);
            } else {
                errors.push(format!(
                    "skipping {}: is a directory (pass -r to upload directories)",
                    path.display()
                ));
            }
        } else {
            jobs.push(FileJob {
                path: path.clone(),
                name: base,
                size: meta.len(),
            });
        }
    }
    (jobs, errors)
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

fn walk(dir: &Path, prefix: &str, jobs: &mut Vec<FileJob>, errors: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            errors.push(format!("cannot list {}: {e}", dir.display()));
            return;
        }
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Ok(file_name) = entry.file_name().into_string() else {
            errors.push(format!("skipping {}: name is not UTF-8", path.display()));
            continue;
        };
        let name = format!("{prefix}/{file_name}");
        let Ok(link_meta) = entry.file_type() else {
            errors.push(format!("cannot read {}", path.display()));
            continue;
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("cannot read {}: {e}", path.display()));
                continue;
            }
        };
        if meta.is_dir() {
            if link_meta.is_symlink() {
                errors.push(format!("skipping {}: symlinked directory", path.display()));
            } else {
                walk(&path, &name, jobs, errors);
            }
        } else if meta.is_file() {
            jobs.push(FileJob {
                path,
                name,
                size: meta.len(),
            });
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
        let (jobs, errors) = collect(std::slice::from_ref(&photos), true);
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<_> = jobs.iter().map(|j| (j.name.as_str(), j.size)).collect();
        assert_eq!(names, [("photos/a.jpg", 1), ("photos/sub/b.png", 2)]);

        let (jobs, errors) = collect(&[photos], false);
        assert!(jobs.is_empty());
        assert!(errors[0].contains("pass -r"), "{errors:?}");
    }

    #[test]
    fn missing_paths_are_reported_and_others_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let f = tmp.path().join("f.txt");
        std::fs::write(&f, b"x").expect("write");
        let (jobs, errors) = collect(&[tmp.path().join("nope"), f], false);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].name, "f.txt");
        assert_eq!(errors.len(), 1);
    }
}
