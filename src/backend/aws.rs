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

/// Where and how the pipeline's calls authenticate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    pub role_arn: Option<String>,
}

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
/// models or endpoints (`ResourceNotFoundException`, Comprehend's
/// `ResourceUnavailableException`) `Denied`, the rest bad input. A `Retry-After` header is
/// kept (seconds or an HTTP-date). The backends refine what only they can tell (SageMaker's
/// `ModelError`, a missing endpoint or model answered as a validation error).
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
        usage: None,
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
                | "ServiceUnavailableException"
                | "InternalFailure"
                | "InternalDependencyException"
                | "InternalServerException" => ErrorKind::Transient,
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "ResourceNotFoundException"
                | "ResourceUnavailableException" => ErrorKind::Denied,
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
                .and_then(|v| retry_after(v, std::time::SystemTime::now()));
            BackendError {
                retry_after,
                ..err(kind, message)
            }
        }
        other => err(ErrorKind::Transient, format!("{other:?}")),
    }
}

/// A `Retry-After` header's wait from `now`: delay-seconds or an HTTP-date (RFC 9110
/// §10.2.3; IMF-fixdate and the two obsolete forms, parsed by `httpdate`). A date already
/// past is no wait; a value that is neither form is ignored (`None`).
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// The kind of a model container's (SageMaker `ModelError`) or a model's (Bedrock
/// `ModelErrorException`) failure, from the status it answered with (`OriginalStatusCode`):
/// overloaded or restarting (502, 503, 504 and the other 5xx but 500 and 501) is transient,
/// 429 throttling, 408 or no status at all (0: the container did not answer in time) a
/// timeout; 4xx, 500 and 501 are the input's fault (a row it cannot parse), and so is an
/// answer without a status, where `unknown` decides.
pub fn model_error_kind(original_status: Option<i32>, unknown: ErrorKind) -> ErrorKind {
    match original_status {
        None => unknown,
        Some(0) | Some(408) => ErrorKind::Timeout,
        Some(429) => ErrorKind::Throttled,
        Some(500) | Some(501) => ErrorKind::BadInput,
        Some(s) if s >= 500 => ErrorKind::Transient,
        Some(_) => ErrorKind::BadInput,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        // 1994-11-06T08:49:37Z, RFC 9110's example date.
        let at = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let now = at - Duration::from_secs(10);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                retry_after(form, now),
                Some(Duration::from_secs(10)),
                "{form}"
            );
        }
        // A date already past: go now.
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at + Duration::from_secs(5)),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-3", now), None);
        assert_eq!(retry_after("1.5", now), None);
    }

    #[test]
    fn model_errors_by_original_status() {
        use ErrorKind::*;
        for (status, kind) in [
            (Some(400), BadInput),
            (Some(422), BadInput),
            (Some(500), BadInput),
            (Some(502), Transient),
            (Some(503), Transient),
            (Some(504), Transient),
            (Some(429), Throttled),
            (Some(408), Timeout),
            (Some(0), Timeout),
            (None, Transient),
        ] {
            assert_eq!(model_error_kind(status, Transient), kind, "{status:?}");
        }
        assert_eq!(model_error_kind(None, BadInput), BadInput);
    }
}
