//! SigV4: requests keyward signed, re-signed by botocore (an independent implementation) from
//! what the upstream received; the Authorization values must be identical.

use std::process::{Command, Stdio};

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::httpd::{always_ok, httpd, Recorded};
use crate::support::{require, Pki, Proxy, DEADLINE};

const KEY_ID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "FQoGZXIvYXdzEXAMPLEsessiontoken/+=";

fn botocore_available() -> bool {
    Command::new("python3")
        .args(["-c", "import botocore"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a botocore oracle script on `cases` (JSON on stdin) and returns what it printed.
fn botocore<T: serde::Serialize>(script: &str, cases: &T) -> Vec<String> {
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        serde_json::to_string(cases).unwrap().as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{script} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn send(
    proxy: &Proxy,
    resource: &str,
    method: &str,
    path: &str,
    body: &'static [u8],
) -> (StatusCode, String, Option<String>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.addr(resource)))
        .header("content-type", "application/json")
        .header("authorization", "AWS4-HMAC-SHA256 made-up-by-the-app")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status();
    let reason = resp
        .headers()
        .get("x-keyward-error")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned(),
        reason,
    )
}

/// The botocore case for a request the upstream received.
fn case(seen: &Recorded, port: u16, token: Option<&str>, unsigned: bool) -> serde_json::Value {
    let auth = seen.header("authorization").expect("signed request");
    let signed = auth
        .split("SignedHeaders=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    let mut headers = serde_json::Map::new();
    for name in signed.split(';') {
        if name != "x-amz-date" && name != "x-amz-security-token" {
            headers.insert(
                name.to_owned(),
                serde_json::Value::String(seen.header(name).unwrap()),
            );
        }
    }
    serde_json::json!({
        "method": seen.method,
        "url": format!("https://localhost:{port}{}", seen.uri),
        "headers": headers,
        "body": base64::engine::general_purpose::STANDARD.encode(&seen.body),
        "access_key": KEY_ID,
        "secret_key": SECRET,
        "token": token,
        "unsigned": unsigned,
        "amz_date": seen.header("x-amz-date").unwrap(),
        "service": "execute-api",
        "region": "eu-west-1",
    })
}

#[tokio::test]
async fn signatures_match_botocore_for_the_same_requests() {
    if !require(
        "python3 with botocore (pip install botocore)",
        botocore_available(),
    ) {
        return;
    }
    let pki = Pki::new();
    let up = httpd(
        &pki.server(&["localhost"]),
        None,
        &[b"http/1.1"],
        always_ok(),
    )
    .await;
    let resource = |name: &str, extra: &str| {
        format!("  - name: {name}\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{}\n    tls:\n      ca: ca.pem\n    auth:\n      type: aws_sigv4\n      service: execute-api\n      region: eu-west-1\n      access_key_id: {KEY_ID}\n      secret_access_key: {SECRET}\n{extra}", up.port())
    };
    pki.write_ca();
    let yaml = format!(
        "admin: null\nresources:\n{}{}{}",
        resource("signed", ""),
        resource("session", &format!("      session_token: \"{TOKEN}\"\n")),
        resource("unsigned", "      unsigned_payload: true\n")
    );
    let proxy = Proxy::start(pki.dir.path(), &yaml).await;
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static [u8],
        Option<&'static str>,
        bool,
    );
    let requests: [Case; 5] = [
        ("signed", "GET", "/items?b=2&a=1&empty=", b"", None, false),
        (
            "signed",
            "POST",
            "/items",
            b"{\"name\":\"widget\"}",
            None,
            false,
        ),
        (
            "unsigned",
            "PUT",
            "/upload/blob",
            b"streamed bytes",
            None,
            true,
        ),
        ("session", "GET", "/whoami", b"", Some(TOKEN), false),
        (
            "signed",
            "GET",
            "/objects/a%20b/c%3Dd/~x?q=a%20b&q2=%2F",
            b"",
            None,
            false,
        ),
    ];
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for (res, method, path, body, token, unsigned) in requests {
        let (status, text, _) = send(&proxy, res, method, path, body).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let seen = up.last();
        assert_eq!(
            seen.header_count("authorization"),
            1,
            "the app's Authorization must be replaced"
        );
        if unsigned {
            assert_eq!(
                seen.header("x-amz-content-sha256").unwrap(),
                "UNSIGNED-PAYLOAD"
            );
        }
        if let Some(t) = token {
            assert_eq!(seen.header("x-amz-security-token").unwrap(), t);
        }
        ours.push(seen.header("authorization").unwrap());
        cases.push(case(&seen, up.port(), token, unsigned));
    }
    let theirs = botocore(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sigv4_botocore.py"),
        &cases,
    );
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(
            a, b,
            "request {i} ({} {}): keyward and botocore disagree",
            cases[i]["method"], cases[i]["url"]
        );
    }
    assert_eq!(theirs.len(), 5);
    // Signing is the credential work of these resources: timed like a database login.
    let metrics = keyward::metrics::metrics().render();
    for name in ["signed", "session", "unsigned"] {
        let count = metrics
            .lines()
            .find(|l| {
                l.starts_with("keyward_upstream_auth_seconds_count")
                    && l.contains(&format!("resource=\"{name}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(
            count > 0,
            "{name}: no keyward_upstream_auth_seconds observation"
        );
    }
}

#[tokio::test]
async fn a_body_over_the_signing_limit_is_a_413_that_says_what_to_do() {
    let pki = Pki::new();
    let up = httpd(
        &pki.server(&["localhost"]),
        None,
        &[b"http/1.1"],
        always_ok(),
    )
    .await;
    pki.write_ca();
    let yaml = format!("admin: null\nresources:\n  - name: s3\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://localhost:{}\n    max_signed_body: 8\n    tls:\n      ca: ca.pem\n    auth:\n      type: aws_sigv4\n      service: s3\n      region: us-east-1\n      access_key_id: {KEY_ID}\n      secret_access_key: {SECRET}\n", up.port());
    let proxy = Proxy::start(pki.dir.path(), &yaml).await;
    let (status, body, reason) =
        send(&proxy, "s3", "PUT", "/bucket/key", b"more than eight bytes").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reason.as_deref(), Some("body_too_large"));
    assert!(body.contains("unsigned_payload: true"), "{body}");
    assert!(up.seen().is_empty());
    let (status, _, _) = send(&proxy, "s3", "PUT", "/bucket/key", b"small").await;
    assert_eq!(status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(
        seen.header("x-amz-content-sha256").unwrap(),
        sha256_hex(b"small")
    );
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// RDS IAM tokens: byte for byte what botocore's `generate_db_auth_token` makes for the same
/// credentials, host, port, user, region and signing time.
#[test]
fn rds_iam_tokens_match_botocore() {
    assert_rds_tokens_match_botocore("AKIDEXAMPLE", "", None);
}

/// Tokens for key `id` (and `secret`, `token` where given, else the cases' own) match
/// botocore's for the same credentials.
pub fn assert_rds_tokens_match_botocore(id: &str, secret: &str, token: Option<&str>) {
    use keyward::config::{AwsCredentials, SecretRef, Upstream};
    use keyward::secret::{Secret, SecretSource};
    if !require(
        "python3 with botocore (pip install botocore)",
        botocore_available(),
    ) {
        return;
    }
    let lit = |v: &str| SecretRef {
        source: SecretSource::Literal(Secret::new(v)),
        site: Default::default(),
    };
    let cases = [
        (
            "eu-west-1",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            "db.abc.eu-west-1.rds.amazonaws.com",
            5432u16,
            "app_rw",
            "20261123T101500Z",
            1_795_428_900u64,
        ),
        (
            "us-east-1",
            "s",
            Some("tok/en+="),
            "h.example",
            3306,
            "jane doe@x",
            "20260101T000000Z",
            1_767_225_600,
        ),
    ];
    let mut input = Vec::new();
    let mut ours = Vec::new();
    for (region, case_secret, case_token, host, port, user, amz_date, epoch) in cases {
        let (secret, token) = if secret.is_empty() {
            (case_secret, case_token)
        } else {
            (secret, token)
        };
        let creds = AwsCredentials {
            access_key_id: Some(lit(id)),
            secret_access_key: Some(lit(secret)),
            session_token: token.map(lit),
            ..Default::default()
        };
        let upstream = Upstream {
            host: host.to_owned(),
            port,
            url: None,
        };
        let env = |_: &str| None;
        let rds = keyward::rds::RdsIam::build(
            "db",
            user,
            region,
            &upstream,
            &creds,
            &env,
            &Default::default(),
        )
        .unwrap();
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);
        let fixed = aws_credential_types::Credentials::new(
            id,
            secret,
            token.map(str::to_owned),
            None,
            "test",
        );
        ours.push(rds.token_at(&fixed, at).unwrap().expose().to_owned());
        input.push(serde_json::json!({
            "region": region, "access_key": id, "secret_key": secret, "token": token,
            "amz_date": amz_date, "host": host, "port": port, "user": user,
        }));
    }
    let theirs = botocore(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rds_botocore.py"),
        &input,
    );
    assert_eq!(ours, theirs);
}
