//! AWS credentials without static secrets, against a real STS that is not ours: moto's server
//! with its request authentication on (`tests/aws_sts.py` proves it refuses a bad signature
//! before anything runs), behind a front that logs the parameters keyward sent, lets the
//! unsigned `AssumeRoleWithWebIdentity` through after checking the token, and serves container
//! credentials. keyward runs as its own process with the environment each source needs; an
//! `http` resource signs STS `GetCallerIdentity`, and moto's answer says who signed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::procs::Keyward;
use crate::support::{require, DEADLINE};

const WEB_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.web-identity-token-for-keyward.sig";
const CONTAINER_TOKEN: &str = "container-authorization-token-4f2a";

struct Sts {
    _child: Child,
    front: u16,
    moto: u16,
    key: String,
    secret: String,
    roles: HashMap<String, String>,
}

fn moto_available() -> bool {
    Command::new("python3")
        .args(["-c", "import moto.server, boto3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The shared STS (moto + front), started on first use; it exits when this process does.
fn sts() -> Option<&'static Sts> {
    static STS: OnceLock<Option<Sts>> = OnceLock::new();
    STS.get_or_init(|| {
        if !require(
            "python3 with moto[server] (pip install 'moto[server]')",
            moto_available(),
        ) {
            return None;
        }
        let mut child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aws_sts.py"))
            .args([WEB_TOKEN, CONTAINER_TOKEN])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Held open for the life of the test binary: the script exits when it closes.
        std::mem::forget(child.stdin.take());
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("aws_sts.py did not start ({e}): {line:?}"));
        let roles = v["roles"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        Some(Sts {
            _child: child,
            front: v["front"].as_u64().unwrap() as u16,
            moto: v["moto"].as_u64().unwrap() as u16,
            key: v["key"].as_str().unwrap().to_owned(),
            secret: v["secret"].as_str().unwrap().to_owned(),
            roles,
        })
    })
    .as_ref()
}

impl Sts {
    /// The STS calls the front saw, in order.
    fn calls(&self) -> Vec<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{}/log", self.front)])
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    }
}

/// An `http` resource `sts` in front of moto, signing for `sts` in us-east-1, with `extra`
/// keys in its auth block.
fn config(dir: &Path, sts: &Sts, extra: &str) -> std::path::PathBuf {
    let yaml = format!(
        "admin:\n  listen: 127.0.0.1:0\nresources:\n  - name: sts\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: http://127.0.0.1:{}\n    tls: {{mode: disable}}\n    auth:\n      type: aws_sigv4\n      service: sts\n      region: us-east-1\n{extra}",
        sts.moto
    );
    let path = dir.join("keyward.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// keyward with only the AWS environment given here (no shared files, no IMDS), STS at the
/// front.
fn keyward(config: &Path, sts: &Sts, env: &[(&str, &str)]) -> Keyward {
    let dir = config.parent().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", sts.front);
    let none = dir.join("absent");
    let mut all: Vec<(&str, std::ffi::OsString)> = vec![
        ("AWS_ENDPOINT_URL_STS", endpoint.into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", none.clone().into()),
        ("AWS_SHARED_CREDENTIALS_FILE", none.into()),
    ];
    for (k, v) in env {
        all.retain(|(name, _)| name != k);
        all.push((k, v.into()));
    }
    let env: Vec<(&str, &std::ffi::OsStr)> = all.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    Keyward::start_with_env(&["run".as_ref(), "-c".as_ref(), config.as_os_str()], &env)
}

fn metrics(kw: &Keyward) -> String {
    let out = Command::new("curl")
        .args(["-sf", &format!("http://{}/metrics", kw.admin_addr())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GetCallerIdentity` through keyward: status, `x-keyward-error`, body.
async fn caller(addr: std::net::SocketAddr) -> (u16, Option<String>, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{addr}/"))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(Full::new(Bytes::from_static(
            b"Action=GetCallerIdentity&Version=2011-06-15",
        )))
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, client.request(req))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = resp.status().as_u16();
    let error = resp
        .headers()
        .get("x-keyward-error")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, error, String::from_utf8_lossy(&body).into_owned())
}

fn arn_in(body: &str) -> &str {
    body.split("<Arn>")
        .nth(1)
        .and_then(|r| r.split("</Arn>").next())
        .unwrap_or_else(|| panic!("no Arn in {body}"))
}

fn last_call<'a>(calls: &'a [serde_json::Value], action: &str) -> &'a serde_json::Value {
    calls
        .iter()
        .rev()
        .find(|c| c["Action"] == action)
        .unwrap_or_else(|| panic!("no {action} in {calls:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn moto_refuses_a_wrong_secret_and_an_unknown_key() {
    let Some(sts) = sts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "      access_key_id: {}\n      secret_access_key: not-the-secret\n",
        sts.key
    );
    let kw = keyward(&config(dir.path(), sts, &extra), sts, &[]);
    let (status, _, body) = caller(kw.addr("sts")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    let extra = "      access_key_id: AKIAUNKNOWNKEY000000\n      secret_access_key: x\n";
    let kw = keyward(&config(dir.path(), sts, extra), sts, &[]);
    let (status, _, body) = caller(kw.addr("sts")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("InvalidClientTokenId"), "{body}");
    let extra = format!(
        "      access_key_id: {}\n      secret_access_key: {}\n",
        sts.key, sts.secret
    );
    let kw = keyward(&config(dir.path(), sts, &extra), sts, &[]);
    let (status, _, body) = caller(kw.addr("sts")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(arn_in(&body), "arn:aws:iam::123456789012:user/app");
}

#[tokio::test(flavor = "multi_thread")]
async fn assume_role_on_environment_credentials_signs_as_the_role_session() {
    let Some(sts) = sts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "      assume_role:\n        role_arn: {}\n        session_name: kw-env\n        external_id: ext-123\n        duration: 15m\n",
        sts.roles["reader"]
    );
    let kw = keyward(
        &config(dir.path(), sts, &extra),
        sts,
        &[
            ("AWS_ACCESS_KEY_ID", &sts.key),
            ("AWS_SECRET_ACCESS_KEY", &sts.secret),
        ],
    );
    let (status, error, body) = caller(kw.addr("sts")).await;
    assert_eq!((status, error), (200, None), "{body}");
    assert_eq!(
        arn_in(&body),
        "arn:aws:sts::123456789012:assumed-role/reader/kw-env"
    );
    let calls = sts.calls();
    let assume = calls
        .iter()
        .rev()
        .find(|c| c["Action"] == "AssumeRole" && c["RoleSessionName"] == "kw-env")
        .unwrap_or_else(|| panic!("no AssumeRole for kw-env in {calls:?}"));
    assert_eq!(assume["ExternalId"], "ext-123");
    assert_eq!(assume["DurationSeconds"], "900");
    assert_eq!(assume["RoleArn"], sts.roles["reader"].as_str());
    assert_eq!(assume["signed"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_session_name_is_keyward_and_the_resource() {
    let Some(sts) = sts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "      access_key_id: {}\n      secret_access_key: {}\n      assume_role:\n        role_arn: {}\n",
        sts.key, sts.secret, sts.roles["reader"]
    );
    let kw = keyward(&config(dir.path(), sts, &extra), sts, &[]);
    let (status, _, body) = caller(kw.addr("sts")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        arn_in(&body),
        "arn:aws:sts::123456789012:assumed-role/reader/keyward-sts"
    );
    let calls = sts.calls();
    let assume = calls
        .iter()
        .rev()
        .find(|c| c["RoleSessionName"] == "keyward-sts")
        .unwrap();
    assert_eq!(assume["DurationSeconds"], "3600");
    assert!(assume.get("ExternalId").is_none(), "{assume}");
}

#[tokio::test(flavor = "multi_thread")]
async fn web_identity_from_a_token_file() {
    let Some(sts) = sts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, WEB_TOKEN).unwrap();
    let cfg = config(dir.path(), sts, "");
    let token_path = token.display().to_string();
    let env = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_path.as_str()),
        ("AWS_ROLE_ARN", sts.roles["web"].as_str()),
        ("AWS_ROLE_SESSION_NAME", "kw-web"),
    ];
    let kw = keyward(&cfg, sts, &env);
    let (status, error, body) = caller(kw.addr("sts")).await;
    assert_eq!((status, error), (200, None), "{body}");
    assert_eq!(
        arn_in(&body),
        "arn:aws:sts::123456789012:assumed-role/web/kw-web"
    );
    let calls = sts.calls();
    let web = last_call(&calls, "AssumeRoleWithWebIdentity");
    assert_eq!(web["token_ok"], true, "{web}");
    assert_eq!(
        web["signed"], false,
        "the call is unsigned, as in the SDKs: {web}"
    );
    drop(kw);

    // A token the issuer does not know: the app gets a 502 that names the failure.
    std::fs::write(&token, "a-forged-token").unwrap();
    let kw = keyward(&cfg, sts, &env);
    let (status, error, body) = caller(kw.addr("sts")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(error.as_deref(), Some("credentials"));
    assert!(
        body.contains("AWS credentials: default chain: web identity: InvalidIdentityTokenException: the web identity token is not the one issued"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn container_credentials_from_a_local_endpoint() {
    let Some(sts) = sts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("container-token");
    std::fs::write(&token, CONTAINER_TOKEN).unwrap();
    let uri = format!("http://127.0.0.1:{}/container", sts.front);
    let token_path = token.display().to_string();
    let kw = keyward(
        &config(dir.path(), sts, ""),
        sts,
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str()),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token_path.as_str(),
            ),
        ],
    );
    let (status, error, body) = caller(kw.addr("sts")).await;
    assert_eq!((status, error), (200, None), "{body}");
    assert_eq!(
        arn_in(&body),
        "arn:aws:sts::123456789012:assumed-role/container/container-creds"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_profile_with_role_arn_and_source_profile() {
    let Some(sts) = sts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("aws-config");
    std::fs::write(
        &config_file,
        format!(
            "[profile analytics]\nrole_arn = {}\nsource_profile = base\nrole_session_name = kw-profile\n\n[profile base]\nregion = us-east-1\n",
            sts.roles["profiled"]
        ),
    )
    .unwrap();
    let credentials_file = dir.path().join("aws-credentials");
    std::fs::write(
        &credentials_file,
        format!(
            "[base]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            sts.key, sts.secret
        ),
    )
    .unwrap();
    let cfg = config(dir.path(), sts, "      profile: analytics\n");
    let (c, k) = (
        config_file.display().to_string(),
        credentials_file.display().to_string(),
    );
    let kw = keyward(
        &cfg,
        sts,
        &[
            ("AWS_CONFIG_FILE", c.as_str()),
            ("AWS_SHARED_CREDENTIALS_FILE", k.as_str()),
        ],
    );
    let (status, error, body) = caller(kw.addr("sts")).await;
    assert_eq!((status, error), (200, None), "{body}");
    assert_eq!(
        arn_in(&body),
        "arn:aws:sts::123456789012:assumed-role/profiled/kw-profile"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_process_in_a_profile() {
    let Some(sts) = sts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("creds.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh
echo '{{\"Version\": 1, \"AccessKeyId\": \"{}\", \"SecretAccessKey\": \"{}\"}}'
",
            sts.key, sts.secret
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config_file = dir.path().join("aws-config");
    std::fs::write(
        &config_file,
        format!(
            "[profile tool]\ncredential_process = {}\n",
            script.display()
        ),
    )
    .unwrap();
    let c = config_file.display().to_string();
    let kw = keyward(
        &config(dir.path(), sts, "      profile: tool\n"),
        sts,
        &[("AWS_CONFIG_FILE", c.as_str())],
    );
    let (status, error, body) = caller(kw.addr("sts")).await;
    assert_eq!((status, error), (200, None), "{body}");
    assert_eq!(arn_in(&body), "arn:aws:iam::123456789012:user/app");
    let metrics = metrics(&kw);
    assert!(
        metrics.contains("keyward_credential_refreshes_total{resource=\"sts\",result=\"success\",source=\"profile\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn short_role_sessions_are_refreshed_ahead_under_load_without_a_failed_request() {
    let Some(sts) = sts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "      access_key_id: {}\n      secret_access_key: {}\n      assume_role:\n        role_arn: {}\n        session_name: kw-load\n        duration: 8s\n",
        sts.key, sts.secret, sts.roles["reader"]
    );
    let kw = keyward(&config(dir.path(), sts, &extra), sts, &[]);
    let addr = kw.addr("sts");
    let until = Instant::now() + Duration::from_secs(20);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            while Instant::now() < until {
                let (status, error, body) = caller(addr).await;
                assert_eq!((status, error), (200, None), "{body}");
                assert_eq!(
                    arn_in(&body),
                    "arn:aws:sts::123456789012:assumed-role/reader/kw-load"
                );
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let refreshes = sts
        .calls()
        .iter()
        .filter(|c| c["Action"] == "AssumeRole" && c["RoleSessionName"] == "kw-load")
        .count();
    // Sessions of 8 s are replaced at half their life: about every 4 s over 20 s, and one
    // fetch each time however many requests were in flight.
    assert!(
        (4..=8).contains(&refreshes),
        "{refreshes} AssumeRole calls for {total} requests"
    );
    assert!(total > 100, "only {total} requests in 20 s");
    let metrics = metrics(&kw);
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("keyward_credential_refreshes_total")
                && l.contains("source=\"assume_role\"")
                && l.contains("result=\"success\"")
        })
        .unwrap_or_else(|| panic!("no refresh counter in {metrics}"));
    let counted: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(counted as usize, refreshes, "{line}");
    assert!(metrics.contains("keyward_credential_expiration_timestamp_seconds{resource=\"sts\"}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_sts_keeps_valid_credentials_then_names_the_failure_then_recovers() {
    let Some(sts) = sts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "      access_key_id: {}\n      secret_access_key: {}\n      assume_role:\n        role_arn: {}\n        session_name: kw-flaky\n        duration: 6s\n",
        sts.key, sts.secret, sts.roles["reader"]
    );
    let kw = keyward(&config(dir.path(), sts, &extra), sts, &[]);
    let addr = kw.addr("sts");
    let toggle = |state: &str| {
        let ok = Command::new("curl")
            .args([
                "-sf",
                &format!("http://127.0.0.1:{}/fail/kw-flaky/{state}", sts.front),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let (status, _, body) = caller(addr).await;
    assert_eq!(status, 200, "{body}");
    let got = Instant::now();
    toggle("on");
    // Refreshes fail from the half-life on; the session's credentials still serve until it ends.
    let mut served_after_failures = 0;
    let failed = loop {
        let (status, error, body) = caller(addr).await;
        if status != 200 {
            break (status, error, body);
        }
        served_after_failures += 1;
        assert!(
            got.elapsed() < Duration::from_secs(8),
            "still served after the session ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        got.elapsed() >= Duration::from_secs(5),
        "failed at {:?}, before the session ended",
        got.elapsed()
    );
    assert!(served_after_failures > 10);
    assert_eq!(failed.0, 502, "{}", failed.2);
    assert_eq!(failed.1.as_deref(), Some("credentials"));
    assert!(
        failed.2.contains(
            "AWS credentials: assume_role: AccessDenied: the front refuses this session now"
        ),
        "{}",
        failed.2
    );
    let refused = metrics(&kw);
    assert!(
        refused.contains("keyward_credential_refreshes_total{resource=\"sts\",result=\"error\",source=\"assume_role\"}"),
        "{refused}"
    );
    // Meanwhile STS is asked once per backoff step (1 s, 2 s, 4 s…), not once per request.
    let (_, _, body) = caller(addr).await;
    assert!(body.contains("next attempt in"), "{body}");
    toggle("off");
    let back = Instant::now();
    loop {
        let (status, _, body) = caller(addr).await;
        if status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "not recovered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_names_the_source_and_the_caller() {
    let Some(sts) = sts() else { return };
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "      assume_role:\n        role_arn: {}\n        session_name: kw-probe\n",
        sts.roles["reader"]
    );
    let cfg = config(dir.path(), sts, &extra);
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["probe", "-c"])
        .arg(&cfg)
        .arg("sts")
        .args([
            "--method",
            "GET",
            "--path",
            "/?Action=GetCallerIdentity&Version=2011-06-15",
        ])
        .env(
            "AWS_ENDPOINT_URL_STS",
            format!("http://127.0.0.1:{}", sts.front),
        )
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", dir.path().join("absent"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("absent"))
        .env("AWS_ACCESS_KEY_ID", &sts.key)
        .env("AWS_SECRET_ACCESS_KEY", &sts.secret)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("aws credentials: ok, source assume_role, caller arn:aws:sts::123456789012:assumed-role/reader/kw-probe"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        !text.contains(&sts.secret),
        "the secret key in the probe's output"
    );
}

/// RDS IAM tokens made with assumed-role credentials (key, secret and session token from
/// moto's AssumeRole) are byte for byte botocore's `generate_db_auth_token` for the same ones.
#[test]
fn rds_tokens_from_assumed_role_credentials_match_botocore() {
    let Some(sts) = sts() else { return };
    let script = format!(
        "import boto3, json\nsts = boto3.client('sts', endpoint_url='http://127.0.0.1:{}', region_name='us-east-1', aws_access_key_id='{}', aws_secret_access_key='{}')\nc = sts.assume_role(RoleArn='{}', RoleSessionName='kw-rds')['Credentials']\nprint(json.dumps([c['AccessKeyId'], c['SecretAccessKey'], c['SessionToken']]))",
        sts.moto, sts.key, sts.secret, sts.roles["reader"]
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let [id, secret, token]: [String; 3] = serde_json::from_slice(&out.stdout).unwrap();
    assert!(id.starts_with("ASIA"), "temporary credentials: {id}");
    crate::sigv4::assert_rds_tokens_match_botocore(&id, &secret, Some(&token));
}
