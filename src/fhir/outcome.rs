//! OperationOutcome: the FHIR way to report problems (https://hl7.org/fhir/R4/operationoutcome.html).

use serde_json::{Value, json};

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// One issue: severity, `issue.code` (https://hl7.org/fhir/R4/valueset-issue-type.html), a message and optionally
/// the FHIRPath of the element concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    pub code: &'static str,
    pub diagnostics: String,
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: &'static str, diagnostics: impl Into<String>) -> Issue {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Issue {
        self.expression = Some(expression.into());
        self
    }

    pub fn with_severity(mut self, severity: Severity) -> Issue {
        self.severity = severity;
        self
    }

    pub fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity.as_str(),
            "code": self.code,
            "diagnostics": self.diagnostics,
        });
        if let (Some(expr), Some(obj)) = (&self.expression, issue.as_object_mut()) {
            obj.insert("expression".into(), json!([expr]));
        }
        issue
    }
}

/// Builds an OperationOutcome resource from issues.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}

/// An informational OperationOutcome (e.g. for `Prefer: return=OperationOutcome` on success).
pub fn information(message: impl Into<String>) -> Value {
    operation_outcome(
        &[Issue::error("informational", message).with_severity(Severity::Information)],
    )
}
