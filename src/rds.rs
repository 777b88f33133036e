//! AWS RDS IAM authentication: the database password is an auth token, a SigV4-presigned
//! `Action=connect&DBUser=USER` URL for `host:port` (service `rds-db`, 15 minutes), made fresh
//! for each upstream connection with the `aws-sigv4` crate, exactly as botocore's
//! `generate_db_auth_token` makes it.

use std::time::{Duration, SystemTime};

use crate::config::{AwsCredentials, BuildError, BuildProblem, Site, Upstream};
use crate::http::sigv4::Signer;

use crate::secret::{Env, Secret};

/// Lifetime of an RDS auth token.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// A resource's RDS token maker.
#[derive(Debug)]
pub struct RdsIam {
    username: String,
    endpoint: String,
    signer: Signer,
}

impl RdsIam {
    /// Resolves the AWS credentials (config, environment, shared file).
    pub fn build(
        resource: &str,
        username: &str,
        region: &str,
        upstream: &Upstream,
        credentials: &AwsCredentials,
        env: &dyn Env,
        site: &Site,
    ) -> Result<Self, Vec<BuildProblem>> {
        let source =
            crate::aws::Source::build(resource, region, credentials, env).map_err(|reason| {
                let site = credentials.access_key_id.as_ref().map_or(site, |s| &s.site);
                let error = BuildError::AwsCredentials {
                    auth: "rds_iam",
                    reason,
                };
                vec![BuildProblem::new(site, error)]
            })?;
        Ok(Self {
            username: username.to_owned(),
            endpoint: format!("{}:{}", upstream.host, upstream.port),
            signer: Signer::new("rds-db", region, std::sync::Arc::new(source), false, 0),
        })
    }

    /// The database user the token is for.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// A token signed now with the current credentials (fetched first when none are valid).
    pub async fn token(&self) -> Result<Secret, crate::error::ConnError> {
        let credentials = self.signer.credentials.credentials().await?;
        self.token_at(&credentials, SystemTime::now())
            .map_err(|message| {
                crate::error::ConnError::new(
                    crate::error::Side::Internal,
                    crate::error::Reason::Signing,
                    message,
                )
            })
    }

    /// A token signed at `time` with `credentials`.
    pub fn token_at(
        &self,
        credentials: &aws_credential_types::Credentials,
        time: SystemTime,
    ) -> Result<Secret, String> {
        let user = crate::http::sigv4::uri_encode(&self.username);
        let url = format!("https://{}/?Action=connect&DBUser={user}", self.endpoint);
        let signed = self
            .signer
            .presign(credentials, &url, TOKEN_LIFETIME, time)
            .map_err(|e| format!("cannot sign the RDS auth token: {e}"))?;
        Ok(Secret::new(signed.trim_start_matches("https://")))
    }
}
