//! The mails' words: minijinja templates, a plain-text and an HTML one per kind of mail, embedded
//! from `assets/mail/` and overridable file by file from `MAIL_TEMPLATES_DIR`.
//!
//! `<kind>.txt` has two blocks, `subject` and `body`; `<kind>.html` is the HTML part (it may
//! extend `layout.html`). `.html` templates escape every value (minijinja's auto-escaping by
//! file extension), so a username or address can never become markup; the subject is folded
//! onto one line and the message is built by lettre, so no value can become a header.

use std::{collections::BTreeMap, path::Path};

use minijinja::Environment;
use serde::Serialize;

use super::MailKind;

/// The files a template directory may hold, and the defaults embedded for each.
const DEFAULTS: [(&str, &str); 11] = [
    ("layout.html", include_str!("../../assets/mail/layout.html")),
    (
        "password_reset.txt",
        include_str!("../../assets/mail/password_reset.txt"),
    ),
    (
        "password_reset.html",
        include_str!("../../assets/mail/password_reset.html"),
    ),
    (
        "email_verification.txt",
        include_str!("../../assets/mail/email_verification.txt"),
    ),
    (
        "email_verification.html",
        include_str!("../../assets/mail/email_verification.html"),
    ),
    (
        "email_change.txt",
        include_str!("../../assets/mail/email_change.txt"),
    ),
    (
        "email_change.html",
        include_str!("../../assets/mail/email_change.html"),
    ),
    (
        "email_change_notice.txt",
        include_str!("../../assets/mail/email_change_notice.txt"),
    ),
    (
        "email_change_notice.html",
        include_str!("../../assets/mail/email_change_notice.html"),
    ),
    (
        "registration_attempt.txt",
        include_str!("../../assets/mail/registration_attempt.txt"),
    ),
    (
        "registration_attempt.html",
        include_str!("../../assets/mail/registration_attempt.html"),
    ),
];

/// What a template can use.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateContext {
    /// `APP_NAME`.
    pub app_name: String,
    /// The account's username.
    pub username: String,
    /// The address the mail goes to.
    pub email: String,
    /// The link to follow, for the kinds that carry one.
    pub link: Option<String>,
    /// The address being changed to (`email_change_notice`).
    pub new_email: Option<String>,
    /// How long the link works, in words ("1 hour", "24 hours").
    pub valid_for: Option<String>,
}

/// A rendered mail: its subject (one line) and its two bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The compiled templates.
pub struct Templates {
    environment: Environment<'static>,
}

impl Templates {
    /// The embedded templates, each replaced by the file of the same name in `directory` when
    /// there is one. Every template is compiled and rendered once with sample values, so that a
    /// broken override stops the start rather than a mail. Errors name the file and the fault.
    pub fn load(directory: Option<&Path>) -> Result<Self, String> {
        let mut sources = BTreeMap::new();
        for (name, source) in DEFAULTS {
            sources.insert(name, source.to_owned());
        }
        if let Some(directory) = directory {
            if !directory.is_dir() {
                return Err(format!(
                    "MAIL_TEMPLATES_DIR {} is not a directory",
                    directory.display()
                ));
            }
            for (name, _) in DEFAULTS {
                let path = directory.join(name);
                if path.exists() {
                    let source = std::fs::read_to_string(&path)
                        .map_err(|error| format!("{} cannot be read: {error}", path.display()))?;
                    sources.insert(name, source);
                }
            }
        }
        let mut environment = Environment::new();
        environment.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        for (name, source) in sources {
            environment
                .add_template_owned(name, source)
                .map_err(|error| format!("the mail template {name} does not compile: {error}"))?;
        }
        let templates = Self { environment };
        for kind in MailKind::ALL {
            templates
                .render(kind, &TemplateContext::sample(kind))
                .map_err(|error| format!("the mail templates of {}: {error}", kind.as_str()))?;
        }
        Ok(templates)
    }

    /// Renders the subject and both bodies of `kind`. Errors: a template that fails on these
    /// values (minijinja's message).
    pub fn render(&self, kind: MailKind, context: &TemplateContext) -> Result<Rendered, String> {
        let text = self
            .environment
            .get_template(&format!("{}.txt", kind.as_str()))
            .map_err(|error| error.to_string())?;
        let mut captured = text
            .render_captured(context)
            .map_err(|error| error.to_string())?;
        let (subject, body) = captured
            .with_state_mut(|state| {
                Ok::<_, minijinja::Error>((
                    state.render_block("subject")?,
                    state.render_block("body")?,
                ))
            })
            .map_err(|error| error.to_string())?;
        let html = self
            .environment
            .get_template(&format!("{}.html", kind.as_str()))
            .and_then(|template| template.render(context))
            .map_err(|error| error.to_string())?;
        Ok(Rendered {
            subject: one_line(&subject),
            text: body.trim_start().to_owned(),
            html,
        })
    }
}

/// `text` on one line: every run of whitespace or control characters (a line break among them)
/// becomes one space, so that nothing in a subject can start another header.
fn one_line(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl TemplateContext {
    /// Values to try a template with at start-up.
    fn sample(kind: MailKind) -> Self {
        Self {
            app_name: "authql".into(),
            username: "sample-username".into(),
            email: "alice@example.com".into(),
            link: kind
                .carries_link()
                .then(|| "https://example.com/?token=t".into()),
            new_email: (kind == MailKind::EmailChangeNotice).then(|| "new@example.com".into()),
            valid_for: kind.carries_link().then(|| "1 hour".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(email: &str) -> TemplateContext {
        TemplateContext {
            app_name: "Shop <b>".into(),
            username: "someone".into(),
            email: email.into(),
            link: Some("https://app.example/reset?a=1&token=abc".into()),
            new_email: None,
            valid_for: Some("1 hour".into()),
        }
    }

    #[test]
    fn every_default_template_renders() {
        let templates = Templates::load(None).unwrap();
        for kind in MailKind::ALL {
            let rendered = templates
                .render(kind, &TemplateContext::sample(kind))
                .unwrap();
            assert!(!rendered.subject.is_empty(), "{kind:?}");
            // Whoever registers an address chooses the username: the defaults never show it.
            assert!(!rendered.text.contains("sample-username"), "{kind:?}");
            assert!(!rendered.html.contains("sample-username"), "{kind:?}");
            if kind.carries_link() {
                assert!(rendered.text.contains("https://example.com/?token=t"));
                // Escaped as HTML escapes an attribute (`/` as `&#x2f;`), which a browser
                // reads back as the link.
                assert!(rendered.html.contains("example.com&#x2f;?token=t"));
            }
        }
    }

    #[test]
    fn values_are_escaped_in_html_and_cannot_break_the_subject() {
        let templates = Templates::load(None).unwrap();
        let rendered = templates
            .render(
                MailKind::EmailVerification,
                &context("<script>alert(1)</script>"),
            )
            .unwrap();
        assert!(!rendered.html.contains("<script>"));
        assert!(rendered.html.contains("&lt;script&gt;"));
        assert!(!rendered.html.contains("Shop <b>"));
        // The link's & is escaped inside the attribute, as HTML wants it.
        assert!(rendered.html.contains("a=1&amp;token=abc"));
        // The plain-text part is not HTML: it shows the value as it is.
        assert!(rendered.text.contains("<script>alert(1)</script>"));
        let folded = one_line("Reset\r\nBcc: victim@example.com\n\tnow");
        assert_eq!(folded, "Reset Bcc: victim@example.com now");
    }

    #[test]
    fn an_override_replaces_one_file_and_a_broken_one_stops_the_start() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(
            directory.path().join("password_reset.txt"),
            "{% block subject %}Custom {{ app_name }}{% endblock %}{% block body %}Go: {{ link }}{% endblock %}",
        )
        .unwrap();
        let templates = Templates::load(Some(directory.path())).unwrap();
        let rendered = templates
            .render(MailKind::PasswordReset, &context("bob"))
            .unwrap();
        assert_eq!(rendered.subject, "Custom Shop <b>");
        assert_eq!(rendered.text, "Go: https://app.example/reset?a=1&token=abc");
        // The HTML part is still the embedded one.
        assert!(rendered.html.contains("Choose a new password"));

        std::fs::write(directory.path().join("email_verification.html"), "{% if %}").unwrap();
        assert!(Templates::load(Some(directory.path())).is_err());
        std::fs::write(
            directory.path().join("email_verification.html"),
            "{{ no_such_value }}",
        )
        .unwrap();
        assert!(Templates::load(Some(directory.path())).is_err());
    }
}
