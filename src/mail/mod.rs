//! Mail: what authql writes (`templates`), how it is sent (`transport`: SMTP through lettre, or
//! `.eml` files in `MAIL_DIR` for development), and the sender that empties the outbox
//! (`sender`). A mail is composed in the request that causes it and stored in the outbox in the
//! same transaction as its token; the sender delivers it afterwards, retrying until its link
//! expires, so a mutation never waits for SMTP and no mail is lost to an SMTP outage.

pub mod sender;
pub mod templates;
pub mod transport;

use chrono::{DateTime, TimeDelta, Utc};
use lettre::{
    Address, Message,
    message::{Mailbox, MultiPart},
};
use uuid::Uuid;

pub use sender::OutboxSender;
pub use templates::{TemplateContext, Templates};
pub use transport::{SendFailure, Transport};

use crate::store::NewMail;

/// The kinds of mail authql sends: the `kind` label of `authql_mails_total`, and the names of
/// their templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailKind {
    /// A link to set a new password (`requestPasswordReset`, `admin send-password-reset`).
    PasswordReset,
    /// A link that proves the account's address (`register`, `sendVerificationEmail`, a login
    /// refused with EMAIL_NOT_VERIFIED).
    EmailVerification,
    /// A link, sent to a new address, that makes it the account's (`requestEmailChange`).
    EmailChange,
    /// To the old address: a change was asked for (no link).
    EmailChangeNotice,
    /// To an account's address: someone tried to register with it (`EMAIL_VERIFICATION=
    /// required`; no link).
    RegistrationAttempt,
}

impl MailKind {
    /// Every kind.
    pub const ALL: [Self; 5] = [
        Self::PasswordReset,
        Self::EmailVerification,
        Self::EmailChange,
        Self::EmailChangeNotice,
        Self::RegistrationAttempt,
    ];

    /// Its name: the template files' stem and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::EmailVerification => "email_verification",
            Self::EmailChange => "email_change",
            Self::EmailChangeNotice => "email_change_notice",
            Self::RegistrationAttempt => "registration_attempt",
        }
    }

    /// The kind of a stored name; unknown names (a newer release's) count as `other`.
    pub fn label(name: &str) -> &'static str {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .map_or("other", Self::as_str)
    }

    /// Whether its mail carries a link with a token.
    pub fn carries_link(self) -> bool {
        matches!(
            self,
            Self::PasswordReset | Self::EmailVerification | Self::EmailChange
        )
    }
}

/// Where a link points: authql's own page, or the app's (`PASSWORD_RESET_URL`,
/// `EMAIL_VERIFICATION_URL`), with the token put where `{token}` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkTemplate {
    template: String,
}

impl LinkTemplate {
    /// The placeholder a link template holds exactly once, as `token={token}`.
    pub const PLACEHOLDER: &'static str = "{token}";

    /// A template given by an operator: an absolute `http(s)` URL holding `token={token}` once,
    /// in its query or its fragment (where every frontend looks for it). Errors name `setting`.
    pub fn parse(setting: &str, template: &str) -> Result<Self, String> {
        let template = template.trim();
        let parsed = url::Url::parse(&template.replace(Self::PLACEHOLDER, "TOKEN"))
            .map_err(|_| format!("{setting} is not an absolute URL: {template:?}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{setting} must be an http or https URL"));
        }
        if template.matches(Self::PLACEHOLDER).count() != 1
            || !template.contains("token={token}")
            || !(parsed.query().is_some_and(|q| q.contains("token=TOKEN"))
                || parsed.fragment().is_some_and(|f| f.contains("token=TOKEN")))
        {
            return Err(format!(
                "{setting} must hold token={{token}} once, in its query or fragment (e.g. https://app.example.com/reset#token={{token}})"
            ));
        }
        Ok(Self {
            template: template.to_owned(),
        })
    }

    /// authql's own page at `path` under `public_url`, the token in the fragment (never sent
    /// to a server, so it stays out of access logs and `Referer`).
    pub fn own_page(public_url: &str, path: &str) -> Self {
        Self {
            template: format!("{}{path}#token={{token}}", public_url.trim_end_matches('/')),
        }
    }

    /// The link for `token` (base64url, so it needs no escaping).
    pub fn link(&self, token: &str) -> String {
        self.template.replace(Self::PLACEHOLDER, token)
    }
}

/// Why a mail could not be composed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComposeError {
    /// The address cannot be written in an SMTP envelope (a local part SMTP cannot carry).
    Undeliverable,
    /// A template failed on these values; the message is for the log (it names no value).
    Template(String),
}

/// Composes authql's mails: the sender's address, `APP_NAME`, the templates.
pub struct Mailer {
    from: Mailbox,
    app_name: String,
    templates: Templates,
}

/// One mail to compose.
#[derive(Debug, Clone)]
pub struct Letter<'a> {
    pub kind: MailKind,
    /// The address it goes to, as the account shows it.
    pub to: &'a str,
    pub username: &'a str,
    /// The link, for the kinds that carry one.
    pub link: Option<String>,
    /// The new address (`EmailChangeNotice`).
    pub new_email: Option<&'a str>,
    /// Sent until then (its link's expiry).
    pub expires_at: DateTime<Utc>,
}

impl Mailer {
    /// Errors: `MAIL_FROM` that is not `Name <address>` or `address`.
    pub fn new(from: &str, app_name: &str, templates: Templates) -> Result<Self, String> {
        let from: Mailbox = from.trim().parse().map_err(|_| {
            format!("MAIL_FROM is not an address like \"App <noreply@example.com>\": {from:?}")
        })?;
        let from = Mailbox::new(
            from.name,
            smtp_address(from.email.as_ref())
                .ok_or_else(|| "MAIL_FROM's address cannot be used in SMTP".to_owned())?,
        );
        Ok(Self {
            from,
            app_name: app_name.trim().to_owned(),
            templates,
        })
    }

    /// The whole RFC 5322 message (multipart/alternative: plain text, then HTML) and its
    /// envelope, ready for the outbox. Errors: [`ComposeError`].
    pub fn compose(&self, letter: Letter<'_>, now: DateTime<Utc>) -> Result<NewMail, ComposeError> {
        let to = smtp_address(letter.to).ok_or(ComposeError::Undeliverable)?;
        let valid_for = letter
            .kind
            .carries_link()
            .then(|| duration_in_words(letter.expires_at - now));
        let context = TemplateContext {
            app_name: self.app_name.clone(),
            username: letter.username.to_owned(),
            email: letter.to.to_owned(),
            link: letter.link,
            new_email: letter.new_email.map(str::to_owned),
            valid_for,
        };
        let rendered = self
            .templates
            .render(letter.kind, &context)
            .map_err(ComposeError::Template)?;
        // RFC 5322 § 3.6.4: a unique id, under the sender's domain (not this host's name).
        let message_id = format!("<{}@{}>", Uuid::new_v4().simple(), self.from.email.domain());
        let message = Message::builder()
            .message_id(Some(message_id))
            .from(self.from.clone())
            .to(Mailbox::new(None, to.clone()))
            .subject(rendered.subject)
            .date(now.into())
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))
            .map_err(|error| ComposeError::Template(error.to_string()))?;
        Ok(NewMail {
            id: Uuid::new_v4(),
            kind: letter.kind.as_str().to_owned(),
            envelope_from: self.from.email.to_string(),
            envelope_to: to.to_string(),
            // lettre encodes the parts and the subject: the message is ASCII, but for an address
            // with a non-ASCII local part, which stays UTF-8 (RFC 6532; sent with SMTPUTF8).
            message: String::from_utf8_lossy(&message.formatted()).into_owned(),
            created_at: now,
            expires_at: letter.expires_at,
        })
    }
}

/// `address` as SMTP carries it: its domain in IDNA ASCII form (punycode, RFC 5891), its local
/// part as typed. `None` unless the local part is a plain [`is_dot_string`] and lettre can
/// carry the whole: what is counted, stored and shown is then exactly where the mail goes.
pub fn smtp_address(address: &str) -> Option<Address> {
    let (local, domain) = address.trim().rsplit_once('@')?;
    if !is_dot_string(local) {
        return None;
    }
    let domain = idna::domain_to_ascii(domain).ok()?;
    Address::new(local, domain).ok()
}

/// Whether `local` is a Dot-string (RFC 5321 § 4.1.2; UTF-8 allowed, RFC 6531 § 3.3) of at
/// most 64 octets (RFC 5321 § 4.5.3.1.1): atoms of letters, digits and
/// ``!#$%&'*+-/=?^_`{|}~`` joined by single dots. Refused besides: a quoted string
/// (`"a>b"@`, `"x@evil.com"@`), which headers and envelopes read differently, and the start of
/// an RFC 2047 encoded-word (`=?`), which may not appear in an address (RFC 2047 § 5) and which
/// parsers that decode it would deliver to another mailbox (`=?utf-8?q?victim?=@` to
/// `victim@`).
pub fn is_dot_string(local: &str) -> bool {
    let atext = |c: char| {
        c.is_ascii_alphanumeric()
            || "!#$%&'*+-/=?^_`{|}~".contains(c)
            || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
    };
    !local.is_empty()
        && local.len() <= 64
        && !local.contains("=?")
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

/// "1 hour", "90 minutes", "24 hours", "2 days": how long a link works, for the mail.
pub fn duration_in_words(duration: TimeDelta) -> String {
    let minutes = (duration.num_seconds() + 59) / 60;
    let plural = |count: i64, unit: &str| {
        if count == 1 {
            format!("1 {unit}")
        } else {
            format!("{count} {unit}s")
        }
    };
    if minutes < 120 && minutes % 60 != 0 {
        plural(minutes.max(1), "minute")
    } else if minutes < 48 * 60 || minutes % (24 * 60) != 0 {
        plural((minutes + 59) / 60, "hour")
    } else {
        plural(minutes / (24 * 60), "day")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_carry_the_token_where_the_template_says() {
        let own = LinkTemplate::own_page("http://localhost:8000/", "/reset-password");
        assert_eq!(
            own.link("abc_-"),
            "http://localhost:8000/reset-password#token=abc_-"
        );
        let app = LinkTemplate::parse(
            "PASSWORD_RESET_URL",
            "https://app.example.com/reset?token={token}&x=1",
        )
        .unwrap();
        assert_eq!(app.link("t"), "https://app.example.com/reset?token=t&x=1");
        for bad in [
            "https://app.example.com/reset",
            "https://app.example.com/reset/{token}",
            "https://app.example.com/reset?t={token}",
            "https://app.example.com/reset?token={token}#token={token}",
            "javascript:alert(1)//?token={token}",
            "/reset?token={token}",
        ] {
            assert!(LinkTemplate::parse("X", bad).is_err(), "{bad}");
        }
        assert!(LinkTemplate::parse("X", "http://localhost:5173/#/reset?token={token}").is_ok());
    }

    #[test]
    fn an_internationalised_domain_is_sent_as_punycode() {
        assert_eq!(
            smtp_address("Jörg@Bücher.example").unwrap().to_string(),
            "Jörg@xn--bcher-kva.example"
        );
        assert!(smtp_address("no-at-sign").is_none());
    }

    #[test]
    fn lifetimes_in_words() {
        assert_eq!(duration_in_words(TimeDelta::seconds(3600)), "1 hour");
        assert_eq!(duration_in_words(TimeDelta::seconds(86400)), "24 hours");
        assert_eq!(duration_in_words(TimeDelta::seconds(1800)), "30 minutes");
        assert_eq!(duration_in_words(TimeDelta::seconds(5400)), "90 minutes");
        assert_eq!(duration_in_words(TimeDelta::seconds(7 * 86400)), "7 days");
        assert_eq!(duration_in_words(TimeDelta::seconds(3599)), "1 hour");
    }

    #[test]
    fn only_plain_addresses_are_carried() {
        for plain in [
            "a@example.com",
            "first.last+tag@example.com",
            "o'brien@example.com",
            "zoë@bücher.example",
            "a=b?c@example.com",
        ] {
            assert!(smtp_address(plain).is_some(), "{plain}");
        }
        for odd in [
            "=?utf-8?q?victim?=@example.com",
            "=?utf-8?b?dmljdGlt?=@example.com",
            "\"a>b\"@example.com",
            "\"x@evil.com\"@example.com",
            "a@b@example.com",
            "x@evil.com>,<victim@example.com",
            "<b>@example.com",
            "a@x.com,b@y.com",
            ".a@example.com",
            "a..b@example.com",
            "a.@example.com",
            "a b@example.com",
            "@example.com",
        ] {
            assert!(smtp_address(odd).is_none(), "{odd}");
        }
        assert!(smtp_address(&format!("{}@example.com", "a".repeat(64))).is_some());
        assert!(smtp_address(&format!("{}@example.com", "a".repeat(65))).is_none());
    }

    #[test]
    fn a_composed_mail_is_ascii_with_both_parts_and_no_injected_header() {
        let mailer = Mailer::new(
            "Shop <noreply@shop.example>",
            "Shop",
            Templates::load(None).unwrap(),
        )
        .unwrap();
        let now = Utc::now();
        let mail = mailer
            .compose(
                Letter {
                    kind: MailKind::PasswordReset,
                    to: "zoe@bücher.example",
                    username: "Zoë\r\nBcc: victim@example.com",
                    link: Some("https://shop.example/reset#token=abc".into()),
                    new_email: None,
                    expires_at: now + TimeDelta::hours(1),
                },
                now,
            )
            .unwrap();
        assert!(mail.message.is_ascii());
        assert_eq!(mail.envelope_to, "zoe@xn--bcher-kva.example");
        assert_eq!(mail.envelope_from, "noreply@shop.example");
        assert!(mail.message.contains("multipart/alternative"));
        assert!(mail.message.contains("text/plain"));
        assert!(mail.message.contains("text/html"));
        let headers = mail.message.split("\r\n\r\n").next().unwrap();
        // No header line of its own (a Message-ID or boundary may hold the letters "bcc": one
        // in a few hundred did, which is how this check came to read lines).
        assert!(
            !headers
                .split("\r\n")
                .any(|line| line.to_ascii_lowercase().starts_with("bcc")),
            "{headers}"
        );
        assert!(
            headers.contains("To: zoe@xn--bcher-kva.example"),
            "{headers}"
        );

        // A non-ASCII local part stays UTF-8 (RFC 6532), in the envelope and the To header.
        let mail = mailer
            .compose(
                Letter {
                    kind: MailKind::EmailVerification,
                    to: "zoë@example.com",
                    username: "zoë",
                    link: Some("https://shop.example/verify#token=abc".into()),
                    new_email: None,
                    expires_at: now + TimeDelta::hours(1),
                },
                now,
            )
            .unwrap();
        assert_eq!(mail.envelope_to, "zoë@example.com");
        assert!(mail.message.contains("To: zoë@example.com"));
    }
}
