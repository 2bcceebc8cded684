//! The HTML pages of the authorization server — sign-in, patient picker, consent and error pages — shown during the
//! SMART App Launch authorization step (https://hl7.org/fhir/smart-app-launch/STU2.2/app-launch.html#obtain-authorization-code).
//! They need no JavaScript, escape every value they show and carry a strict Content-Security-Policy whose only
//! allowance is the page's own stylesheet, by hash.

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::auth::access::PSYCHOTHERAPY_SCOPE;
use crate::auth::scopes::{Scope, ScopeContext, parse_scope};

/// The one stylesheet of every page; the CSP allows it by its hash, so no other style can run.
const CSS: &str = "body{font-family:system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif;background:#f4f6f8;\
color:#1b1f24;margin:0;line-height:1.5}main{max-width:36rem;margin:2rem auto;background:#fff;padding:1.5rem 2rem;\
border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.15)}h1{font-size:1.5rem;margin-top:0}label{display:block;\
margin:.75rem 0 .25rem;font-weight:600}fieldset label,.choice label{display:inline;font-weight:400;margin:0 0 0 .4rem}\
input[type=text],input[type=password],input[type=search]{width:100%;box-sizing:border-box;padding:.5rem;\
font-size:1rem;border:1px solid #6b7280;border-radius:4px}fieldset{border:1px solid #c5cbd3;border-radius:4px;\
margin:1rem 0;padding:.5rem 1rem}.choice{margin:.5rem 0}button{margin-top:1rem;padding:.55rem 1.2rem;font-size:1rem;\
border-radius:4px;border:1px solid #1d4ed8;background:#1d4ed8;color:#fff;cursor:pointer}button.secondary{\
background:#fff;color:#1d4ed8}.error{color:#a40e26;background:#fde8eb;padding:.5rem .75rem;border-radius:4px}\
code{font-size:.85em;color:#4b5563}.muted{color:#4b5563;font-size:.9rem}:focus{outline:3px solid #f59e0b;\
outline-offset:2px}";

/// `'sha256-…'` of [`CSS`], for the `style-src` directive.
static CSS_HASH: LazyLock<String> = LazyLock::new(|| {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, CSS.as_bytes());
    format!("'sha256-{}'", STANDARD.encode(digest.as_ref()))
});

/// A patient offered by the picker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientChoice {
    pub id: String,
    pub name: String,
    pub birth_date: Option<String>,
}

/// What the authorization server wants the browser to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// A request that cannot be answered to the application (unknown client, unregistered redirect URI, wrong
    /// audience, expired form): the user is told, and nothing is sent anywhere.
    Error {
        status: u16,
        title: String,
        message: String,
    },
    Login {
        request: String,
        client: String,
        username: String,
        error: Option<String>,
    },
    Picker {
        request: String,
        client: String,
        filter: String,
        patients: Vec<PatientChoice>,
        /// More patients match than are listed.
        truncated: bool,
        error: Option<String>,
    },
    Consent {
        request: String,
        client: String,
        user: String,
        /// How the patient in context is shown, if there is one.
        patient: Option<String>,
        /// Scopes the user may grant, each offered as a ticked checkbox.
        scopes: Vec<String>,
        /// Requested scopes this application or user cannot have.
        unavailable: Vec<String>,
        /// Origin of the redirect URI: the consent form's answer redirects there, which `form-action` must allow.
        redirect_origin: String,
    },
}

/// A page ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub status: u16,
    pub html: String,
    pub content_security_policy: String,
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// The headers every page carries besides its CSP: never cached (they hold a one-time form), never framed
/// (clickjacking of the consent button), never sniffed, and no Referer leaking the request to other sites.
pub const PAGE_HEADERS: &[(&str, &str)] = &[
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
];

fn csp(form_action_extra: Option<&str>) -> String {
    let form_action = match form_action_extra {
        Some(origin) if !origin.is_empty() => format!("'self' {origin}"),
        _ => "'self'".to_owned(),
    };
    format!(
        "default-src 'none'; style-src {}; img-src 'none'; form-action {form_action}; frame-ancestors 'none'; \
         base-uri 'none'",
        *CSS_HASH
    )
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} – kap-gateway</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n<h1>{}</h1>\n{body}</main>\n\
         </body>\n</html>\n",
        html_escape(title),
        html_escape(title)
    )
}

fn hidden_request(request: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"request\" value=\"{}\">\n",
        html_escape(request)
    )
}

fn error_paragraph(error: Option<&String>) -> String {
    error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>\n", html_escape(e)))
        .unwrap_or_default()
}

/// Renders a page.
pub fn render(page: &Page) -> Rendered {
    match page {
        Page::Error {
            status,
            title,
            message,
        } => Rendered {
            status: *status,
            html: document(
                title,
                &format!(
                    "<p class=\"error\" role=\"alert\">{}</p>\n<p class=\"muted\">You can close this window and \
                     return to the application.</p>\n",
                    html_escape(message)
                ),
            ),
            content_security_policy: csp(None),
        },
        Page::Login {
            request,
            client,
            username,
            error,
        } => {
            let body = format!(
                "<p>Sign in to let <strong>{}</strong> use the clinic's records.</p>\n{}\
                 <form method=\"post\" action=\"/auth/login\">\n{}\
                 <label for=\"username\">Username</label>\n\
                 <input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" required \
                 value=\"{}\">\n\
                 <label for=\"password\">Password</label>\n\
                 <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" \
                 required>\n<button type=\"submit\">Sign in</button>\n</form>\n",
                html_escape(client),
                error_paragraph(error.as_ref()),
                hidden_request(request),
                html_escape(username),
            );
            Rendered {
                status: 200,
                html: document("Sign in", &body),
                content_security_policy: csp(None),
            }
        }
        Page::Picker {
            request,
            client,
            filter,
            patients,
            truncated,
            error,
        } => {
            let mut list = String::new();
            for (i, p) in patients.iter().enumerate() {
                let born = p
                    .birth_date
                    .as_deref()
                    .map(|b| format!(", born {}", html_escape(b)))
                    .unwrap_or_default();
                list.push_str(&format!(
                    "<div class=\"choice\"><input type=\"radio\" id=\"patient-{i}\" name=\"patient\" value=\"{}\" \
                     required><label for=\"patient-{i}\">{}{born} <code>id {}</code></label></div>\n",
                    html_escape(&p.id),
                    html_escape(&p.name),
                    html_escape(&p.id),
                ));
            }
            let choose = if patients.is_empty() {
                "<p>No patient matches.</p>\n".to_owned()
            } else {
                format!(
                    "<form method=\"post\" action=\"/auth/patient\">\n{}<fieldset>\n<legend>Patients</legend>\n\
                     {list}</fieldset>\n{}<button type=\"submit\">Continue</button>\n</form>\n",
                    hidden_request(request),
                    if *truncated {
                        "<p class=\"muted\">Only the first patients are listed; search by name to find others.</p>\n"
                    } else {
                        ""
                    },
                )
            };
            let body = format!(
                "<p>Choose the patient whose record <strong>{}</strong> may open.</p>\n{}\
                 <form method=\"post\" action=\"/auth/patient\">\n{}\
                 <label for=\"name\">Search by name</label>\n\
                 <input type=\"search\" id=\"name\" name=\"name\" value=\"{}\">\n\
                 <button type=\"submit\" class=\"secondary\">Search</button>\n</form>\n{choose}",
                html_escape(client),
                error_paragraph(error.as_ref()),
                hidden_request(request),
                html_escape(filter),
            );
            Rendered {
                status: 200,
                html: document("Choose a patient", &body),
                content_security_policy: csp(None),
            }
        }
        Page::Consent {
            request,
            client,
            user,
            patient,
            scopes,
            unavailable,
            redirect_origin,
        } => {
            let mut list = String::new();
            for (i, s) in scopes.iter().enumerate() {
                list.push_str(&format!(
                    "<div class=\"choice\"><input type=\"checkbox\" id=\"scope-{i}\" name=\"scope\" value=\"{}\" \
                     checked><label for=\"scope-{i}\">{} <code>{}</code></label></div>\n",
                    html_escape(s),
                    html_escape(&describe_scope(s)),
                    html_escape(s),
                ));
            }
            let patient_line = patient
                .as_deref()
                .map(|p| format!("<p>Patient: <strong>{}</strong></p>\n", html_escape(p)))
                .unwrap_or_default();
            let missing = if unavailable.is_empty() {
                String::new()
            } else {
                let items: Vec<String> = unavailable
                    .iter()
                    .map(|s| format!("<code>{}</code>", html_escape(s)))
                    .collect();
                format!(
                    "<p class=\"muted\">Also requested, but not available to this application or to you: {}</p>\n",
                    items.join(", ")
                )
            };
            let body = format!(
                "<p><strong>{}</strong> asks for access, on behalf of <strong>{}</strong>.</p>\n{patient_line}\
                 <form method=\"post\" action=\"/auth/consent\">\n{}<fieldset>\n\
                 <legend>Allow the application to</legend>\n{list}</fieldset>\n{missing}\
                 <p class=\"muted\">Untick what you do not want to share.</p>\n\
                 <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\n\
                 <button type=\"submit\" name=\"decision\" value=\"deny\" class=\"secondary\">Deny</button>\n\
                 </form>\n",
                html_escape(client),
                html_escape(user),
                hidden_request(request),
            );
            Rendered {
                status: 200,
                html: document("Allow access?", &body),
                content_security_policy: csp(Some(redirect_origin)),
            }
        }
    }
}

fn verbs(permissions: &str) -> String {
    let names: Vec<&str> = permissions
        .chars()
        .filter_map(|c| match c {
            'c' => Some("create"),
            'r' => Some("read"),
            'u' => Some("update"),
            'd' => Some("delete"),
            's' => Some("search"),
            _ => None,
        })
        .collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// A plain-language description of a scope, for the consent page.
pub fn describe_scope(scope: &str) -> String {
    match parse_scope(scope) {
        Ok(Scope::Resource(r)) => {
            let what = match &r.resource_type {
                Some(t) => format!("{t} records"),
                None => "all records".to_owned(),
            };
            let whose = match r.context {
                ScopeContext::Patient => "of the selected patient",
                ScopeContext::User => "that you can access",
                ScopeContext::System => "of the whole clinic",
            };
            let filter = if r.query.is_empty() {
                String::new()
            } else {
                " (only some categories)".to_owned()
            };
            let mut text = format!("{} {what} {whose}{filter}", verbs(&r.permissions));
            if let Some(first) = text.get(..1) {
                text = format!(
                    "{}{}",
                    first.to_uppercase(),
                    text.get(1..).unwrap_or_default()
                );
            }
            text
        }
        _ => match scope {
            "openid" => "Confirm who you are".to_owned(),
            "fhirUser" => "Know your user record (practitioner or patient)".to_owned(),
            "launch" => "Open the patient and encounter chosen in the EHR".to_owned(),
            "launch/patient" => "Know which patient is selected".to_owned(),
            "launch/encounter" => "Know which encounter is selected".to_owned(),
            "offline_access" => {
                "Keep access after you sign out, until the access is revoked".to_owned()
            }
            "online_access" => "Keep access while you are using the application".to_owned(),
            s if s == PSYCHOTHERAPY_SCOPE => "Read psychotherapy notes".to_owned(),
            other => format!("Use the permission {other}"),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_special_character_is_escaped() {
        assert_eq!(
            html_escape(r#"<a href="x">O'Brien & co</a>"#),
            "&lt;a href=&quot;x&quot;&gt;O&#39;Brien &amp; co&lt;/a&gt;"
        );
    }

    #[test]
    fn values_from_the_request_cannot_inject_markup() {
        let page = Page::Login {
            request: "\"><script>alert(1)</script>".into(),
            client: "<b>Evil</b>".into(),
            username: "\" autofocus onfocus=\"x".into(),
            error: None,
        };
        let html = render(&page).html;
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<b>Evil"));
        assert!(!html.contains("\" autofocus"));
    }

    #[test]
    fn the_policy_allows_only_the_inline_stylesheet_and_the_redirect_origin() {
        let page = Page::Consent {
            request: "r".into(),
            client: "c".into(),
            user: "u".into(),
            patient: None,
            scopes: vec!["patient/*.rs".into()],
            unavailable: vec![],
            redirect_origin: "https://app.example.org".into(),
        };
        let r = render(&page);
        assert!(r.content_security_policy.contains("default-src 'none'"));
        assert!(r.content_security_policy.contains(&*CSS_HASH));
        assert!(
            r.content_security_policy
                .contains("form-action 'self' https://app.example.org")
        );
        assert!(r.content_security_policy.contains("frame-ancestors 'none'"));
        assert!(r.html.contains("<main>") && r.html.contains("<label for=\"scope-0\">"));
    }

    #[test]
    fn scopes_are_described_in_plain_words() {
        assert_eq!(
            describe_scope("patient/Observation.rs"),
            "Read and search Observation records of the selected patient"
        );
        assert_eq!(
            describe_scope("user/*.cruds"),
            "Create, read, update, delete and search all records that you can access"
        );
        assert_eq!(
            describe_scope(PSYCHOTHERAPY_SCOPE),
            "Read psychotherapy notes"
        );
    }
}
