//! Repository rules, checked as `#[test]`s so `cargo test --workspace` (and so CI)
//! enforces them. Each failure lists every offending `path:line` and says how to fix it.
//!
//! The rules:
//! - every `.rs` file under `crates/`, `tools/`, `xtask/`, `tests/` and `fuzz/` opens with a `//!`
//!   module doc (its role and how it connects);
//! - code that reads from peers has no `.unwrap()`: in `crates/*/src`, every file named
//!   `session.rs` or `server.rs`, and every file under a `session/` or `server/` folder,
//!   may not contain `.unwrap()` before its first `#[cfg(test)]` line (test modules sit at
//!   the end of a file); comment lines are skipped. Use `?`, or `.expect("why this
//!   cannot fail")` for a true invariant;
//! - no tab characters and no trailing whitespace in `.rs` and `.md` files;
//! - every crate (each `crates/*`, `tools/*` and `xtask`) has a `README.md`;
//! - no dead dependency: every entry of a crate's `[dependencies]` and
//!   `[dev-dependencies]` is named in that crate's Rust files (a dependency kept only
//!   for its features says so with `# tidy: features only` on its line);
//! - xtask finds the workspace at run time: no `env!("CARGO_MANIFEST_DIR")` in xtask,
//!   which would freeze the path of the tree it was compiled in.
//!
//! Folders named `target*` and hidden folders (`.git`, ...) are never searched.

use std::fs;
use std::path::{Path, PathBuf};

use crate::service::project_root;

/// Every file under `dir` whose extension is in `extensions`, skipping build and hidden folders.
fn files_under(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if !name.starts_with('.') && !name.starts_with("target") {
                    stack.push(path);
                }
            } else if kind.is_file()
                && path
                    .extension()
                    .is_some_and(|e| extensions.iter().any(|x| e == *x))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn relative(path: &Path) -> String {
    path.strip_prefix(project_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// Fails listing `offenders` under `rule`, with `fix` as the hint.
fn report(rule: &str, offenders: &[String], fix: &str) {
    assert!(
        offenders.is_empty(),
        "{rule}:\n  {}\nfix: {fix}",
        offenders.join("\n  ")
    );
}

fn rust_sources() -> Vec<PathBuf> {
    let root = project_root();
    ["crates", "tools", "xtask", "tests", "fuzz"]
        .iter()
        .flat_map(|dir| files_under(&root.join(dir), &["rs"]))
        .collect()
}

#[test]
fn every_rust_file_opens_with_module_docs() {
    let sources = rust_sources();
    assert!(sources.len() > 5, "found only {} .rs files", sources.len());
    let offenders: Vec<String> = sources
        .iter()
        .filter(|path| !read(path).starts_with("//!"))
        .map(|path| relative(path))
        .collect();
    report(
        "these .rs files do not open with a `//!` module doc",
        &offenders,
        "start each with `//! <its role and how it connects>`",
    );
}

/// Whether `path` holds connection-handling code under the no-unwrap rule.
fn handles_peer_input(path: &Path) -> bool {
    let rel = relative(path).replace('\\', "/");
    let in_crate_src = rel.starts_with("crates/") && rel.split('/').nth(2) == Some("src");
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    in_crate_src
        && (matches!(name, "session.rs" | "server.rs")
            || rel.contains("/session/")
            || rel.contains("/server/"))
}

/// `line:text` for every `.unwrap()` in the non-test, non-comment part of `text`.
fn unwraps_outside_tests(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| !line.trim_start().starts_with("#[cfg(test)]"))
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .filter(|(_, line)| line.contains(".unwrap()"))
        .map(|(i, line)| (i + 1, line.trim().to_owned()))
        .collect()
}

#[test]
fn unwrap_rule_sees_code_but_not_tests_or_comments() {
    let text = "fn a() { x.unwrap(); }\n// y.unwrap() in a comment\n\
                fn b() { x.unwrap_or(1); }\n#[cfg(test)]\nmod tests { z.unwrap(); }\n";
    assert_eq!(
        unwraps_outside_tests(text),
        vec![(1, "fn a() { x.unwrap(); }".to_owned())]
    );
    assert!(handles_peer_input(
        &project_root().join("crates/chat-srv/src/session.rs")
    ));
    assert!(handles_peer_input(
        &project_root().join("crates/up-srv/src/server/accept.rs")
    ));
    assert!(!handles_peer_input(
        &project_root().join("crates/up-srv/tests/session.rs")
    ));
    assert!(!handles_peer_input(
        &project_root().join("crates/up-srv/src/storage.rs")
    ));
}

#[test]
fn session_and_server_code_has_no_unwrap() {
    let mut offenders = Vec::new();
    for path in rust_sources().iter().filter(|p| handles_peer_input(p)) {
        for (line, text) in unwraps_outside_tests(&read(path)) {
            offenders.push(format!("{}:{line}: {text}", relative(path)));
        }
    }
    report(
        "`.unwrap()` in code that handles peer input",
        &offenders,
        "return the error with `?` (peer input must never panic), or use \
         `.expect(\"why this cannot fail\")` for a true invariant",
    );
}

#[test]
fn no_tabs_or_trailing_whitespace() {
    let root = project_root();
    let mut files = files_under(&root, &["rs", "md"]);
    files.retain(|p| !relative(p).starts_with("fuzz/corpus"));
    let mut offenders = Vec::new();
    for path in &files {
        for (i, line) in read(path).lines().enumerate() {
            if line.contains('\t') {
                offenders.push(format!("{}:{}: tab", relative(path), i + 1));
            }
            if line.ends_with([' ', '\t']) {
                offenders.push(format!("{}:{}: trailing whitespace", relative(path), i + 1));
            }
        }
    }
    report(
        "tabs or trailing whitespace",
        &offenders,
        "`cargo fmt --all` fixes .rs files; indent .md with spaces and trim line ends",
    );
}

#[test]
fn every_crate_has_a_readme() {
    let root = project_root();
    let mut crates: Vec<PathBuf> = ["crates", "tools"]
        .iter()
        .flat_map(|dir| fs::read_dir(root.join(dir)).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    crates.push(root.join("xtask"));
    assert!(crates.len() >= 2, "found only {crates:?}");
    let offenders: Vec<String> = crates
        .iter()
        .filter(|dir| !dir.join("README.md").is_file())
        .map(|dir| relative(dir))
        .collect();
    report(
        "these crates have no README.md",
        &offenders,
        "add a README.md saying what the crate is, how to run it and its flags",
    );
}

/// The crates whose manifests the dependency rule reads: each `crates/*`, `tools/*`, xtask.
fn crate_dirs() -> Vec<PathBuf> {
    let root = project_root();
    let mut dirs: Vec<PathBuf> = ["crates", "tools"]
        .iter()
        .filter_map(|dir| fs::read_dir(root.join(dir)).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    dirs.push(root.join("xtask"));
    dirs.sort();
    dirs
}

/// `(line, name)` of each dependency in the `[dependencies]`, `[dev-dependencies]` and
/// `[build-dependencies]` tables of `manifest`, skipping lines marked `tidy: features only`.
fn declared_dependencies(manifest: &str) -> Vec<(usize, String)> {
    let mut in_deps = false;
    let mut found = Vec::new();
    for (i, line) in manifest.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = matches!(
                line,
                "[dependencies]" | "[dev-dependencies]" | "[build-dependencies]"
            ) || line.starts_with("[target.") && line.ends_with("dependencies]");
            continue;
        }
        if !in_deps
            || line.is_empty()
            || line.starts_with('#')
            || line.contains("tidy: features only")
        {
            continue;
        }
        if let Some((name, _)) = line.split_once(['=', '.']) {
            found.push((i + 1, name.trim().to_owned()));
        }
    }
    found
}

/// Whether `code` names the crate `name` as a path (`name::`, `use name`, `extern crate name`).
fn names_crate(code: &str, name: &str) -> bool {
    let ident = name.replace('-', "_");
    code.match_indices(&ident).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = &code[at + ident.len()..];
        let starts_word = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        starts_word
            && (after.starts_with("::")
                || after.starts_with(';')
                || after.starts_with(" as ")
                || after.starts_with(",")
                || after.starts_with("}"))
    })
}

#[test]
fn dependency_rule_sees_paths_only() {
    let manifest = "[package]\nname = \"x\"\n[dependencies]\nfoo-bar.workspace = true\n\
                    baz = \"1\"\nkept = \"1\" # tidy: features only\n[dev-dependencies]\nqux = \"1\"\n";
    let names: Vec<String> = declared_dependencies(manifest)
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(names, ["foo-bar", "baz", "qux"]);
    assert!(names_crate("use foo_bar::Thing;", "foo-bar"));
    assert!(names_crate("let x = baz::f();", "baz"));
    assert!(!names_crate("let rebaz = 1; // baz is nice", "baz"));
}

#[test]
fn no_dead_dependencies() {
    let mut offenders = Vec::new();
    for dir in crate_dirs() {
        let manifest = read(&dir.join("Cargo.toml"));
        let code: String = files_under(&dir, &["rs"]).iter().map(|p| read(p)).collect();
        for (line, name) in declared_dependencies(&manifest) {
            if !names_crate(&code, &name) {
                offenders.push(format!("{}/Cargo.toml:{line}: {name}", relative(&dir)));
            }
        }
    }
    report(
        "dependencies that no Rust file of their crate names",
        &offenders,
        "remove them from the crate's Cargo.toml (or mark a features-only entry \
         with `# tidy: features only`)",
    );
}

#[test]
fn xtask_finds_the_workspace_at_run_time() {
    let frozen = ["env!(", "\"CARGO_MANIFEST_DIR\")"].concat();
    let offenders: Vec<String> = files_under(&project_root().join("xtask"), &["rs"])
        .iter()
        .filter(|p| !p.ends_with("tidy.rs") && read(p).contains(&frozen))
        .map(|p| relative(p))
        .collect();
    report(
        "xtask files that freeze the workspace path at compile time",
        &offenders,
        "use `service::project_root()`, which reads CARGO_MANIFEST_DIR at run time",
    );
}
