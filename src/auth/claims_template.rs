//! `ACCESS_TOKEN_CLAIMS_TEMPLATE`: claims of the app's own in every access token, from a
//! minijinja template that renders a JSON object (Hasura's `https://hasura.io/jwt/claims`,
//! PostGraphile's `role`, ...).
//!
//! The template sees `user` (`id`, `email`, `username`, `roles`, `emailVerified`), `session`
//! (`id`, `createdAt`, `authenticatedAt`, `expiresAt`: RFC 3339 text) and `amr` (RFC 8176
//! values). Every value is written as JSON (minijinja's JSON auto-escaping), so `{{ user.email
//! }}` becomes a quoted, escaped JSON string and no address or username can break out of its
//! string into claims of its own: a template writes `"email": {{ user.email }}`, never
//! `"email": "{{ user.email }}"`. An undefined variable is an error (strict undefined), and
//! rendering is bounded (fuel), so a template that loops cannot hold a request.
//!
//! The template is checked at start-up against sample users (no roles, several, an address
//! with quotes, unverified and verified): it must render a JSON object that sets none of the
//! registered claims authql owns (`iss sub aud exp nbf iat jti sid typ`, RFC 7519 § 4.1 and
//! `sid`, `typ`); otherwise the start stops with the line and the reason.

use std::path::Path;

use chrono::{DateTime, Utc};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, context};
use serde::Serialize;
use uuid::Uuid;

use crate::store::AuthMethods;

/// The claims no template may set: RFC 7519 § 4.1's registered claims, and authql's `sid` and
/// `typ`, on which refusing a revoked token rests.
pub const RESERVED_CLAIMS: [&str; 9] = [
    "iss", "sub", "aud", "exp", "nbf", "iat", "jti", "sid", "typ",
];

/// Longest rendered claims object, in bytes: the whole token must stay well inside the 8 KB
/// most proxies allow one header line (nginx's `large_client_header_buffers`).
pub const MAX_RENDERED_BYTES: usize = 3072;

/// Template operations one rendering may use (minijinja fuel): far more than a claims object
/// needs, far less than a loop that would hold a request.
const FUEL: u64 = 50_000;

const NAME: &str = "claims";

/// A checked claims template.
pub struct ClaimsTemplate {
    environment: Environment<'static>,
}

/// What the template is rendered with: the user, the session and how it was proven.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimsContext<'a> {
    pub user: TemplateUser<'a>,
    pub session: TemplateSession,
    pub amr: Vec<&'static str>,
}

/// `user` in the template.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateUser<'a> {
    pub id: Uuid,
    pub email: &'a str,
    pub username: &'a str,
    pub roles: &'a [String],
    pub email_verified: bool,
}

/// `session` in the template.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSession {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub authenticated_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl ClaimsTemplate {
    /// Reads and checks the template at `path`. Errors: the file cannot be read; the template
    /// does not parse (with its line); a sample does not render, renders no JSON object, or sets
    /// a reserved claim (with the line of the rendered text and the reason).
    pub fn load(path: &Path) -> Result<Self, String> {
        let source = std::fs::read_to_string(path)
            .map_err(|error| format!("{} cannot be read: {error}", path.display()))?;
        Self::new(source).map_err(|why| format!("{}: {why}", path.display()))
    }

    /// Checks `source` as [`Self::load`] does.
    pub fn new(source: String) -> Result<Self, String> {
        let mut environment = Environment::new();
        environment.set_undefined_behavior(UndefinedBehavior::Strict);
        environment.set_auto_escape_callback(|_| AutoEscape::Json);
        environment.set_fuel(Some(FUEL));
        environment
            .add_template_owned(NAME, source)
            .map_err(|error| describe(&error))?;
        let template = Self { environment };
        for sample in samples() {
            template.render(&sample.context())?;
        }
        Ok(template)
    }

    /// The claims for one access token: a JSON object without reserved claims, at most
    /// [`MAX_RENDERED_BYTES`]. Errors: why not (the template's line, or the rendered text's).
    pub fn render(
        &self,
        context: &ClaimsContext<'_>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let template = self
            .environment
            .get_template(NAME)
            .map_err(|error| describe(&error))?;
        let rendered = template
            .render(context! { user => &context.user, session => &context.session, amr => &context.amr })
            .map_err(|error| describe(&error))?;
        if rendered.len() > MAX_RENDERED_BYTES {
            return Err(format!(
                "it renders {} bytes; at most {MAX_RENDERED_BYTES} fit in a token",
                rendered.len()
            ));
        }
        let value: serde_json::Value = serde_json::from_str(&rendered).map_err(|error| {
            format!(
                "line {} of what it renders is not JSON: {error}",
                error.line()
            )
        })?;
        let serde_json::Value::Object(claims) = value else {
            return Err("it must render a JSON object".to_owned());
        };
        if let Some(reserved) = RESERVED_CLAIMS
            .iter()
            .find(|name| claims.contains_key(**name))
        {
            return Err(format!(
                "it sets the claim {reserved:?}, which authql sets itself (reserved: {})",
                RESERVED_CLAIMS.join(" ")
            ));
        }
        Ok(claims)
    }
}

/// A minijinja error as one line: the template line, the kind and the detail.
fn describe(error: &minijinja::Error) -> String {
    let reason = match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    };
    match error.line() {
        Some(line) => format!("line {line}: {reason}"),
        None => reason,
    }
}

/// A user the start-up check renders the template for.
struct Sample {
    email: &'static str,
    username: &'static str,
    roles: Vec<String>,
    email_verified: bool,
    amr: AuthMethods,
}

impl Sample {
    fn context(&self) -> ClaimsContext<'_> {
        let now = Utc::now();
        ClaimsContext {
            user: TemplateUser {
                id: Uuid::nil(),
                email: self.email,
                username: self.username,
                roles: &self.roles,
                email_verified: self.email_verified,
            },
            session: TemplateSession {
                id: Uuid::nil(),
                created_at: now,
                authenticated_at: now,
                expires_at: now,
            },
            amr: self.amr.iter().collect(),
        }
    }
}

/// Users unlike each other in every way a template could trip on: no roles and many, an
/// address and a username with quotes, backslashes and braces, both states of verification.
fn samples() -> Vec<Sample> {
    vec![
        Sample {
            email: "ada@example.com",
            username: "ada",
            roles: Vec::new(),
            email_verified: false,
            amr: AuthMethods::of(["pwd"]),
        },
        Sample {
            email: "\"quoted\\\\}{\"@example.com",
            username: "o'brien\"}",
            roles: ["admin", "editor", "user"].map(str::to_owned).to_vec(),
            email_verified: true,
            amr: AuthMethods::of(["pwd", "otp", "mfa"]),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASURA: &str = r#"{
  "https://hasura.io/jwt/claims": {
    "x-hasura-user-id": {{ user.id }},
    "x-hasura-default-role": {{ "admin" if "admin" in user.roles else "user" }},
    "x-hasura-allowed-roles": {{ user.roles + ["user"] }}
  },
  "role": {{ "app_admin" if "admin" in user.roles else "app_user" }}
}"#;

    #[test]
    fn a_hasura_template_renders_its_namespace() {
        let template = ClaimsTemplate::new(HASURA.to_owned()).unwrap();
        let roles = vec!["admin".to_owned()];
        let sample = samples().remove(0);
        let mut context = sample.context();
        context.user.roles = &roles;
        let claims = template.render(&context).unwrap();
        assert_eq!(claims["role"], "app_admin");
        let hasura = &claims["https://hasura.io/jwt/claims"];
        assert_eq!(hasura["x-hasura-default-role"], "admin");
        assert_eq!(
            hasura["x-hasura-allowed-roles"],
            serde_json::json!(["admin", "user"])
        );
        assert_eq!(hasura["x-hasura-user-id"], Uuid::nil().to_string());
    }

    #[test]
    fn no_address_or_username_breaks_out_of_its_string() {
        let template =
            ClaimsTemplate::new(r#"{"e": {{ user.email }}, "u": {{ user.username }}}"#.into())
                .unwrap();
        for sample in samples() {
            let claims = template.render(&sample.context()).unwrap();
            assert_eq!(claims.len(), 2);
            assert_eq!(claims["e"], sample.email);
            assert_eq!(claims["u"], sample.username);
        }
    }

    #[test]
    fn bad_templates_stop_the_start_with_a_line() {
        for (source, line) in [
            ("{\n  \"a\": {% if %}\n}", Some("line 2")),
            ("{\n\"a\": {{ user.nickname }}\n}", Some("line 2")),
            ("{\"a\": 1,}", Some("line 1")),
            ("[1, 2]", None),
            ("{\"sub\": \"someone else\"}", None),
            ("{\"a\": {{ user.roles[0] }}}", None),
            ("{% for i in range(100000) %}{% endfor %}{}", None),
        ] {
            let why = ClaimsTemplate::new(source.to_owned())
                .err()
                .unwrap_or_else(|| panic!("{source:?} was accepted"));
            if let Some(line) = line {
                assert!(why.contains(line), "{source:?}: {why}");
            }
        }
    }
}
