//! `keyward tunnel`: one resource from flags alone (like `cloud-sql-proxy INSTANCE` or
//! `ghostunnel client`), for quick use and containers. The flags become a one-resource config
//! file (kept for the life of the process), which `run` serves like any other: the same
//! validation, defaults, logs, drain and hot reload of the certificate files it names.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The flags of `keyward tunnel`.
#[derive(Debug, clap::Args)]
pub struct Tunnel {
    /// Where the app connects: HOST:PORT (loopback unless --allow-remote) or unix:/PATH.
    #[arg(long)]
    pub listen: String,
    /// The upstream, HOST:PORT (`https://...` for protocol http).
    #[arg(long)]
    pub upstream: String,
    /// tcp (the default: a TLS tunnel), http, postgres, mysql or redis (no credentials are
    /// injected; use a config file for those).
    #[arg(long, default_value = "tcp")]
    pub protocol: String,
    /// The name in logs and metrics.
    #[arg(long, default_value = "tunnel")]
    pub name: String,
    /// Upstream TLS mode: verify-full (default), verify-ca, insecure or disable.
    #[arg(long)]
    pub mode: Option<String>,
    /// CA bundle (PEM) that verifies the upstream, instead of the system roots.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS; needs --client-key.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS; needs --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// The name to verify and send as SNI (default: the upstream's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Listen on a non-loopback address.
    #[arg(long)]
    pub allow_remote: bool,
}

/// The generated config file, removed when dropped.
#[derive(Debug)]
pub struct TunnelConfig {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TunnelConfig {
    /// The config file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Tunnel {
    /// The one-resource YAML these flags mean (values quoted as JSON strings, which YAML reads
    /// as they are; relative paths made absolute from the current directory).
    pub fn yaml(&self) -> std::io::Result<String> {
        let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        let path = |p: &Path| -> std::io::Result<String> {
            Ok(q(&std::path::absolute(p)?.display().to_string()))
        };
        let mut y = format!(
            "admin: null\nresources:\n  - name: {}\n    protocol: {}\n    listen: {}\n    upstream: {}\n",
            q(&self.name),
            q(&self.protocol),
            q(&self.listen),
            q(&self.upstream)
        );
        if self.allow_remote {
            y.push_str("    allow_remote: true\n");
        }
        let mut tls = String::new();
        if let Some(mode) = &self.mode {
            tls.push_str(&format!("      mode: {}\n", q(mode)));
        }
        if let Some(ca) = &self.ca {
            tls.push_str(&format!("      ca: {}\n", path(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls.push_str(&format!(
                "      client_cert: {}\n      client_key: {}\n",
                path(cert)?,
                path(key)?
            ));
        }
        if let Some(name) = &self.server_name {
            tls.push_str(&format!("      server_name: {}\n", q(name)));
        }
        if !tls.is_empty() {
            y.push_str("    tls:\n");
            y.push_str(&tls);
        }
        Ok(y)
    }

    /// Writes the config to a private temporary directory.
    pub fn config(&self) -> std::io::Result<TunnelConfig> {
        let dir = tempfile::Builder::new()
            .prefix("keyward-tunnel")
            .tempdir()?;
        let path = dir.path().join("tunnel-flags.yaml");
        let mut f = std::fs::File::create(&path)?;
        f.write_all(self.yaml()?.as_bytes())?;
        Ok(TunnelConfig { _dir: dir, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        tunnel: Tunnel,
    }

    fn parse(args: &[&str]) -> Result<Tunnel, clap::Error> {
        Cli::try_parse_from(std::iter::once("tunnel").chain(args.iter().copied())).map(|c| c.tunnel)
    }

    #[test]
    fn flags_become_a_valid_one_resource_config() {
        let t = parse(&[
            "--listen",
            "127.0.0.1:6432",
            "--upstream",
            "db.internal:5432",
            "--ca",
            "ca.pem",
            "--client-cert",
            "c.pem",
            "--client-key",
            "c.key",
            "--server-name",
            "db",
        ])
        .unwrap();
        let yaml = t.yaml().unwrap();
        let config = crate::config::parse_partial(&yaml, Path::new("tunnel.yaml"))
            .unwrap()
            .0;
        let r = &config.resources[0];
        assert_eq!(r.name.as_str(), "tunnel");
        let cwd = std::env::current_dir().unwrap();
        assert!(
            yaml.contains(&format!("ca: \"{}\"", cwd.join("ca.pem").display())),
            "{yaml}"
        );
        assert!(yaml.contains("server_name: \"db\""), "{yaml}");
        assert!(config.admin.is_none());
    }

    #[test]
    fn a_client_cert_needs_its_key() {
        let e = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "h:1",
            "--client-cert",
            "c",
        ])
        .err()
        .unwrap();
        assert!(e.to_string().contains("--client-key"), "{e}");
    }
}
