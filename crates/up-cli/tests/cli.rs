//! The real `up-cli` binary against an in-process `up-srv`: stdout lines,
//! exit codes and error lines.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    data, refused_port, sha256_hex, start_server, start_server_with, stored_files, up_cli,
    up_cli_with_input,
};

fn port(server: &common::TestServer) -> String {
    server.addr.port().to_string()
}

#[test]
fn stdout_is_exactly_one_sha256sum_line_per_file() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let a = data(70_000, 1);
    let b = data(0, 2);
    std::fs::write(src.path().join("a.bin"), &a).expect("write");
    std::fs::write(src.path().join("empty"), &b).expect("write");
    let run = up_cli(src.path(), &["-p", &port(&server), "a.bin", "empty"], &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(
        run.stdout,
        format!("{}  a.bin\n{}  empty\n", sha256_hex(&a), sha256_hex(&b))
    );
    assert!(run.stderr.contains("2 files"), "{}", run.stderr);
    assert!(run.stderr.contains("all verified"), "{}", run.stderr);
    assert_eq!(server.read("a.bin"), a);

    // The same again: already stored, the same line, nothing stored twice.
    let run = up_cli(src.path(), &["-q", "-p", &port(&server), "a.bin"], &[]);
    assert_eq!(run.code, Some(0));
    assert_eq!(run.stdout, format!("{}  a.bin\n", sha256_hex(&a)));
    assert_eq!(run.stderr, "", "-q prints nothing on success");
    assert_eq!(stored_files(&server.dir), ["a.bin", "empty"]);

    // Different content under the taken name is stored as a copy.
    std::fs::write(src.path().join("a.bin"), data(70_000, 9)).expect("write");
    let run = up_cli(src.path(), &["-q", "-p", &port(&server), "a.bin"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.ends_with("  a (1).bin\n"), "{}", run.stdout);
}

#[test]
fn recursive_upload_keeps_relative_paths() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let photos = src.path().join("photos");
    std::fs::create_dir_all(photos.join("sub")).expect("mkdir");
    std::fs::write(photos.join("a.jpg"), b"jpeg").expect("write");
    std::fs::write(photos.join("sub/b.png"), b"png!").expect("write");
    let run = up_cli(src.path(), &["-r", "-p", &port(&server), "photos"], &[]);
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(
        run.stdout,
        format!(
            "{}  photos/a.jpg\n{}  photos/sub/b.png\n",
            sha256_hex(b"jpeg"),
            sha256_hex(b"png!")
        )
    );
    assert_eq!(server.read("photos/sub/b.png"), b"png!");

    let run = up_cli(src.path(), &["-p", &port(&server), "photos"], &[]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("pass -r"), "{}", run.stderr);
}

#[test]
fn legacy_mode_talks_to_the_legacy_form_of_up_srv() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let body = data(123_456, 3);
    std::fs::write(src.path().join("photo.jpg"), &body).expect("write");
    let run = up_cli(
        src.path(),
        &["--legacy", "-p", &port(&server), "photo.jpg"],
        &[],
    );
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "", "legacy mode cannot name the stored file");
    assert!(run.stderr.contains(&sha256_hex(&body)), "{}", run.stderr);
    assert_eq!(server.read("new.jpg"), body);

    let run = up_cli(
        src.path(),
        &["--legacy", "-p", &port(&server), "photo.jpg", "photo.jpg"],
        &[],
    );
    assert_eq!(run.code, Some(2), "one file only");
}

#[test]
fn legacy_mode_reports_the_refusal_of_a_server_with_a_token() {
    let server = start_server_with(|c| c.token = Some("s3cret".into()));
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("photo.jpg"), data(1000, 3)).expect("write");
    let run = up_cli(
        src.path(),
        &["--legacy", "-p", &port(&server), "photo.jpg"],
        &[],
    );
    assert_ne!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(run.stderr.contains("requires a token"), "{}", run.stderr);
    assert!(std::fs::read_dir(&server.dir)
        .expect("list upload dir")
        .flatten()
        .all(|e| e.file_name() == up_srv::storage::PARTIAL_DIR));
}

#[test]
fn refused_file_exits_1_with_a_clear_line_and_the_rest_still_go() {
    let server = start_server_with(|c| c.max_size = 1000);
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("big.bin"), data(2000, 1)).expect("write");
    std::fs::write(src.path().join("small.bin"), data(10, 1)).expect("write");
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "big.bin", "small.bin", "missing.bin"],
        &[],
    );
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.stdout,
        format!("{}  small.bin\n", sha256_hex(&data(10, 1)))
    );
    let refusal = run
        .stderr
        .lines()
        .find(|l| l.contains("big.bin"))
        .unwrap_or_else(|| panic!("no line for big.bin in {}", run.stderr));
    assert!(
        refusal.contains("too large") && refusal.contains("1000"),
        "{refusal}"
    );
    assert!(run.stderr.contains("missing.bin"), "{}", run.stderr);
    assert!(!server.exists("big.bin"));
}

#[test]
fn absent_server_is_one_clear_line_and_exit_1() {
    // Held for the whole test, so no parallel test's server can take it.
    let refused = refused_port();
    let port = refused.port.to_string();
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f"), b"x").expect("write");
    let run = up_cli(src.path(), &["-p", &port, "f"], &[]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    let line = format!("cannot connect to 127.0.0.1:{port}");
    assert!(run.stderr.contains(&line), "{}", run.stderr);
    assert!(run.stderr.contains("is up-srv running"), "{}", run.stderr);
    assert!(!run.stderr.contains("os error"), "{}", run.stderr);
    assert_eq!(
        run.stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .count(),
        1,
        "one line for the problem: {}",
        run.stderr
    );
}

#[test]
fn token_from_flag_or_env() {
    let server = start_server_with(|c| c.token = Some("tok".into()));
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f"), b"x").expect("write");
    let run = up_cli(src.path(), &["-p", &port(&server), "f"], &[]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("requires a token"), "{}", run.stderr);
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "--token", "nope", "f"],
        &[],
    );
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("wrong token"), "{}", run.stderr);
    assert!(!server.exists("f"));
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "f"],
        &[("UP_TOKEN", "tok")],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(server.exists("f"));
}

#[test]
fn abort_after_then_rerun_resumes() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let body = data(3 << 20, 7);
    std::fs::write(src.path().join("big.bin"), &body).expect("write");
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "--abort-after", "1048576", "big.bin"],
        &[],
    );
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("--abort-after"), "{}", run.stderr);
    assert!(!server.exists("big.bin"), "nothing under the final name");
    let run = up_cli(src.path(), &["-p", &port(&server), "big.bin"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("resuming big.bin at 1.0 MiB"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("2.0 MiB sent"), "{}", run.stderr);
    assert!(run.stderr.contains("1.0 MiB resumed"), "{}", run.stderr);
    assert_eq!(run.stdout, format!("{}  big.bin\n", sha256_hex(&body)));
    assert_eq!(server.read("big.bin"), body);
}

#[test]
fn limit_rate_paces_the_upload() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f"), data(40 * 1024, 1)).expect("write");
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "--limit-rate", "40K", "f"],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.took.as_secs_f64() >= 0.9, "took {:?}", run.took);
}

#[test]
fn help_and_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = up_cli(dir.path(), &["--help"], &[]);
    assert_eq!(run.code, Some(0));
    for flag in [
        "--recursive",
        "--host",
        "--port",
        "--token",
        "--legacy",
        "--limit-rate",
        "--quiet",
        "--as",
        "--to",
        "not resumable",
    ] {
        assert!(run.stdout.contains(flag), "--help lacks {flag}");
    }
    assert!(
        !run.stdout.contains("--abort-after"),
        "testing aid stays hidden"
    );
    let run = up_cli(dir.path(), &[], &[]);
    assert_eq!(run.code, Some(2));
    let run = up_cli(dir.path(), &["--limit-rate", "fast", "f"], &[]);
    assert_eq!(run.code, Some(2));
}

#[test]
fn server_shutdown_mid_upload_ends_the_client_with_exit_1() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("big.bin"), data(8 << 20, 3)).expect("write");
    let cwd = src.path().to_path_buf();
    let port = port(&server);
    let client = std::thread::spawn(move || {
        up_cli(&cwd, &["-p", &port, "--limit-rate", "2M", "big.bin"], &[])
    });
    // Shut down once body bytes have reached the partial file.
    let partial_dir = server.dir.join(".partial");
    let deadline = std::time::Instant::now() + common::DEADLINE;
    loop {
        let held: u64 = std::fs::read_dir(&partial_dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if held > 1 << 20 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "upload never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(server);
    let run = client.join().expect("client thread");
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("shutting down"), "{}", run.stderr);
    assert_eq!(run.stdout, "");
}

#[test]
fn issue_10_rerun_of_an_interrupted_recursive_upload_leaves_one_copy_each() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let dir = src.path().join("d");
    std::fs::create_dir(&dir).expect("mkdir");
    // Above MAX_PUT_SIZE, so each file is offered and resumable.
    for (i, name) in ["f1.bin", "f2.bin", "f3.bin"].iter().enumerate() {
        std::fs::write(dir.join(name), data(2 << 20, i as u8)).expect("write");
    }
    let half = (3 << 20).to_string();
    let run = up_cli(
        src.path(),
        &["-r", "-p", &port(&server), "--abort-after", &half, "d"],
        &[],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(stored_files(&server.dir), ["d/f1.bin"]);
    let run = up_cli(src.path(), &["-r", "-p", &port(&server), "d"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("d/f1.bin: already stored"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("resuming d/f2.bin at 1.0 MiB"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("2 files stored, 1 already stored"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stdout.lines().count(), 3, "{}", run.stdout);
    assert_eq!(
        stored_files(&server.dir),
        ["d/f1.bin", "d/f2.bin", "d/f3.bin"]
    );
    // And once more: everything is already there.
    let run = up_cli(src.path(), &["-r", "-p", &port(&server), "d"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("0 files stored, 3 already stored: 0 B sent"),
        "{}",
        run.stderr
    );
    assert_eq!(
        stored_files(&server.dir),
        ["d/f1.bin", "d/f2.bin", "d/f3.bin"]
    );
}

#[test]
fn issue_11_small_files_go_without_round_trips_and_an_interrupted_run_reruns_to_one_copy_each() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let dir = src.path().join("many");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    let mut names = Vec::new();
    for i in 0..60u8 {
        let name = if i % 3 == 0 {
            format!("sub/{i:02}.bin")
        } else {
            format!("{i:02}.bin")
        };
        std::fs::write(dir.join(&name), data(20_000 + usize::from(i), i)).expect("write");
        names.push(format!("many/{name}"));
    }
    names.sort();
    // Cut the run off in the middle of the puts: whatever the server had
    // whole is stored, the rest is not, and nothing is half there.
    let run = up_cli(
        src.path(),
        &[
            "-r",
            "-p",
            &port(&server),
            "--abort-after",
            "500000",
            "many",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("--abort-after"), "{}", run.stderr);

    let run = up_cli(src.path(), &["-r", "-p", &port(&server), "many"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 60, "{}", run.stdout);
    assert_eq!(stored_files(&server.dir), names);
    for line in run.stdout.lines() {
        let (digest, name) = line.split_once("  ").expect("sha256sum line");
        let bytes = std::fs::read(server.dir.join(name)).expect("stored file");
        assert_eq!(digest, sha256_hex(&bytes), "{name}");
    }

    // A rerun sends no file byte: the checks find every file.
    let run = up_cli(src.path(), &["-r", "-p", &port(&server), "many"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("0 files stored, 60 already stored: 0 B sent"),
        "{}",
        run.stderr
    );
    // A changed file of the same size is stored as a new copy, said so.
    std::fs::write(dir.join("01.bin"), data(20_001, 99)).expect("write");
    let run = up_cli(src.path(), &["-r", "-p", &port(&server), "many"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("many/01.bin: the server holds different content"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("  many/01 (1).bin"), "{}", run.stdout);
    assert_eq!(stored_files(&server.dir).len(), 61);
}

#[test]
fn issue_10_stdin_is_uploaded_with_as_and_to() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let run = up_cli_with_input(
        src.path(),
        &["-p", &port(&server), "-", "--as", "hello.txt", "--to", "in"],
        &[],
        Some(b"hello"),
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!("{}  in/hello.txt\n", sha256_hex(b"hello"))
    );
    assert_eq!(server.read("in/hello.txt"), b"hello");
    let run = up_cli(src.path(), &["-p", &port(&server), "-"], &[]);
    assert_eq!(run.code, Some(2), "needs --as: {}", run.stderr);
}

#[test]
fn issue_10_devices_are_refused_before_anything_is_sent() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let run = up_cli(src.path(), &["-p", &port(&server), "/dev/zero"], &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("character device"), "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert!(stored_files(&server.dir).is_empty());
    let partials = std::fs::read_dir(server.dir.join(".partial"))
        .map(|rd| rd.flatten().filter(|e| e.file_name() != "sums").count())
        .unwrap_or(0);
    assert_eq!(partials, 0, "nothing was offered");
}

#[test]
fn issue_10_names_unsafe_anywhere_are_explained_before_sending() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("a:b.txt"), b"x").expect("write");
    std::fs::write(src.path().join("ok.txt"), b"y").expect("write");
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "a:b.txt", "ok.txt"],
        &[],
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("':' is not accepted in names"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 file stored, 1 failed"),
        "{}",
        run.stderr
    );
    assert_eq!(stored_files(&server.dir), ["ok.txt"]);
}

#[test]
fn issue_10_ls_matches_sha256sum_and_get_round_trips() {
    let server = start_server_with(|c| c.allow_get = true);
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(src.path().join("p")).expect("mkdir");
    std::fs::write(src.path().join("p/a.jpg"), data(300_000, 4)).expect("write");
    std::fs::write(src.path().join("p/b.png"), data(7, 5)).expect("write");
    let run = up_cli(src.path(), &["-q", "-r", "-p", &port(&server), "p"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    let run = up_cli(src.path(), &["-p", &port(&server), "ls"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let expected: String = stored_files(&server.dir)
        .iter()
        .map(|n| format!("{}  {n}\n", sha256_hex(&server.read(n))))
        .collect();
    assert_eq!(run.stdout, expected);
    let run = up_cli(src.path(), &["-p", &port(&server), "ls", "-l", "p/b"], &[]);
    assert!(
        run.stdout.contains("7 B") && run.stdout.contains("p/b.png"),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.lines().count(), 1);

    let out = tempfile::tempdir().expect("tempdir");
    let out_dir = out.path().to_string_lossy().into_owned();
    let run = up_cli(
        src.path(),
        &[
            "-p",
            &port(&server),
            "get",
            "p/a.jpg",
            "p/b.png",
            "-o",
            &out_dir,
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        std::fs::read(out.path().join("p/a.jpg")).expect("read"),
        data(300_000, 4)
    );
    assert_eq!(run.stdout.lines().count(), 2);
    // Never replaces a local file without --force.
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "get", "p/b.png", "-o", &out_dir],
        &[],
    );
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("--force"), "{}", run.stderr);
    let run = up_cli(
        src.path(),
        &[
            "-p",
            &port(&server),
            "get",
            "p/b.png",
            "-o",
            &out_dir,
            "--force",
        ],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[test]
fn issue_10_get_of_a_rotted_file_writes_nothing_under_the_final_name() {
    let server = start_server_with(|c| c.allow_get = true);
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f.bin"), data(50_000, 6)).expect("write");
    let run = up_cli(src.path(), &["-q", "-p", &port(&server), "f.bin"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // Bit rot: one byte flips, size and mtime stay.
    let stored = server.dir.join("f.bin");
    let mtime = std::fs::metadata(&stored)
        .expect("stat")
        .modified()
        .expect("mtime");
    let mut bytes = std::fs::read(&stored).expect("read");
    bytes[1234] ^= 0x01;
    std::fs::write(&stored, &bytes).expect("flip");
    std::fs::File::options()
        .write(true)
        .open(&stored)
        .expect("open")
        .set_modified(mtime)
        .expect("restore mtime");
    let out = tempfile::tempdir().expect("tempdir");
    let out_dir = out.path().to_string_lossy().into_owned();
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "get", "f.bin", "-o", &out_dir],
        &[],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("damaged"), "{}", run.stderr);
    assert!(!out.path().join("f.bin").exists());
    assert_eq!(
        std::fs::read_dir(out.path()).expect("list").count(),
        0,
        "no partial left either"
    );

    // An edit behind the server's back (new mtime) is refused before sending.
    std::fs::write(&stored, b"edited").expect("edit");
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "get", "f.bin", "-o", &out_dir],
        &[],
    );
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("changed"), "{}", run.stderr);
    assert!(!out.path().join("f.bin").exists());
}

#[test]
fn issue_10_ls_without_allow_get_is_one_refusal_line() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    let run = up_cli(src.path(), &["-p", &port(&server), "ls"], &[]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: ") && run.stderr.contains("--allow-get"),
        "{}",
        run.stderr
    );
}

#[test]
fn issue_10_a_peer_that_is_not_up_srv_is_named() {
    use std::io::Write as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // What chat-srv sends first: its welcome line.
    let peer = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = writeln!(s, "{}", proto::chat::WELCOME);
            let mut sink = [0u8; 256];
            let _ = std::io::Read::read(&mut s, &mut sink);
        }
    });
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f"), b"x").expect("write");
    let host = addr.to_string();
    let run = up_cli(src.path(), &["--host", &host, "f"], &[]);
    assert_eq!(run.code, Some(1));
    let line = format!(
        "{addr} is not an up-srv (it sent \"{}",
        proto::chat::WELCOME
    );
    assert!(run.stderr.contains(&line), "{}", run.stderr);
    let _ = peer.join();
}

#[test]
fn issue_10_limit_rate_holds_also_when_resumed() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("big.bin"), data(16 << 20, 2)).expect("write");
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "--limit-rate", "4M", "big.bin"],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let took = run.took.as_secs_f64();
    assert!((3.6..4.8).contains(&took), "16 MiB at 4M took {took:.2} s");

    std::fs::write(src.path().join("again.bin"), data(16 << 20, 3)).expect("write");
    let run = up_cli(
        src.path(),
        &[
            "-p",
            &port(&server),
            "--abort-after",
            "8388608",
            "again.bin",
        ],
        &[],
    );
    assert_eq!(run.code, Some(1));
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "--limit-rate", "4M", "again.bin"],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let took = run.took.as_secs_f64();
    assert!(
        (1.8..2.4).contains(&took),
        "8 MiB left at 4M took {took:.2} s (no burst from the resume)"
    );
}

#[test]
fn issue_10_host_takes_a_port_and_ipv6_is_bracketed() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f"), b"x").expect("write");
    let host = format!("127.0.0.1:{}", server.addr.port());
    let run = up_cli(src.path(), &["--host", &host, "f"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let refused = refused_port();
    let run = up_cli(
        src.path(),
        &["--host", "::1", "-p", &refused.port.to_string(), "f"],
        &[],
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(&format!("[::1]:{}", refused.port)),
        "{}",
        run.stderr
    );
}

#[test]
fn issue_10_ctrl_c_says_where_it_stopped_and_the_rerun_resumes() {
    use std::io::Read as _;
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("big.bin"), data(8 << 20, 4)).expect("write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_up-cli"))
        .args(["-p", &port(&server), "--limit-rate", "2M", "big.bin"])
        .current_dir(src.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn up-cli");
    // Interrupt once body bytes have reached the server's partial.
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while partial_bytes(&server.dir) < 1 << 20 {
        assert!(std::time::Instant::now() < deadline, "upload never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted at")
            && stderr.contains("of 8.0 MiB of big.bin: run the same command to resume"),
        "{stderr}"
    );
    let run = up_cli(src.path(), &["-p", &port(&server), "big.bin"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("resuming big.bin at"), "{}", run.stderr);
    assert_eq!(server.read("big.bin"), data(8 << 20, 4));
}

fn partial_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join(".partial"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn issue_10_a_token_an_open_server_does_not_need_is_noted_once() {
    let server = start_server();
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("a"), b"a").expect("write");
    std::fs::write(src.path().join("b"), b"b").expect("write");
    let run = up_cli(
        src.path(),
        &["-p", &port(&server), "--token", "t", "a", "b"],
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("does not check tokens").count(),
        1,
        "{}",
        run.stderr
    );
}

/// An older up-srv speaking versions up to `newest` for `connections`
/// connections: refuses newer versions as old servers did, welcomes the
/// others and refuses the first offer with a marker reason.
fn old_server(
    connections: usize,
    newest: u16,
) -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<u16>>) {
    use bytes::BytesMut;
    use proto::upload::{ClientMessage, RefusalCode, ServerCodec, ServerMessage};
    use std::io::{Read as _, Write as _};
    use tokio_util::codec::{Decoder as _, Encoder as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = std::thread::spawn(move || {
        let mut versions = Vec::new();
        for _ in 0..connections {
            let Ok((mut s, _)) = listener.accept() else {
                break;
            };
            s.set_read_timeout(Some(common::DEADLINE)).expect("timeout");
            let mut buf = BytesMut::new();
            let next = |s: &mut std::net::TcpStream, buf: &mut BytesMut| loop {
                if let Ok(Some(m)) = ServerCodec.decode(buf) {
                    return Some(m);
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let mut magic = [0u8; 4];
            if s.read_exact(&mut magic).is_err() {
                continue;
            }
            let reply = match next(&mut s, &mut buf) {
                Some(ClientMessage::Hello { version, .. }) => {
                    versions.push(version);
                    if version <= newest {
                        ServerMessage::Welcome {
                            version,
                            token_checked: false,
                        }
                    } else {
                        ServerMessage::Refuse {
                            code: RefusalCode::UnsupportedVersion,
                            reason: format!("protocol version {version} is not supported"),
                        }
                    }
                }
                _ => continue,
            };
            let mut out = BytesMut::new();
            ServerCodec.encode(reply.clone(), &mut out).expect("encode");
            let _ = s.write_all(&out);
            if matches!(reply, ServerMessage::Welcome { .. }) {
                if let Some(ClientMessage::Offer { .. }) = next(&mut s, &mut buf) {
                    let mut out = BytesMut::new();
                    let refuse = ServerMessage::Refuse {
                        code: RefusalCode::TooLarge,
                        reason: "old server saw the offer".into(),
                    };
                    ServerCodec.encode(refuse, &mut out).expect("encode");
                    let _ = s.write_all(&out);
                }
            }
        }
        versions
    });
    (addr, server)
}

#[test]
fn issue_10_a_new_up_cli_falls_back_to_version_1_for_an_older_up_srv() {
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f"), b"x").expect("write");
    let (addr, server) = old_server(4, 1);
    let run = up_cli(src.path(), &["--host", &addr.to_string(), "f"], &[]);
    assert!(
        run.stderr.contains("old server saw the offer"),
        "{}",
        run.stderr
    );
    assert_eq!(server.join().expect("server"), [4, 3, 2, 1]);

    let (addr, server) = old_server(4, 1);
    let run = up_cli(src.path(), &["--host", &addr.to_string(), "ls"], &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("older up-srv without ls and get"),
        "{}",
        run.stderr
    );
    assert_eq!(server.join().expect("server"), [4, 3, 2, 1]);
}

#[test]
fn issue_11_sha256_uploads_still_work_with_a_version_2_up_srv() {
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f"), b"x").expect("write");
    let (addr, server) = old_server(3, 2);
    let run = up_cli(src.path(), &["--host", &addr.to_string(), "f"], &[]);
    assert!(
        run.stderr.contains("old server saw the offer"),
        "{}",
        run.stderr
    );
    assert_eq!(server.join().expect("server"), [4, 3, 2]);
}

#[test]
fn issue_11_blake3_against_a_version_2_up_srv_says_what_to_do() {
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::write(src.path().join("f"), b"x").expect("write");
    let (addr, server) = old_server(3, 2);
    let run = up_cli(
        src.path(),
        &["--host", &addr.to_string(), "--hash", "blake3", "f"],
        &[],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("accepts only sha256; upgrade up-srv or drop --hash blake3"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("old server saw the offer"),
        "nothing offered"
    );
    assert_eq!(run.stdout, "");
    assert_eq!(server.join().expect("server"), [4, 3, 2]);
}

#[test]
fn issue_11_hash_blake3_prints_b3sum_lines_and_reruns_skip() {
    use proto::digest::{digest, Algorithm};
    let server = start_server_with(|c| c.allow_get = true);
    let src = tempfile::tempdir().expect("tempdir");
    let a = data(300_000, 7);
    let b = data(5, 8);
    std::fs::write(src.path().join("a.bin"), &a).expect("write");
    std::fs::write(src.path().join("b.bin"), &b).expect("write");
    let b3 = |d: &[u8]| digest(Algorithm::Blake3, d).to_hex();
    let expected = format!("{}  a.bin\n{}  b.bin\n", b3(&a), b3(&b));
    let p = port(&server);
    let args = ["-q", "-p", &p, "--hash", "blake3", "a.bin", "b.bin"];
    let run = up_cli(src.path(), &args, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, expected, "b3sum format");
    assert_eq!(server.read("a.bin"), a);

    // A rerun finds them stored through the BLAKE3 records: same lines, no copies.
    let run = up_cli(src.path(), &args, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, expected);
    assert_eq!(stored_files(&server.dir), ["a.bin", "b.bin"]);

    // SHA-256 stays the default, and ls still lists SHA-256 lines.
    let run = up_cli(src.path(), &["-q", "-p", &p, "ls"], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!("{}  a.bin\n{}  b.bin\n", sha256_hex(&a), sha256_hex(&b))
    );

    let run = up_cli(src.path(), &["-p", &p, "--hash", "md5", "a.bin"], &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("use sha256 or blake3"),
        "{}",
        run.stderr
    );
}
