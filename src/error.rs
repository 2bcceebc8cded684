//! The one error type of the gateway and its table: each kind → HTTP status → OperationOutcome `issue.code`.
//! 4xx carry precise issues with the FHIRPath of the offending element; 5xx say only that something failed and log
//! the cause chain (https://hl7.org/fhir/R4/http.html#Status-Codes).

use crate::fhir::outcome::{Issue, operation_outcome};
use serde_json::Value;

/// What went wrong, in the categories that decide the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    NotAcceptable,
    Conflict,
    Gone,
    PreconditionFailed,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unprocessable,
    TooManyRequests,
    NotImplemented,
    Unavailable,
    Internal,
}

/// The table: kind → (HTTP status, default `issue.code`).
pub fn status_and_code(kind: ErrorKind) -> (u16, &'static str) {
    match kind {
        ErrorKind::BadRequest => (400, "invalid"),
        ErrorKind::Unauthorized => (401, "login"),
        ErrorKind::Forbidden => (403, "forbidden"),
        ErrorKind::NotFound => (404, "not-found"),
        ErrorKind::MethodNotAllowed => (405, "not-supported"),
        ErrorKind::NotAcceptable => (406, "not-supported"),
        ErrorKind::Conflict => (409, "conflict"),
        ErrorKind::Gone => (410, "deleted"),
        ErrorKind::PreconditionFailed => (412, "conflict"),
        ErrorKind::PayloadTooLarge => (413, "too-costly"),
        ErrorKind::UnsupportedMediaType => (415, "not-supported"),
        ErrorKind::Unprocessable => (422, "processing"),
        ErrorKind::TooManyRequests => (429, "throttled"),
        ErrorKind::NotImplemented => (501, "not-supported"),
        ErrorKind::Unavailable => (503, "transient"),
        ErrorKind::Internal => (500, "exception"),
    }
}

/// An error on its way to becoming an OperationOutcome response.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?}: {}", summary(.issues))]
pub struct Error {
    pub kind: ErrorKind,
    pub issues: Vec<Issue>,
    /// Value for `WWW-Authenticate` on 401/403.
    pub www_authenticate: Option<String>,
    /// The internal cause, logged but never sent.
    #[source]
    pub source: Option<anyhow::Error>,
}

fn summary(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| i.diagnostics.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with one issue carrying the table's default code.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        let (_, code) = status_and_code(kind);
        Error {
            kind,
            issues: vec![Issue::error(code, message)],
            www_authenticate: None,
            source: None,
        }
    }

    pub fn with_issues(kind: ErrorKind, issues: Vec<Issue>) -> Error {
        Error {
            kind,
            issues,
            www_authenticate: None,
            source: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::BadRequest, message)
    }

    /// 400 about one element.
    pub fn invalid_at(
        code: &'static str,
        message: impl Into<String>,
        expression: impl Into<String>,
    ) -> Error {
        Error::with_issues(
            ErrorKind::BadRequest,
            vec![Issue::error(code, message).at(expression)],
        )
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }

    pub fn gone(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Gone, message)
    }

    pub fn precondition_failed(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::PreconditionFailed, message)
    }

    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Conflict, message)
    }

    pub fn unprocessable(issues: Vec<Issue>) -> Error {
        Error::with_issues(ErrorKind::Unprocessable, issues)
    }

    pub fn not_supported(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotImplemented, message)
    }

    /// 500: the cause is kept for the log; the client learns only that the server failed.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Error {
        Error {
            kind: ErrorKind::Internal,
            issues: vec![Issue::error(
                "exception",
                "The server failed to process the request; see its log",
            )],
            www_authenticate: None,
            source: Some(cause.into()),
        }
    }

    pub fn status(&self) -> u16 {
        status_and_code(self.kind).0
    }

    pub fn outcome(&self) -> Value {
        operation_outcome(&self.issues)
    }

    /// Prefixes every issue's expression-less message with where it happened (e.g. a Bundle entry).
    pub fn in_context(mut self, context: &str) -> Error {
        for issue in &mut self.issues {
            issue.diagnostics = format!("{context}: {}", issue.diagnostics);
        }
        self
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Error {
        match &err {
            sqlx::Error::PoolTimedOut => {
                let mut e = Error::new(ErrorKind::Unavailable, "The database is busy; retry later");
                e.source = Some(err.into());
                e
            }
            _ => Error::internal(err),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Error {
        Error::internal(err)
    }
}
