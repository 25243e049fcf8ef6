//! What the three AWS backends share: the SDK configuration (region, endpoint, profile, role
//! to assume, a rustls/ring HTTPS client, SDK retries off, an attempt timeout) and the one
//! place where an SDK error becomes an [`ErrorKind`].

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::Response;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use super::{BackendError, ErrorKind};
use crate::config::pipeline::AwsSettings;

/// The SDK configuration for one pipeline. Retries are ours (decided by error kind), so the
/// SDK's are off; the attempt timeout is the pipeline's per-call timeout (the SDK has no read
/// timeout of its own).
pub async fn sdk_config(aws: &AwsSettings, timeout: Duration) -> aws_config::SdkConfig {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .build(),
        );
    if let Some(r) = &aws.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(u) = &aws.endpoint_url {
        loader = loader.endpoint_url(u);
    }
    if let Some(p) = &aws.profile {
        loader = loader.profile_name(p);
    }
    let base = loader.load().await;
    match &aws.role_arn {
        None => base,
        Some(arn) => {
            // Session credentials from STS, refreshed before they expire, with the pipeline's
            // own credentials (profile or default chain) as the base.
            let provider = aws_config::sts::AssumeRoleProvider::builder(arn)
                .session_name("cdc-enricher")
                .configure(&base)
                .build()
                .await;
            base.into_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                )
                .build()
        }
    }
}

/// Classifies an SDK error once, by what it is: throttling codes and 429 are `Throttled`,
/// timeouts `Timeout`, transport failures and 5xx `Transient`, refused credentials and missing
/// models or endpoints `Denied`, the rest bad input.
pub fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(
    backend: &'static str,
    operation: &str,
    e: &SdkError<E, Response>,
) -> BackendError {
    let err = |kind, message: String| BackendError {
        backend,
        operation: operation.to_string(),
        kind,
        message,
        retry_after: None,
    };
    match e {
        SdkError::TimeoutError(_) => err(ErrorKind::Timeout, "the call timed out".into()),
        SdkError::DispatchFailure(d) => {
            if d.is_timeout() {
                err(ErrorKind::Timeout, "connecting timed out".into())
            } else {
                err(
                    ErrorKind::Transient,
                    format!("cannot reach the endpoint: {d:?}"),
                )
            }
        }
        SdkError::ResponseError(_) => {
            err(ErrorKind::Transient, "the answer could not be read".into())
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or("");
            let message = format!("{code}: {}", s.err().message().unwrap_or(""));
            let kind = match code {
                "ThrottlingException"
                | "TooManyRequestsException"
                | "ThrottledException"
                | "RequestLimitExceeded"
                | "ProvisionedThroughputExceededException"
                | "ServiceQuotaExceededException" => ErrorKind::Throttled,
                "ModelTimeoutException" => ErrorKind::Timeout,
                "ModelNotReadyException"
                | "ServiceUnavailable"
                | "InternalFailure"
                | "InternalDependencyException"
                | "InternalServerException" => ErrorKind::Transient,
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "ResourceNotFoundException" => ErrorKind::Denied,
                _ => match status {
                    429 => ErrorKind::Throttled,
                    408 => ErrorKind::Timeout,
                    401 | 403 | 404 => ErrorKind::Denied,
                    s if s >= 500 => ErrorKind::Transient,
                    _ => ErrorKind::BadInput,
                },
            };
            let retry_after = s
                .raw()
                .headers()
                .get("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            BackendError {
                retry_after,
                ..err(kind, message)
            }
        }
        other => err(ErrorKind::Transient, format!("{other:?}")),
    }
}
