//! `keyward check`: the built binary on good and bad configs. Each mistake must be reported as
//! `FILE:LINE:COL: key.path: what is wrong`, all of them at once, with exit code 64.

use std::path::Path;
use std::process::Command;

use keyward::pki::Usage;

use crate::support::Pki;

fn check(config: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["check", "-c"])
        .arg(config)
        .env_remove("KEYWARD_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `yaml` and checks it; asserts exit 64 and that `expected` (with FILE replaced by
/// the config path) is one of the reported lines.
fn assert_problem(pki: &Pki, yaml: &str, expected: &str) {
    let file = pki.write("bad.yaml", yaml);
    let (code, _, stderr) = check(&file);
    let expected = expected
        .replace("FILE", &file.display().to_string())
        .replace("DIR", &pki.dir.path().display().to_string());
    assert_eq!(code, 64, "exit code for:\n{yaml}\nstderr:\n{stderr}");
    assert!(
        stderr.lines().any(|l| l == expected),
        "expected line\n  {expected}\nin\n{stderr}"
    );
}

const HEAD: &str = "resources:\n  - name: r\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: localhost:7000\n";

#[test]
fn the_annotated_example_config_passes() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keyward.yaml");
    let (code, stdout, stderr) = check(&example);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok (2 resources)"), "{stdout}");
}

#[test]
fn reports_an_unknown_key_with_its_path() {
    let pki = Pki::new();
    assert_problem(&pki, &format!("{HEAD}    tls:\n      cax: ca.pem\n"), "FILE:7:7: resources[0].tls.cax: unknown key `cax` (a typo?): expected one of mode, ca, system_roots, client_cert, client_key, server_name, min_version, negotiation");
}

#[test]
fn reports_a_bad_duration() {
    let pki = Pki::new();
    assert_problem(&pki, &format!("defaults:\n  connect_timeout: 5x\n{HEAD}"), "FILE:2:20: defaults.connect_timeout: \"5x\" is not a duration (unknown time unit \"x\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write e.g. 500ms, 5s, 10m, 1h");
}

#[test]
fn reports_a_missing_file() {
    let pki = Pki::new();
    assert_problem(
        &pki,
        &format!("{HEAD}    tls:\n      ca: nope.pem\n"),
        "FILE:7:11: resources[0].tls.ca: reading \"DIR/nope.pem\": not found",
    );
}

#[test]
fn reports_a_key_that_does_not_match_its_cert() {
    let pki = Pki::new();
    pki.write_ca();
    let (cert, _) = pki.write_client("a", "a");
    let (_, other_key) = pki.write_client("b", "b");
    let yaml = format!(
        "{HEAD}    tls:\n      ca: ca.pem\n      client_cert: {}\n      client_key: {}\n",
        cert.display(),
        other_key.display()
    );
    assert_problem(&pki, &yaml, &format!("FILE:9:19: resources[0].tls.client_key: \"{}\": key does not match certificate (client_key is not the key of client_cert)", other_key.display()));
}

#[test]
fn reports_an_unknown_protocol() {
    let pki = Pki::new();
    assert_problem(&pki, "resources:\n  - name: r\n    protocol: ftp\n    listen: 127.0.0.1:0\n    upstream: x:1\n", "FILE:3:15: resources[0].protocol: unknown value \"ftp\": expected one of tcp, http, postgres, mysql, redis");
}

#[test]
fn refuses_a_non_loopback_listener_without_allow_remote() {
    let pki = Pki::new();
    let yaml = HEAD.replace("127.0.0.1:0", "0.0.0.0:6432") + "    tls:\n      mode: disable\n";
    assert_problem(&pki, &yaml, "FILE:4:13: resources[0].listen: 0.0.0.0:6432 is not a loopback address: apps on other hosts could use this resource's credentials; set allow_remote: true if that is intended");
    let allowed = pki.write(
        "ok.yaml",
        &(yaml.replace("0.0.0.0:6432", "0.0.0.0:0") + "    allow_remote: true\n"),
    );
    assert_eq!(check(&allowed).0, 0);
}

#[test]
fn reports_a_duplicate_resource_name() {
    let pki = Pki::new();
    let yaml = format!("{HEAD}    tls: {{mode: disable}}\n  - name: r\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: localhost:7001\n    tls: {{mode: disable}}\n");
    assert_problem(
        &pki,
        &yaml,
        "FILE:7:11: resources[1].name: duplicate resource name \"r\"",
    );
}

#[test]
fn reports_an_upstream_without_a_port() {
    let pki = Pki::new();
    assert_problem(&pki, &HEAD.replace("localhost:7000", "localhost"), "FILE:5:15: resources[0].upstream: \"localhost\" is not HOST:PORT (e.g. db.internal:5432 or [2001:db8::1]:5432)");
}

#[test]
fn reports_a_client_cert_without_its_key() {
    let pki = Pki::new();
    assert_problem(
        &pki,
        &format!("{HEAD}    tls:\n      client_cert: c.pem\n"),
        "FILE:7:20: resources[0].tls.client_cert: client_cert and client_key must be set together",
    );
}

#[test]
fn reports_a_truncated_pem() {
    let pki = Pki::new();
    let pem = pki.ca.cert.cert_pem.clone();
    pki.write("cut.pem", &pem[..pem.len() / 2]);
    let file = pki.write("bad.yaml", &format!("{HEAD}    tls:\n      ca: cut.pem\n"));
    let (code, _, stderr) = check(&file);
    assert_eq!(code, 64);
    let prefix = format!(
        "{}:7:11: resources[0].tls.ca: \"{}\": ",
        file.display(),
        pki.path("cut.pem").display()
    );
    assert!(stderr.lines().any(|l| l.starts_with(&prefix)), "{stderr}");
}

#[test]
fn reports_an_auth_type_that_does_not_apply() {
    let pki = Pki::new();
    assert_problem(&pki, &format!("{HEAD}    auth:\n      type: bearer\n      token: x\n"), "FILE:7:7: resources[0].auth.type: auth type \"bearer\" does not apply to protocol tcp; use one of: none");
}

#[test]
fn reports_a_yaml_syntax_error() {
    let pki = Pki::new();
    let file = pki.write("bad.yaml", "resources:\n  - name: [r\n");
    let (code, _, stderr) = check(&file);
    assert_eq!(code, 64);
    assert!(
        stderr.starts_with(&format!("{}:2:11: ", file.display())),
        "{stderr}"
    );
}

#[test]
fn reports_an_empty_server_name_and_zero_max_connections() {
    let pki = Pki::new();
    let yaml = format!("{HEAD}    max_connections: 0\n    tls:\n      server_name: \"\"\n");
    assert_problem(
        &pki,
        &yaml,
        "FILE:6:22: resources[0].max_connections: must be at least 1",
    );
    assert_problem(&pki, &yaml, "FILE:8:20: resources[0].tls.server_name: server_name is empty: name the host the upstream certificate is issued for");
}

#[test]
fn reports_an_expired_client_cert() {
    let pki = Pki::new();
    pki.write_ca();
    let c = pki
        .ca
        .leaf_with("old", &[], Usage::Client, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
        .unwrap();
    pki.write("old.pem", &c.cert_pem);
    pki.write("old.key", &c.key_pem);
    let yaml = format!(
        "{HEAD}    tls:\n      ca: ca.pem\n      client_cert: old.pem\n      client_key: old.key\n"
    );
    assert_problem(&pki, &yaml, &format!("FILE:8:20: resources[0].tls.client_cert: \"{}\": certificate \"CN=old\" expired on 2021-01-01T00:00:00Z", pki.path("old.pem").display()));
}

/// Issue 17 item 5: what `run` warns about at load, `check` says too — a certificate that
/// expires within 7 days is a warning (exit 0), not silence.
#[test]
fn warns_about_a_client_cert_that_expires_within_7_days() {
    let pki = Pki::new();
    pki.write_ca();
    let soon = time::OffsetDateTime::now_utc() + time::Duration::days(3);
    let c = pki
        .ca
        .leaf_with("soon", &[], Usage::Client, |p| {
            p.not_after = soon;
        })
        .unwrap();
    pki.write("soon.pem", &c.cert_pem);
    pki.write("soon.key", &c.key_pem);
    let file = pki.write(
        "soon.yaml",
        &format!("{HEAD}    tls:\n      ca: ca.pem\n      client_cert: soon.pem\n      client_key: soon.key\n"),
    );
    let (code, stdout, stderr) = check(&file);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("ok (1 resources)"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "{}: warning: resource \"r\": certificate CN=soon (client_cert) expires within 7 days, on {}-",
            file.display(),
            soon.year()
        )),
        "{stderr}"
    );
    // A certificate with a year left: no warning.
    let c = pki.ca.leaf("fine", &[], Usage::Client).unwrap();
    pki.write("soon.pem", &c.cert_pem);
    pki.write("soon.key", &c.key_pem);
    let (code, _, stderr) = check(&file);
    assert_eq!((code, stderr.contains("warning")), (0, false), "{stderr}");
}

#[test]
fn reports_a_client_chain_that_does_not_reach_its_ca() {
    let pki = Pki::new();
    let other = keyward::pki::Ca::new("unrelated").unwrap();
    let c = pki.ca.leaf("client", &[], Usage::Client).unwrap();
    pki.write(
        "chain.pem",
        &format!("{}{}", c.cert_pem, other.cert.cert_pem),
    );
    pki.write("chain.key", &c.key_pem);
    let file = pki.write("bad.yaml", &format!("{HEAD}    tls:\n      mode: insecure\n      client_cert: chain.pem\n      client_key: chain.key\n"));
    let (code, _, stderr) = check(&file);
    assert_eq!(code, 64);
    assert!(
        stderr.contains("resources[0].tls.client_cert: ")
            && stderr.contains("does not chain to the CA in the same file"),
        "{stderr}"
    );
    // The same leaf followed by its real CA passes.
    pki.write(
        "chain.pem",
        &format!("{}{}", c.cert_pem, pki.ca.cert.cert_pem),
    );
    assert_eq!(check(&file).0, 0, "{}", check(&file).2);
}

#[test]
fn lists_every_problem_at_once() {
    let pki = Pki::new();
    let yaml = "defaults:\n  idle_timeout: forever\nresources:\n  - name: a\n    protocol: tcp\n    listen: 10.0.0.1:1\n    upstream: nohost\n  - name: b\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: localhost:1\n    tls:\n      ca: missing.pem\n";
    let file = pki.write("bad.yaml", yaml);
    let (code, _, stderr) = check(&file);
    assert_eq!(code, 64);
    for key in [
        "defaults.idle_timeout",
        "resources[0].listen",
        "resources[0].upstream",
        "resources[1].tls.ca",
    ] {
        assert!(
            stderr.contains(&format!(": {key}: ")),
            "{key} missing from:\n{stderr}"
        );
    }
    assert!(stderr.contains("problem(s) found"), "{stderr}");
}

#[test]
fn reports_a_missing_config_file() {
    let (code, _, stderr) = check(Path::new("/nonexistent/keyward.yaml"));
    assert_eq!(code, 64);
    assert!(
        stderr.starts_with("/nonexistent/keyward.yaml: reading the config file: not found"),
        "{stderr}"
    );
}

#[test]
fn cert_inspect_describes_chains_and_keys_without_printing_key_material() {
    let pki = Pki::new();
    let leaf = pki
        .ca
        .leaf("api.internal", &["api.internal", "10.0.0.7"], Usage::Server)
        .unwrap();
    let other = pki.ca.leaf("other", &[], Usage::Client).unwrap();
    let chain = pki.write(
        "chain.pem",
        &format!("{}{}", leaf.cert_pem, pki.ca.cert.cert_pem),
    );
    let key = pki.write("leaf.key", &leaf.key_pem);
    let wrong = pki.write("other.key", &other.key_pem);
    let reversed = pki.write(
        "reversed.pem",
        &format!("{}{}", pki.ca.cert.cert_pem, leaf.cert_pem),
    );
    let run = |files: &[&Path]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(["cert", "inspect"])
            .args(files)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&[&chain, &key]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run(&[&chain, &key, &wrong]);
    // A key that belongs to none of the certificates given is a failure.
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "key {} matches none of the certificates given",
            wrong.display()
        )),
        "{out}"
    );
    for expected in [
        "subject:     CN=api.internal",
        "issuer:      CN=keyward test CA",
        "SANs:        DNS:api.internal, IP:10.0.0.7",
        "days left)",
        "key:         EC P-256 (256 bits)",
        "chain: in order",
        "private key: PKCS#8 (material not shown)",
    ] {
        assert!(out.contains(expected), "{expected} missing:\n{out}");
    }
    assert!(
        out.contains(&format!(
            "key {} MATCHES certificate {}",
            key.display(),
            chain.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "key {} does not match certificate {}",
            wrong.display(),
            chain.display()
        )),
        "{out}"
    );
    let key_body: String = leaf
        .key_pem
        .lines()
        .nth(1)
        .unwrap()
        .chars()
        .take(24)
        .collect();
    assert!(
        !out.contains("PRIVATE KEY") && !out.contains(&key_body),
        "key material printed:\n{out}"
    );
    let (code, out) = run(&[&reversed]);
    assert_eq!(code, Some(1));
    assert!(out.contains("NOT in order"), "{out}");
    let (code, out) = run(&[Path::new("/nonexistent.pem")]);
    assert_eq!(
        (code, out.contains("cannot read: not found")),
        (Some(1), true),
        "{out}"
    );
}

/// An empty secret (a literal, or a file caught empty mid-rotation) is a config error, so a
/// reload that finds one keeps the running configuration instead of injecting nothing.
#[test]
fn an_empty_secret_is_a_config_error_naming_its_key() {
    let pki = Pki::new();
    let redis = "resources:\n  - name: r\n    protocol: redis\n    listen: 127.0.0.1:0\n    upstream: localhost:7000\n    tls:\n      mode: disable\n";
    assert_problem(
        &pki,
        &format!("{redis}    client_password: \"\"\n"),
        "FILE:8:22: resources[0].client_password: the secret is empty (written empty in the config); keyward refuses to use an empty credential",
    );
    let empty = pki.write("key.txt", "\n");
    let http = format!("resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:7000\n    auth:\n      type: api_key\n      query: api_key\n      value: ${{file:{}}}\n", empty.display());
    assert_problem(
        &pki,
        &http,
        &format!("FILE:9:14: resources[0].auth.value: the secret is empty (file {:?} is empty); keyward refuses to use an empty credential", empty.display().to_string()),
    );
}

/// Credentials written into an upstream URL would travel in `Host`, logs and `/resources`:
/// a config error that does not repeat them.
#[test]
fn an_upstream_url_with_userinfo_is_refused_without_echoing_it() {
    let pki = Pki::new();
    let yaml = "resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://user:hunter2@api.example.com/v1\n";
    assert_problem(
        &pki,
        yaml,
        "FILE:5:15: resources[0].upstream: the URL holds credentials (user:password@): keyward never sends or shows them; put them in `auth` (e.g. type: basic)",
    );
    let (_, _, stderr) = check(&pki.write("bad.yaml", yaml));
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// An `http://` OAuth2 token endpoint gets the client secret in clear: refused unless the
/// resource says so explicitly.
#[test]
fn a_plaintext_oauth2_token_endpoint_needs_an_explicit_opt_in() {
    let pki = Pki::new();
    let yaml = "resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://api.example.com\n    auth:\n      type: oauth2\n      token_url: http://auth.example.com/token\n      client_id: kw\n      client_secret: s\n";
    assert_problem(
        &pki,
        yaml,
        "FILE:8:18: resources[0].auth.token_url: an http:// token endpoint would receive the client secret and refresh token unencrypted: use https://, or set auth.allow_plaintext_token_url: true to accept that",
    );
    let opted = pki.write(
        "ok.yaml",
        &format!("{yaml}      allow_plaintext_token_url: true\n"),
    );
    let (code, _, stderr) = check(&opted);
    assert_eq!(code, 0, "{stderr}");
}
