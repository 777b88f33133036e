use rustls::pki_types::ServerName;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::upstream::split_host_port;
use super::*;

fn ok(yaml: &str) -> Config {
    parse(yaml, Path::new("/etc/keyward/k.yaml")).unwrap_or_else(|p| panic!("{p}"))
}

fn problems(yaml: &str) -> Vec<String> {
    match parse(yaml, Path::new("k.yaml")) {
        Ok(_) => panic!("expected problems for:\n{yaml}"),
        Err(p) => p.0.iter().map(ToString::to_string).collect(),
    }
}

/// Each YAML has a problem containing its text.
fn expect_problems(cases: &[(String, &str)]) {
    for (yaml, want) in cases {
        let found = problems(yaml);
        assert!(
            found.iter().any(|p| p.contains(want)),
            "{want}\nnot in {found:#?}"
        );
    }
}

const ONE: &str = "resources:\n  - name: r\n    protocol: tcp\n    listen: 127.0.0.1:6432\n    upstream: db.internal:5432\n";

#[test]
fn defaults_apply_where_a_resource_is_silent() {
    let c = ok(&format!("defaults:\n  connect_timeout: 2s\n  idle_timeout: 0s\n  max_connections: 7\n  tls:\n    ca: ca.pem\n    min_version: 1.3\n{ONE}    connect_timeout: 250ms\n"));
    let r = &c.resources[0];
    assert_eq!(r.connect_timeout, Duration::from_millis(250));
    assert_eq!(r.idle_timeout, None, "0s disables the idle timeout");
    assert_eq!(r.max_connections, 7);
    assert_eq!(
        r.tls.ca.as_ref().unwrap().path,
        PathBuf::from("/etc/keyward/ca.pem"),
        "relative to the config file"
    );
    assert_eq!(r.tls.ca.as_ref().unwrap().site.path, "defaults.tls.ca");
    assert_eq!(r.tls.min_version, TlsVersion::Tls13);
    assert!(!r.tls.system_roots, "system roots default off with a ca");
}

#[test]
fn builtin_defaults_are_secure() {
    let c = ok(ONE);
    let r = &c.resources[0];
    assert_eq!(r.tls.mode, TlsMode::VerifyFull);
    assert!(r.tls.system_roots);
    assert_eq!(
        r.tls.server_name,
        ServerName::try_from("db.internal").unwrap()
    );
    assert_eq!(r.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(r.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
    assert_eq!(
        c.admin,
        Some(Admin {
            listen: DEFAULT_ADMIN,
            shutdown_endpoint: false,
        }),
        "admin on loopback, the shutdown endpoint off"
    );
    assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
}

#[test]
fn admin_null_turns_the_admin_endpoint_off() {
    assert_eq!(ok(&format!("admin: null\n{ONE}")).admin, None);
    assert_eq!(
        ok(&format!("admin:\n  listen: 127.0.0.1:9999\n{ONE}"))
            .admin
            .unwrap()
            .listen
            .port(),
        9999
    );
}

#[test]
fn ip_upstreams_verify_as_ip_addresses() {
    let c = ok(&ONE.replace("db.internal:5432", "\"[::1]:5432\""));
    assert_eq!(c.resources[0].upstream.host, "::1");
    assert!(matches!(
        c.resources[0].tls.server_name,
        ServerName::IpAddress(_)
    ));
    assert_eq!(c.resources[0].upstream.to_string(), "[::1]:5432");
}

#[test]
fn listen_accepts_localhost_ipv6_and_unix() {
    assert_eq!(
        ok(&ONE.replace("127.0.0.1:6432", "localhost:6432")).resources[0].listen,
        ListenAddr::Tcp("127.0.0.1:6432".parse().unwrap())
    );
    assert_eq!(
        ok(&ONE.replace("127.0.0.1:6432", "\"[::1]:0\"")).resources[0].listen,
        ListenAddr::Tcp("[::1]:0".parse().unwrap())
    );
    let unix = ok(&format!(
        "{}    listen_mode: \"0660\"\n",
        ONE.replace("127.0.0.1:6432", "unix:/run/k.sock")
    ));
    assert_eq!(
        unix.resources[0].listen,
        ListenAddr::Unix {
            path: "/run/k.sock".into(),
            mode: 0o660
        }
    );
}

#[test]
fn two_resources_cannot_share_a_listen_address() {
    let yaml = format!(
        "{ONE}  - name: s\n    protocol: tcp\n    listen: 127.0.0.1:6432\n    upstream: other:1\n"
    );
    assert_eq!(problems(&yaml), ["k.yaml:8:13: resources[1].listen: 127.0.0.1:6432 is already the listen address of resource \"r\""]);
}

#[test]
fn postgres_resources_parse_with_db_options() {
    let yaml = "resources:\n  - name: db\n    protocol: postgres\n    listen: 127.0.0.1:6432\n    upstream: db:5432\n    client_password: ${env:CPW}\n    tls:\n      negotiation: direct\n    auth:\n      type: password\n      username: app\n      password: ${env:PW}\n      allow_cleartext_password: true\n";
    let c = ok(yaml);
    let r = &c.resources[0];
    assert_eq!(r.tls.negotiation, Negotiation::Direct);
    assert!(r.db.allow_cleartext_password);
    assert!(r.db.client_password.is_some());
    assert!(matches!(&r.auth, Auth::Password { username: Some(u), .. } if u == "app"));
}

#[test]
fn database_options_are_checked_against_the_protocol() {
    let yaml = "resources:\n  - name: db\n    protocol: tcp\n    listen: 127.0.0.1:6432\n    upstream: db:5432\n    client_password: x\n    tls:\n      negotiation: direct\n";
    assert_eq!(
        problems(yaml),
        [
            "k.yaml:8:20: resources[0].tls.negotiation: tls.negotiation applies to protocol postgres only",
            "k.yaml:6:22: resources[0].client_password: client_password applies to protocols postgres, mysql and redis"
        ]
    );
    let yaml = "resources:\n  - name: db\n    protocol: postgres\n    listen: 127.0.0.1:6432\n    upstream: db:5432\n    tls:\n      mode: disable\n      negotiation: direct\n    auth:\n      type: password\n      username: u\n      allow_rsa_key_exchange: true\n";
    assert_eq!(
        problems(yaml),
        [
            "k.yaml:8:20: resources[0].tls.negotiation: negotiation: direct is TLS from the first byte; it cannot be combined with mode: disable",
            "k.yaml:12:31: resources[0].auth.allow_rsa_key_exchange: allow_rsa_key_exchange applies to protocol mysql only"
        ]
    );
}

#[test]
fn http_resources_parse_with_options_and_oauth2_tls() {
    let yaml = "resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:8081\n    upstream: https://api.example.com/v1\n    http2: never\n    response_timeout: 5s\n    auth:\n      type: oauth2\n      token_url: https://auth.example.com/token\n      client_id: kw\n      client_secret: ${env:S}\n      scopes: [a, b]\n      tls:\n        mode: verify-ca\n    headers:\n      X-Tenant: acme\n";
    let c = ok(yaml);
    let r = &c.resources[0];
    assert_eq!(r.http.http2, Http2::Never);
    assert_eq!(r.http.response_timeout, Duration::from_secs(5));
    let Auth::OAuth2(o) = &r.auth else {
        panic!("not oauth2")
    };
    assert_eq!(o.tls.mode, TlsMode::VerifyCa);
    assert_eq!(
        o.tls.server_name,
        ServerName::try_from("auth.example.com").unwrap()
    );
    assert_eq!(o.scopes, ["a", "b"]);
    assert_eq!(r.upstream.url.as_ref().unwrap().path(), "/v1");
}

/// The auth block's shape is the deserializer's job (a tagged enum on `type`): a key of
/// another type, a missing key the type needs, `tls` outside oauth2 and a half-given AWS key
/// pair are refused at the block, with the key (and its line) named.
#[test]
fn auth_keys_are_checked_against_the_auth_type() {
    let res = "resources:\n  - name: r\n    protocol: PROTO\n    listen: 127.0.0.1:0\n    upstream: UP\n    auth:\n";
    let cases = [
        ("postgres", "db:5432", "      type: password\n      token: x\n",
         "k.yaml:7:7: resources[0].auth: \"token\" (line 8) does not apply to auth type \"password\", which takes: username, password, database, allow_cleartext_password, allow_rsa_key_exchange"),
        ("http", "https://x", "      token: x\n      type: bearer\n      username: u\n",
         "k.yaml:7:7: resources[0].auth: \"username\" (line 9) does not apply to auth type \"bearer\", which takes: token"),
        ("http", "https://x", "      type: none\n      token: x\n",
         "k.yaml:7:7: resources[0].auth: \"token\" (line 8) does not apply to auth type \"none\", which takes: no other key"),
        ("http", "https://x", "      type: bearer\n",
         "k.yaml:7:7: resources[0].auth: auth type \"bearer\" needs \"token\""),
        ("http", "https://x", "      type: basic\n      username: u\n      tls:\n        mode: verify-ca\n",
         "k.yaml:7:7: resources[0].auth: \"tls\" does not apply to auth type \"basic\", which takes: username, password"),
        ("http", "https://x", "      type: api_key\n      header: X\n      query: k\n      value: v\n",
         "k.yaml:7:7: resources[0].auth: auth type \"api_key\" needs exactly one of \"header\" or \"query\""),
        ("http", "https://x", "      type: aws_sigv4\n      service: s3\n      region: r\n      access_key_id: k\n",
         "k.yaml:7:7: resources[0].auth: auth type \"aws_sigv4\": access_key_id and secret_access_key must be set together"),
        ("http", "https://x", "      type: oauth2\n      token_url: https://t\n      client_id: c\n",
         "k.yaml:7:7: resources[0].auth: auth type \"oauth2\" needs \"client_secret\" (client credentials grant), \"refresh_token\", \"assertion\" (grant: jwt_bearer or client_auth: private_key_jwt) or \"google_service_account\""),
        ("http", "https://x", "      type: bogus\n",
         "k.yaml:7:13: resources[0].auth.type: unknown value \"bogus\": expected one of none, password, rds_iam, api_key, basic, bearer, oauth2, aws_sigv4"),
        // What needs the protocol or the value is checked after, at the key itself.
        ("postgres", "db:5432", "      type: password\n      password: ${file:pw}\n",
         "k.yaml:7:7: resources[0].auth.type: auth type \"password\" needs \"username\""),
        ("redis", "r:6379", "      type: basic\n      username: u\n      password: p\n",
         "k.yaml:7:7: resources[0].auth.type: auth type \"basic\" does not apply to protocol redis; use one of: none, password"),
        ("http", "https://x", "      type: bearer\n      token: \"  \"\n",
         "k.yaml:8:14: resources[0].auth.token: must not be empty"),
    ];
    for (proto, up, auth, want) in cases {
        let yaml = res.replace("PROTO", proto).replace("UP", up) + auth;
        let found = problems(&yaml);
        assert_eq!(found, [want.to_owned()], "{auth}");
    }
}

#[test]
fn a_bad_secret_reference_is_reported_at_its_key() {
    let yaml = "resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://x\n    auth:\n      type: api_key\n      header: X-Key\n      value: ${vault:k}\n";
    let found = problems(yaml);
    assert!(found.contains(&"k.yaml:9:14: resources[0].auth.value: a secret reference is `${env:NAME}` or `${file:PATH}`".to_owned()), "{found:?}");
}

#[test]
fn a_plain_http_upstream_cannot_ask_for_verification() {
    let yaml = "resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: http://x\n    tls:\n      mode: verify-ca\n";
    let found = problems(yaml);
    assert!(
        found
            .iter()
            .any(|p| p.contains("resources[0].tls.mode: the upstream is plain http://")),
        "{found:?}"
    );
}

#[test]
fn min_version_takes_strings_and_yaml_floats() {
    for v in ["\"1.3\"", "1.3"] {
        let c = ok(&format!("{ONE}    tls:\n      min_version: {v}\n"));
        assert_eq!(c.resources[0].tls.min_version, TlsVersion::Tls13);
    }
    let found = problems(&format!("{ONE}    tls:\n      min_version: \"1.1\"\n"));
    assert!(
        found[0].contains("resources[0].tls.min_version: unsupported TLS version \"1.1\""),
        "{found:?}"
    );
}

#[test]
fn names_must_be_label_safe() {
    let found = problems(&ONE.replace("name: r", "name: \"a b\""));
    assert!(
        found[0].contains("resources[0].name: \"a b\" is not a valid name"),
        "{found:?}"
    );
}

#[test]
fn split_host_port_cases() {
    assert_eq!(split_host_port("db:5432"), Some(("db".into(), 5432)));
    assert_eq!(
        split_host_port("[2001:db8::1]:443"),
        Some(("2001:db8::1".into(), 443))
    );
    assert_eq!(split_host_port("2001:db8::1:443"), None);
    assert_eq!(split_host_port("db"), None);
    assert_eq!(split_host_port("db:0"), None);
    assert_eq!(split_host_port(":5432"), None);
    assert_eq!(split_host_port("db:99999"), None);
}

#[test]
fn an_unquoted_ipv6_address_gets_a_hint() {
    let found = problems(&ONE.replace("db.internal:5432", "[::1]:5432"));
    assert!(found[0].ends_with("resources[0].upstream: expected string scalar (quote values that start with '[' or '{', e.g. \"[::1]:5432\")"), "{found:?}");
}

#[test]
fn rds_iam_needs_verified_tls() {
    let yaml = "resources:\n  - name: db\n    protocol: postgres\n    listen: 127.0.0.1:6432\n    upstream: db:5432\n    tls:\n      mode: insecure\n    auth:\n      type: rds_iam\n      username: app\n      region: eu-west-1\n";
    assert_eq!(
        problems(yaml),
        ["k.yaml:7:13: resources[0].tls.mode: auth type \"rds_iam\" sends its token as a password: it needs a verified TLS connection, not tls.mode insecure"]
    );
}

#[test]
fn listen_tls_allow_lists_need_a_client_ca_and_required_certificates() {
    let head = "resources:\n  - name: t\n    protocol: tcp\n    listen: 127.0.0.1:7000\n    upstream: db:5432\n    listen_tls:\n      cert: c.pem\n      key: k.pem\n";
    assert_eq!(
        problems(&format!("{head}      allow:\n        cn: [app]\n")),
        ["k.yaml:10:9: resources[0].listen_tls.allow: client certificates need listen_tls.client_ca, the CA that issues them"]
    );
    assert_eq!(
        problems(&format!("{head}      client_ca: ca.pem\n      allow:\n        uri: [\"spiffe://x/*\"]\n")),
        ["k.yaml:11:9: resources[0].listen_tls.allow: an allow-list needs require_client_cert: true (a client without a certificate would pass it)"]
    );
    let c = ok(&format!("{head}      client_ca: ca.pem\n      require_client_cert: true\n      allow:\n        dns: [\"*.svc\"]\n"));
    let l = c.resources[0].listen_tls.as_ref().unwrap();
    assert!(l.require_client_cert);
    assert_eq!(l.allow.dns, ["*.svc"]);
}

#[test]
fn pool_max_idle_is_for_postgres() {
    let yaml = "resources:\n  - name: db\n    protocol: postgres\n    listen: 127.0.0.1:6432\n    upstream: db:5432\n    pool_max_idle: 5\n    pool_idle_timeout: 30s\n";
    let c = ok(yaml);
    assert_eq!(c.resources[0].db.pool_max_idle, 5);
    assert_eq!(c.resources[0].db.pool_idle_timeout, Duration::from_secs(30));
    let yaml = "resources:\n  - name: r\n    protocol: redis\n    listen: 127.0.0.1:6432\n    upstream: db:5432\n    pool_max_idle: 5\n";
    assert_eq!(
        problems(yaml),
        ["k.yaml:6:20: resources[0].pool_max_idle: pool_max_idle applies to protocol postgres only"]
    );
}

#[test]
fn allow_methods_takes_trace_and_connect_only_and_http_only() {
    let http = "resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:0\n    upstream: https://x\n    allow_methods: [trace, DELETE]\n";
    assert_eq!(
        problems(http),
        ["k.yaml:6:20: resources[0].allow_methods: \"DELETE\": only TRACE and CONNECT are refused by default, so only they can be allowed"]
    );
    let tcp = "resources:\n  - name: db\n    protocol: tcp\n    listen: 127.0.0.1:0\n    upstream: db:5432\n    allow_methods: [TRACE]\n";
    let found = problems(tcp);
    assert!(
        found.len() == 1
            && found[0].contains("allow_methods")
            && found[0].contains("protocol http only"),
        "{found:?}"
    );
}

/// Issue 17 item 5: `check` refuses what `run` could not bind: a resource on the admin port.
#[test]
fn a_resource_on_the_admin_port_is_a_problem() {
    let yaml = "resources:\n  - name: r\n    protocol: tcp\n    listen: 127.0.0.1:9901\n    upstream: db:5432\n";
    assert_eq!(
        problems(yaml),
        ["k.yaml:4:13: resources[0].listen: 127.0.0.1:9901 is also admin.listen (127.0.0.1:9901): the admin endpoint and a resource cannot share a port"]
    );
    let yaml = "admin:\n  listen: 127.0.0.1:9000\nresources:\n  - name: r\n    protocol: tcp\n    listen: 0.0.0.0:9000\n    allow_remote: true\n    upstream: db:5432\n";
    assert_eq!(problems(yaml).len(), 1);
    let other = "admin:\n  listen: 127.0.0.1:9000\nresources:\n  - name: r\n    protocol: tcp\n    listen: 127.0.0.2:9000\n    upstream: db:5432\n";
    assert!(parse(other, Path::new("k.yaml")).is_ok());
    let no_admin = "admin: null\nresources:\n  - name: r\n    protocol: tcp\n    listen: 127.0.0.1:9901\n    upstream: db:5432\n";
    assert!(parse(no_admin, Path::new("k.yaml")).is_ok());
}

/// Issue 17 item 6: what the parser says is said in the words of someone writing YAML, at the
/// place of the mistake.
#[test]
fn syntax_messages_speak_the_users_language() {
    let r =
        "resources:\n  - name: a\n    protocol: tcp\n    listen: 127.0.0.1:1\n    upstream: h:1\n";
    let cases = [
        (
            "resources:\n  - name: a\n    name: b\n".to_owned(),
            "k.yaml:3:5: resources[0]: duplicate key `name`: a key may appear once in a map",
        ),
        (
            "resources:\n  name: a\n".to_owned(),
            "k.yaml:2:3: resources: expected a list (items on lines starting with `- `)",
        ),
        (
            format!("{r}    max_connections: -5\n"),
            "k.yaml:6:22: resources[0].max_connections: expected a whole number between 0 and 4294967295",
        ),
        (
            format!("{r}    max_connections: many\n"),
            "k.yaml:6:22: resources[0].max_connections: expected a whole number between 0 and 4294967295",
        ),
        (
            format!("{r}    allow_remote: maybe\n"),
            "k.yaml:6:19: resources[0].allow_remote: expected true or false",
        ),
        (
            format!("{r}    tls: 5\n"),
            "k.yaml:6:10: resources[0].tls: expected a map (`key: value` lines)",
        ),
        (
            "resources:\n  - name: a\n\tprotocol: tcp\n".to_owned(),
            "k.yaml:3:1: resources[0]: a tab character: YAML indents with spaces only",
        ),
        (
            format!("{r}    protocl: tcp\n").replace("    protocol: tcp\n", ""),
            "k.yaml:5:5: resources[0].protocl: unknown key `protocl` (a typo?): expected one of name, protocol, listen, allow_remote, listen_mode, upstream, tls, auth, headers, connect_timeout, handshake_timeout, client_handshake_timeout, idle_timeout, max_connections, http2, preserve_host, pass_client_auth, response_timeout, pool_idle_timeout, max_signed_body, allow_methods, client_password, listen_tls, pool_max_idle, audit, allow, deny, read_only",
        ),
    ];
    for (yaml, want) in cases {
        let got = problems(&yaml);
        assert!(
            got.iter().any(|p| p == want),
            "{yaml}\nwant {want}\ngot {got:?}"
        );
        for p in &got {
            for jargon in [
                "DuplicateKeyPolicy",
                "sequence start",
                "mapping start",
                "invalid u32",
                "unknown variant",
            ] {
                assert!(!p.contains(jargon), "{p}");
            }
        }
    }
}

const HTTP: &str = "resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:8080\n    upstream: https://api.example.com\n";

#[test]
fn audit_levels_default_to_sessions_with_the_block_and_off_without() {
    let c = ok(HTTP);
    assert!(c.audit.is_none());
    assert_eq!(c.resources[0].audit.level, AuditLevel::Off);
    let c = ok(&format!("audit:\n  sink: stdout\n{HTTP}"));
    assert_eq!(
        c.audit,
        Some(AuditSettings {
            sink: AuditSink::Stdout,
            queue: DEFAULT_AUDIT_QUEUE
        })
    );
    assert_eq!(c.resources[0].audit.level, AuditLevel::Sessions);
    let c = ok(&format!(
        "audit:\n  sink: file\n  path: audit/k.jsonl\n  max_size: 10MiB\n  max_files: 3\n  queue: 100\n{HTTP}    audit: requests\n"
    ));
    assert_eq!(
        c.audit.unwrap().sink,
        AuditSink::File {
            path: PathBuf::from("/etc/keyward/audit/k.jsonl"),
            max_size: 10 << 20,
            max_files: 3
        }
    );
    assert_eq!(c.resources[0].audit.level, AuditLevel::Requests);
    let pg = "resources:\n  - name: db\n    protocol: postgres\n    listen: 127.0.0.1:6432\n    upstream: db:5432\n";
    for (own, level, mask) in [
        ("off", AuditLevel::Off, false),
        ("statements", AuditLevel::Statements, false),
        (
            "{level: statements, mask_literals: true}",
            AuditLevel::Statements,
            true,
        ),
    ] {
        let c = ok(&format!("audit:\n  sink: stdout\n{pg}    audit: {own}\n"));
        assert_eq!(c.resources[0].audit.level, level, "{own}");
        assert_eq!(c.resources[0].audit.mask_literals, mask, "{own}");
    }
}

#[test]
fn audit_settings_are_checked_with_their_key_named() {
    let cases = [
        (format!("{HTTP}    audit: requests\n"), "resources[0].audit: no top-level audit block"),
        (format!("audit:\n  sink: stdout\n{HTTP}    audit: statements\n"), "resources[0].audit: audit level statements applies to protocols postgres, mysql and redis"),
        (format!("audit:\n  sink: stdout\n{ONE}    audit: requests\n"), "resources[0].audit: audit level requests applies to protocol http"),
        (format!("audit:\n  sink: stdout\n{HTTP}    audit: {{level: requests, mask_literals: true}}\n"), "mask_literals applies to SQL statements"),
        (format!("audit:\n  sink: file\n{HTTP}"), "audit.path: sink: file needs path"),
        (format!("audit:\n  sink: stdout\n  path: x\n{HTTP}"), "audit.path: path applies to sink: file only"),
        (format!("audit:\n  sink: file\n  path: a\n  max_size: 10 parsecs\n{HTTP}"), "audit.max_size: expected a size"),
        (format!("audit:\n  sink: file\n  path: a\n  max_size: 100\n{HTTP}"), "audit.max_size: must be at least 4KiB"),
        (format!("audit:\n  sink: kafka\n{HTTP}"), "unknown value \"kafka\""),
        (format!("audit:\n  sink: stdout\n{HTTP}    audit: verbose\n"), "resources[0].audit"),
    ];
    expect_problems(&cases);
}

#[test]
fn http_allow_rules_parse_and_are_checked() {
    let c = ok(&format!(
        "{HTTP}    allow:\n      - methods: [get, HEAD]\n        paths: [\"/v1/reports/**\"]\n      - paths: [\"/health\"]\n"
    ));
    let rules = &c.resources[0].http.allow;
    assert_eq!(rules.len(), 2);
    assert_eq!(
        rules[0].methods,
        vec![::http::Method::GET, ::http::Method::HEAD]
    );
    assert!(rules[0].admits(&::http::Method::GET, "/v1/reports/2026/q3"));
    assert!(!rules[0].admits(&::http::Method::POST, "/v1/reports/2026/q3"));
    assert!(rules[1].admits(&::http::Method::DELETE, "/health"));
    for (yaml, want) in [
        (
            format!("{ONE}    allow:\n      - paths: [\"/x\"]\n"),
            "resources[0].allow: allow applies to protocols http and redis",
        ),
        (
            format!("{HTTP}    allow: []\n"),
            "an empty allow list would refuse every request",
        ),
        (
            format!("{HTTP}    allow:\n      - paths: [\"v1/*\"]\n"),
            "resources[0].allow[0].paths: \"v1/*\" must start with '/'",
        ),
        (
            format!("{HTTP}    allow:\n      - methods: [\"GE T\"]\n"),
            "is not an HTTP method",
        ),
        (
            format!("{HTTP}    allow:\n      - methods: []\n"),
            "an empty methods or paths list matches nothing",
        ),
        (
            format!("{HTTP}    allow:\n      - verbs: [GET]\n"),
            "unknown key `verbs`",
        ),
    ] {
        let found = problems(&yaml);
        assert!(
            found.iter().any(|p| p.contains(want)),
            "{want}\nnot in {found:#?}"
        );
    }
}

#[test]
fn path_globs_match_segments() {
    let cases = [
        ("/v1/reports/**", "/v1/reports", true),
        ("/v1/reports/**", "/v1/reports/", true),
        ("/v1/reports/**", "/v1/reports/a/b/c", true),
        ("/v1/reports/**", "/v1/reportsX", false),
        ("/v1/reports/**", "/v1", false),
        ("/v1/*/items", "/v1/7/items", true),
        ("/v1/*/items", "/v1/7/8/items", false),
        ("/v1/*/items", "/v1//items", true),
        ("/v1/**/items", "/v1/items", true),
        ("/v1/**/items", "/v1/a/b/items", true),
        ("/v1/**/items", "/v1/a/b/items/x", false),
        ("/files/*.csv", "/files/q3.csv", true),
        ("/files/*.csv", "/files/q3.csv.exe", false),
        ("/files/a*b*c", "/files/aXbYbZc", true),
        ("/exact", "/exact", true),
        ("/exact", "/exact/", false),
        ("/**", "/", true),
        ("/**", "/anything/at/all", true),
    ];
    for (glob, path, want) in cases {
        assert_eq!(glob_path(glob, path), want, "{glob} vs {path}");
    }
    // No catastrophic backtracking: many stars against a long segment.
    let long = format!("/{}", "a".repeat(20_000));
    assert!(!glob_path("/*a*a*a*a*a*a*b", &long));
    let deep = "/a".repeat(5_000);
    assert!(!glob_path("/**/a/**/a/**/b", &deep));
}

#[test]
fn redis_command_rules_parse_and_are_checked() {
    let redis = "resources:\n  - name: cache\n    protocol: redis\n    listen: 127.0.0.1:6380\n    upstream: cache:6379\n";
    let c = ok(&format!(
        "{redis}    allow:\n      - commands: [\"@Read\", ping, client]\n    deny:\n      - commands: [\"@dangerous\", KEYS]\n"
    ));
    assert_eq!(
        c.resources[0].db.commands,
        CommandRules {
            allow: Some(vec!["@read".into(), "PING".into(), "CLIENT".into()]),
            deny: vec!["@dangerous".into(), "KEYS".into()],
        }
    );
    for (yaml, want) in [
        (
            format!("{redis}    deny:\n      - commands: [\"@nosuch\"]\n"),
            "unknown category \"@nosuch\"",
        ),
        (
            format!("{redis}    allow:\n      - commands: [\"GET KEY\"]\n"),
            "\"GET KEY\" is not a command name",
        ),
        (
            format!("{redis}    allow:\n      - methods: [GET]\n"),
            "redis rules name commands",
        ),
        (
            format!("{redis}    allow:\n      - commands: []\n"),
            "an empty allow list would refuse every command",
        ),
        (
            format!("{HTTP}    deny:\n      - commands: [GET]\n"),
            "resources[0].deny: deny applies to protocol redis",
        ),
        (
            format!("{HTTP}    allow:\n      - commands: [GET]\n"),
            "commands applies to protocol redis",
        ),
    ] {
        let found = problems(&yaml);
        assert!(
            found.iter().any(|p| p.contains(want)),
            "{want}\nnot in {found:#?}"
        );
    }
}

#[test]
fn assume_role_and_profile_parse_with_defaults() {
    let sigv4 = "resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:8080\n    upstream: https://sts.amazonaws.com\n    auth:\n      type: aws_sigv4\n      service: sts\n      region: eu-west-1\n";
    let c = ok(&format!(
        "{sigv4}      profile: analytics\n      assume_role:\n        role_arn: arn:aws:iam::123456789012:role/reader\n        external_id: ext-123\n        duration: 15m\n"
    ));
    let Auth::AwsSigV4 { credentials, .. } = &c.resources[0].auth else {
        panic!("{:?}", c.resources[0].auth)
    };
    assert_eq!(credentials.profile.as_deref(), Some("analytics"));
    assert_eq!(
        credentials.assume_role,
        Some(AssumeRole {
            role_arn: "arn:aws:iam::123456789012:role/reader".into(),
            session_name: None,
            external_id: Some("ext-123".into()),
            duration: Duration::from_secs(900),
        })
    );
    let c = ok(&format!(
        "{sigv4}      assume_role:\n        role_arn: arn:aws-cn:iam::123456789012:role/path/reader\n"
    ));
    let Auth::AwsSigV4 { credentials, .. } = &c.resources[0].auth else {
        panic!()
    };
    assert_eq!(
        credentials.assume_role.as_ref().map(|r| r.duration),
        Some(Duration::from_secs(3600))
    );
    let rds = "resources:\n  - name: db\n    protocol: postgres\n    listen: 127.0.0.1:6432\n    upstream: db.example:5432\n    auth:\n      type: rds_iam\n      username: app\n      region: eu-west-1\n      assume_role:\n        role_arn: arn:aws:iam::1:role/db\n        session_name: kw-db\n";
    let c = ok(rds);
    let Auth::RdsIam { credentials, .. } = &c.resources[0].auth else {
        panic!()
    };
    assert_eq!(
        credentials
            .assume_role
            .as_ref()
            .and_then(|r| r.session_name.as_deref()),
        Some("kw-db")
    );
}

#[test]
fn assume_role_is_checked_offline_with_its_key_named() {
    let sigv4 = "resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:8080\n    upstream: https://sts.amazonaws.com\n    auth:\n      type: aws_sigv4\n      service: sts\n      region: eu-west-1\n";
    let role = |extra: &str| {
        format!("{sigv4}      assume_role:\n        role_arn: arn:aws:iam::1:role/r\n{extra}")
    };
    let cases = [
        (
            format!("{sigv4}      assume_role:\n        role_arn: arn:aws:iam::1:user/bob\n"),
            "k.yaml:11:19: resources[0].auth.assume_role.role_arn: \"arn:aws:iam::1:user/bob\" is not an IAM role ARN",
        ),
        (role("        session_name: a b\n"), "k.yaml:12:23: resources[0].auth.assume_role.session_name: \"a b\" is not a role session name"),
        (role("        external_id: x\n"), "resources[0].auth.assume_role.external_id: an external id is 2 to 1224"),
        (role("        duration: 13h\n"), "resources[0].auth.assume_role.duration: STS issues role sessions of at most 12h"),
        (role("        duration: soon\n"), "resources[0].auth.assume_role.duration: \"soon\" is not a duration"),
        (role("        role: x\n"), "resources[0].auth.assume_role.role: unknown key `role` (a typo?): expected one of role_arn, session_name, external_id, duration"),
        (format!("{sigv4}      assume_role:\n        session_name: s1\n"), "role_arn"),
        (format!("{sigv4}      profile: p\n      access_key_id: a\n      secret_access_key: b\n"), "resources[0].auth.profile: a profile picks credentials from the shared config files, but access_key_id is set"),
        (format!("{sigv4}      profile: \"\"\n"), "resources[0].auth.profile: must not be empty"),
        (
            "resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:8080\n    upstream: https://x\n    auth:\n      type: bearer\n      token: t\n      profile: p\n".to_owned(),
            "\"profile\" (line 9) does not apply to auth type \"bearer\"",
        ),
    ];
    expect_problems(&cases);
}

#[test]
fn oauth2_assertions_parse_and_are_checked() {
    let head = "resources:\n  - name: api\n    protocol: http\n    listen: 127.0.0.1:8080\n    upstream: https://api.example.com\n    auth:\n      type: oauth2\n";
    let c = ok(&format!(
        "{head}      token_url: https://login.example/token\n      grant: jwt_bearer\n      assertion:\n        key: \"-----BEGIN PRIVATE KEY-----\"\n        algorithm: ES256\n        issuer: svc@proj\n        subject: user@example.com\n        key_id: k1\n        lifetime: 30m\n      scopes: [read]\n"
    ));
    let Auth::OAuth2(o) = &c.resources[0].auth else {
        panic!()
    };
    assert!(o.jwt_bearer && !o.private_key_jwt);
    let a = o.assertion.as_ref().unwrap();
    assert_eq!(
        (
            a.algorithm.as_str(),
            a.issuer.as_deref(),
            a.subject.as_deref(),
            a.key_id.as_deref(),
            a.lifetime
        ),
        (
            "ES256",
            Some("svc@proj"),
            Some("user@example.com"),
            Some("k1"),
            Duration::from_secs(1800)
        )
    );
    let c = ok(&format!("{head}      google_service_account: ${{file:/run/sa.json}}\n      scopes: [https://www.googleapis.com/auth/cloud-platform]\n"));
    let Auth::OAuth2(o) = &c.resources[0].auth else {
        panic!()
    };
    assert!(o.jwt_bearer);
    assert_eq!(
        o.token_url.to_string(),
        "https://oauth2.googleapis.com/token"
    );
    let c = ok(&format!("{head}      token_url: https://login.example/token\n      client_id: app\n      client_auth: private_key_jwt\n      assertion:\n        key: k\n        algorithm: RS256\n"));
    let Auth::OAuth2(o) = &c.resources[0].auth else {
        panic!()
    };
    assert!(o.private_key_jwt && !o.jwt_bearer && !o.client_auth_basic);

    let cases = [
        (format!("{head}      token_url: https://t\n      grant: jwt_bearer\n"), "resources[0].auth.assertion: grant: jwt_bearer needs an assertion block"),
        (format!("{head}      token_url: https://t\n      client_id: c\n      grant: password\n"), "resources[0].auth.grant: \"password\" is not client_credentials or jwt_bearer"),
        (format!("{head}      token_url: https://t\n      grant: jwt_bearer\n      assertion:\n        key: k\n        algorithm: HS256\n        issuer: i\n"), "resources[0].auth.assertion.algorithm: \"HS256\" is not RS256 or ES256"),
        (format!("{head}      token_url: https://t\n      grant: jwt_bearer\n      assertion:\n        key: k\n        algorithm: RS256\n"), "resources[0].auth.assertion.issuer: grant: jwt_bearer needs assertion.issuer"),
        (format!("{head}      token_url: https://t\n      grant: jwt_bearer\n      assertion:\n        key: k\n        algorithm: RS256\n        issuer: i\n        lifetime: 2h\n"), "resources[0].auth.assertion.lifetime: an assertion lives at most 1h"),
        (format!("{head}      token_url: https://t\n      client_id: c\n      client_secret: s\n      client_auth: private_key_jwt\n      assertion:\n        key: k\n        algorithm: RS256\n"), "resources[0].auth.client_secret: client_auth: private_key_jwt authenticates with a signed assertion"),
        (format!("{head}      google_service_account: x\n      assertion:\n        issuer: me\n"), "resources[0].auth.assertion.issuer: the google_service_account file sets the issuer"),
        (format!("{head}      token_url: https://t\n      client_id: c\n      client_secret: s\n      assertion:\n        key: k\n        algorithm: RS256\n"), "resources[0].auth.assertion: an assertion is signed for grant: jwt_bearer or client_auth: private_key_jwt"),
        (format!("{head}      token_url: https://t\n      grant: jwt_bearer\n      assertion:\n        key: k\n        algorithm: RS256\n        issuer: i\n        kid: x\n"), "unknown key `kid`"),
    ];
    expect_problems(&cases);
}
