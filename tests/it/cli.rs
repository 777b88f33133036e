//! The command line (issue 17 item 8): `KEYWARD_CONFIG`, `check --format json`, shell
//! completions, `--version` with the commit, `--help` (a snapshot: environment and exit
//! codes), and `keyward tunnel` (one resource from flags alone).

use std::process::{Command, Output};

use crate::support::procs::Keyward;
use crate::support::{roundtrip, server_config, upstream, Behavior, Pki};

fn keyward(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keyward"));
    c.args(args)
        .env_remove("KEYWARD_CONFIG")
        .env_remove("KEYWARD_LOG");
    c
}

fn text(out: &Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "admin: null\nresources:\n  - name: r\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:9\n    tls:\n      mode: disable\n";

#[test]
fn keyward_config_names_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("k.yaml");
    std::fs::write(&conf, GOOD).unwrap();
    let out = keyward(&["check"])
        .env("KEYWARD_CONFIG", &conf)
        .output()
        .unwrap();
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("{}: ok (1 resources)", conf.display())
    );
    // -c wins over the variable.
    let out = keyward(&["check", "-c"])
        .arg(&conf)
        .env("KEYWARD_CONFIG", dir.path().join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    // Neither: clap says what is missing (exit 2).
    let (code, _, stderr) = text(&keyward(&["check"]).output().unwrap());
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--config"), "{stderr}");
}

#[test]
fn check_format_json_gives_one_object_per_problem() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.yaml");
    std::fs::write(
        &conf,
        "resources:\n  - name: r\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: 127.0.0.1:9\n    tls:\n      ca: missing-ca.pem\n  - name: r\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: nowhere\n",
    )
    .unwrap();
    let out = keyward(&["check", "--format", "json", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, Some(64), "{stdout}{stderr}");
    let problems: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert!(problems.len() >= 2, "{stdout}");
    for p in &problems {
        assert_eq!(p["file"], conf.display().to_string(), "{p}");
        assert!(p["message"].as_str().is_some_and(|m| !m.is_empty()), "{p}");
    }
    let ca = problems
        .iter()
        .find(|p| p["key"] == "resources[0].tls.ca")
        .unwrap_or_else(|| panic!("no tls.ca problem in {stdout}"));
    assert_eq!(
        (ca["line"].as_u64(), ca["column"].as_u64()),
        (Some(7), Some(11)),
        "{ca}"
    );
    // A good config: an empty list, exit 0.
    std::fs::write(&conf, GOOD).unwrap();
    let out = keyward(&["check", "--format", "json", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(text(&out).0, Some(0));
    assert_eq!(text(&out).1.trim(), "[]");
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let (code, stdout, stderr) = text(&keyward(&["completions", shell]).output().unwrap());
        assert_eq!(code, Some(0), "{shell}: {stderr}");
        for word in ["keyward", "check", "tunnel", "config"] {
            assert!(stdout.contains(word), "{shell} completions lack {word}");
        }
    }
    // The bash script is valid bash.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("keyward.bash");
    std::fs::write(
        &script,
        keyward(&["completions", "bash"]).output().unwrap().stdout,
    )
    .unwrap();
    let ok = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn version_names_the_commit() {
    let (code, stdout, _) = text(&keyward(&["--version"]).output().unwrap());
    assert_eq!(code, Some(0));
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        stdout.trim(),
        format!("keyward {} ({commit})", env!("CARGO_PKG_VERSION"))
    );
}

/// `--help` is a snapshot (tests/help.txt): a change to the command line shows up in review.
/// `KEYWARD_UPDATE_SNAPSHOTS=1` rewrites it.
#[test]
fn help_matches_its_snapshot() {
    let (code, stdout, _) = text(&keyward(&["--help"]).output().unwrap());
    assert_eq!(code, Some(0));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/help.txt");
    if std::env::var_os("KEYWARD_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &stdout).unwrap();
    }
    let snapshot = std::fs::read_to_string(path).unwrap();
    assert!(
        stdout == snapshot,
        "keyward --help differs from tests/help.txt (KEYWARD_UPDATE_SNAPSHOTS=1 rewrites it):\n{stdout}"
    );
    for must in [
        "Environment:",
        "KEYWARD_CONFIG",
        "KEYWARD_LOG",
        "NO_COLOR",
        "Exit codes:",
        "64  bad configuration",
        "tunnel",
        "completions",
    ] {
        assert!(stdout.contains(must), "--help lacks {must}");
    }
}

/// `keyward tunnel`: mTLS to a TLS upstream that requires a client certificate, from flags
/// alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_serves_one_resource_from_flags() {
    let pki = Pki::new();
    pki.write_ca();
    pki.write_client("client", "tunnel-client");
    let up = upstream(
        server_config(
            &pki.server(&["localhost"]),
            Some(&pki.ca),
            &[&rustls::version::TLS13],
        ),
        Behavior::Echo,
    )
    .await;
    let upstream_addr = format!("localhost:{}", up.port());
    let dir = pki.dir.path().to_path_buf();
    let kw = tokio::task::spawn_blocking(move || {
        Keyward::start_with_args(&[
            "tunnel".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--upstream".as_ref(),
            upstream_addr.as_ref(),
            "--ca".as_ref(),
            dir.join("ca.pem").as_os_str(),
            "--client-cert".as_ref(),
            dir.join("client.pem").as_os_str(),
            "--client-key".as_ref(),
            dir.join("client.key").as_os_str(),
        ])
    })
    .await
    .unwrap();
    let addr = tokio::task::block_in_place(|| kw.addr("tunnel"));
    assert_eq!(
        roundtrip(addr, b"through the tunnel").await,
        b"through the tunnel"
    );
    assert_eq!(up.seen().len(), 1);
    // A bad flag value is reported like a config problem (exit 64).
    let out = keyward(&[
        "tunnel",
        "--listen",
        "0.0.0.0:0",
        "--upstream",
        "localhost:1",
    ])
    .output()
    .unwrap();
    let (code, _, stderr) = text(&out);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("allow_remote"), "{stderr}");
}

/// Issue 17 item 11: with the quick test command (`cargo test`, no KEYWARD_E2E=require), an
/// end-to-end test that skipped its work says `ok` like the rest — so the run ends with the
/// list of what was skipped and why. The suite runs one of its own tests with PostgreSQL 17
/// hidden.
#[test]
fn a_run_that_skipped_end_to_end_checks_ends_with_their_list() {
    let test = "postgres::direct_tls_negotiation_reaches_postgresql_17_and_is_refused_by_15";
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test])
        .env("KEYWARD_PG17", "/nonexistent")
        .env_remove("KEYWARD_E2E")
        .output()
        .unwrap();
    let (code, stdout, stderr) = text(&out);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    let tail = stderr
        .rsplit("SKIPPED their work")
        .next()
        .unwrap_or_default();
    assert!(
        stderr.contains("1 end-to-end check(s) SKIPPED their work")
            && tail.contains(&format!("  - {test}: PostgreSQL 17 binaries")),
        "{stderr}"
    );
}

/// Runs `program args` under `sh` with core files allowed (`ulimit -c unlimited`) in `cwd`,
/// waits until `ready` (a line on its stderr, or none), sends SIGQUIT (whose default action
/// dumps core) and returns how it ended and whether a core file appeared in `cwd`.
fn quit_with_cores_on(
    cwd: &std::path::Path,
    program: &str,
    args: &[&str],
    ready: Option<&str>,
) -> (std::process::ExitStatus, bool) {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new("sh")
        .args(["-c", "ulimit -c unlimited && exec \"$@\"", "sh", program])
        .args(args)
        .current_dir(cwd)
        .env_remove("KEYWARD_CONFIG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    match ready {
        Some(marker) => loop {
            let line = rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .expect("the process to become ready");
            if line.contains(marker) {
                break;
            }
        },
        None => std::thread::sleep(std::time::Duration::from_millis(300)),
    }
    let sent = Command::new("kill")
        .args(["-QUIT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(3), "{status:?}");
    let cored = std::fs::read_dir(cwd)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("core"));
    (status, cored)
}

/// Issue 13 item 15: keyward marks itself not dumpable (PR_SET_DUMPABLE 0, through rustix),
/// so a crash writes none of its memory (the credentials it holds) to a core file, even where
/// core files are on. The control, `sleep` under the same limit and signal, leaves a core:
/// this machine does write them. Failed before the fix (keyward left a core file too).
#[test]
fn a_crashing_keyward_leaves_no_core_file() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (control, sleeper) = (dir.path().join("control"), dir.path().join("keyward"));
    std::fs::create_dir(&control).unwrap();
    std::fs::create_dir(&sleeper).unwrap();
    let (_, control_cored) = quit_with_cores_on(&control, "sleep", &["30"], None);
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if !crate::support::require(
        &format!(
            "core files written in the working directory (kernel.core_pattern is {:?})",
            pattern.trim()
        ),
        control_cored,
    ) {
        return;
    }
    let conf = sleeper.join("keyward.yaml");
    std::fs::write(&conf, GOOD).unwrap();
    let (status, cored) = quit_with_cores_on(
        &sleeper,
        env!("CARGO_BIN_EXE_keyward"),
        &["run", "-c", conf.to_str().unwrap()],
        Some("listening"),
    );
    assert!(!status.core_dumped(), "{status:?}");
    assert!(!cored, "keyward left a core file");
}
