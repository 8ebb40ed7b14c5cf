//! The rules for what a user may type, applied before anything is hashed or stored.

use std::{collections::HashSet, sync::LazyLock};

use authql_identity::{IdentityError, email_key, username_key};

use crate::error::AppError;

/// Shipped with authql; see the file for where it comes from.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("common_passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
});

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_BYTES: usize = 256;
const EMAIL_MAX_CHARS: usize = 254;
/// Longest login name looked at, in bytes: an email address has at most 320 octets (RFC 3696
/// § 3, 64 before the `@` and 255 after), a username far fewer. Longer is refused before it is
/// normalised, rate-limited or looked up.
pub const LOGIN_MAX_BYTES: usize = 320;
const USERNAME_MIN_CHARS: usize = 3;
const USERNAME_MAX_CHARS: usize = 64;

/// An email as typed (trimmed, for display) and in the form that is unique and looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub display: String,
    pub normalized: String,
}

/// An email address as a user typed it into `field`: trimmed, at most 254 characters, no
/// whitespace, control or invisible characters, a domain IDNA accepts (RFC 5891), and a local
/// part that mail reaches exactly as written (a Dot-string: `crate::mail::is_dot_string`) and
/// that is its key's but for case (`authql_identity::email_spelling`, which also puts it in
/// NFC: `display` is that spelling).
/// Errors: BAD_USER_INPUT with `field`.
pub fn email(field: &'static str, raw: &str) -> Result<Email, AppError> {
    let display = raw.trim();
    let invalid = || AppError::bad_input(field, "enter an email address like name@example.com");
    if display.chars().count() > EMAIL_MAX_CHARS {
        return Err(AppError::bad_input(
            field,
            "an email address has at most 254 characters",
        ));
    }
    let (local, domain) = display.rsplit_once('@').ok_or_else(invalid)?;
    let well_formed = !local.is_empty()
        && !domain.is_empty()
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !display
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c));
    if !well_formed {
        return Err(invalid());
    }
    let normalized = email_key(display).map_err(|error| match error {
        IdentityError::InvalidDomain => {
            AppError::bad_input(field, "the part after @ is not a valid domain name")
        }
        IdentityError::DisallowedCharacters => AppError::bad_input(
            field,
            "the part before @ holds characters an address cannot use (spaces, invisible or control characters)",
        ),
        IdentityError::MalformedEmail => invalid(),
    })?;
    // Only what mail can reach exactly, at the mailbox its key names: no quoted local parts,
    // no encoded-words (`mail::is_dot_string`), no full-width or compatibility characters
    // (`authql_identity::email_spelling`).
    let refused = || {
        AppError::bad_input(
            field,
            "enter an email address like name@example.com: letters, digits and . _ + - ' before the @, no quotes, no full-width characters",
        )
    };
    let display = authql_identity::email_spelling(display).ok_or_else(refused)?;
    if crate::mail::smtp_address(&display).is_none() {
        return Err(refused());
    }
    Ok(Email {
        display,
        normalized,
    })
}

/// Characters that show as nothing: Unicode's whole `Default_Ignorable_Code_Point` property
/// (DerivedCoreProperties.txt, Unicode 15.1): zero-width spaces and joiners, direction marks
/// and controls, word joiners and invisible operators, the byte-order mark, the soft hyphen,
/// the combining grapheme joiner, variation selectors, Mongolian free variation selectors and
/// vowel separator, Hangul fillers, Khmer inherent vowels, shorthand format controls, musical
/// symbol formatting and tags. IDNA drops them from a domain (UTS #46 maps them to nothing),
/// so a shown address could carry them unseen; they are refused anywhere in an email.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{034f}'
            | '\u{061c}'
            | '\u{115f}'..='\u{1160}'
            | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff0}'..='\u{fff8}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
    )
}

/// A username (trimmed) and its key (RFC 8265 `UsernameCaseMapped`, see `authql_identity`). Its
/// key may contain `@` only when it is the account's own email, so that a login name never
/// matches one user's email and another's username. The rule is checked on the key, after
/// normalisation: a full-width `＠` is an `@` there.
pub fn username(
    field: &'static str,
    raw: &str,
    email: &Email,
) -> Result<(String, String), AppError> {
    let display = raw.trim();
    let not_an_email = || {
        AppError::bad_input(
            field,
            "a username has no spaces and no @ (unless it is your email)",
        )
    };
    if display.contains('@') {
        return match email_key(display) {
            Ok(key) if key == email.normalized => Ok((display.to_owned(), key)),
            _ => Err(not_an_email()),
        };
    }
    if display.chars().count() > USERNAME_MAX_CHARS * 4 {
        return Err(AppError::bad_input(
            field,
            "a username has 3 to 64 characters",
        ));
    }
    let normalized = username_key(display).map_err(|_| {
        AppError::bad_input(
            field,
            "a username has letters, digits and ASCII symbols only: no spaces, no invisible, zero-width or direction-control characters",
        )
    })?;
    if normalized.contains('@') {
        return match email_key(&normalized) {
            Ok(key) if key == email.normalized => Ok((display.to_owned(), key)),
            _ => Err(not_an_email()),
        };
    }
    let length = normalized.chars().count();
    if !(USERNAME_MIN_CHARS..=USERNAME_MAX_CHARS).contains(&length) {
        return Err(AppError::bad_input(
            field,
            "a username has 3 to 64 characters",
        ));
    }
    Ok((display.to_owned(), normalized))
}

/// The policy for a new password, applied to the form it is hashed in (RFC 8265 OpaqueString,
/// see `auth::password`): 8 characters to 256 bytes, no control characters (NUL included) or
/// unassigned code points, not among the most common passwords.
pub fn password(field: &'static str, password: &str) -> Result<(), AppError> {
    if password.len() > PASSWORD_MAX_BYTES {
        return Err(AppError::bad_input(
            field,
            "a password has at most 256 bytes",
        ));
    }
    let Some(prepared) = crate::auth::password::prepare(password) else {
        return Err(AppError::bad_input(
            field,
            "a password cannot contain control characters (NUL included) or unassigned characters",
        ));
    };
    if prepared.chars().count() < PASSWORD_MIN_CHARS {
        return Err(AppError::bad_input(
            field,
            "a password has at least 8 characters",
        ));
    }
    // Spaces of any width are one space once prepared: eight of them are no password.
    if prepared.trim().is_empty() {
        return Err(AppError::bad_input(
            field,
            "a password cannot be only spaces",
        ));
    }
    if COMMON_PASSWORDS.contains(prepared.to_lowercase().as_str()) {
        return Err(AppError::bad_input(
            field,
            "this password is among the most common ones; choose another",
        ));
    }
    Ok(())
}

/// The key a login name is looked up by (an email's or a username's, see `authql_identity`).
/// A name no account can have gets a key that matches none, so that it costs the same bcrypt
/// work as a wrong password. Errors: BAD_USER_INPUT for a name longer than `LOGIN_MAX_BYTES`.
pub fn login_key(field: &'static str, raw: &str) -> Result<String, AppError> {
    if raw.len() > LOGIN_MAX_BYTES {
        return Err(AppError::bad_input(
            field,
            "an email or username has at most 320 bytes",
        ));
    }
    // U+FFFD is outside every key (RFC 8264 IdentifierClass disallows symbols).
    Ok(authql_identity::login_key(raw).unwrap_or_else(|| format!("\u{fffd}{}", raw.trim())))
}

/// Longest role name, in bytes.
pub const ROLE_MAX_BYTES: usize = 64;

/// A role name, as given (case matters: `admin` and `Admin` are two roles): 1 to 64 ASCII
/// letters, digits and `_ - . : /`, starting with a letter or digit. Nothing else, so that a
/// role reads the same in a JWT claim, in a comma-separated `X-Auth-Roles` header (RFC 9110
/// § 5.6.1 lists) and in a Hasura or PostgreSQL role name. Errors: BAD_USER_INPUT.
pub fn role(field: &'static str, raw: &str) -> Result<String, AppError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/');
    let starts_well = raw
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if raw.len() > ROLE_MAX_BYTES || !starts_well || !raw.chars().all(allowed) {
        return Err(AppError::bad_input(
            field,
            "a role has 1 to 64 ASCII letters, digits and _ - . : /, starting with a letter or digit",
        ));
    }
    Ok(raw.to_owned())
}

/// A name a user gives to something of theirs (a passkey), as it is kept and shown: one line,
/// its control characters (line breaks, tabs, escapes) and bidirectional formatting characters
/// (Unicode TR 9: embeddings, overrides, isolates, marks, which can make a name read as
/// another) turned into spaces.
pub fn single_line(raw: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    raw.chars()
        .map(|c| if c.is_control() || bidi(c) { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_compared_case_insensitively() {
        let parsed = email("email", "  Bob@X.com ").unwrap();
        assert_eq!(parsed.display, "Bob@X.com");
        assert_eq!(parsed.normalized, "bob@x.com");
        for bad in [
            "",
            "bob",
            "@x.com",
            "bob@",
            "bo b@x.com",
            "bob@.com",
            "bo\u{200b}b@x.com",
            "bob@e\u{200b}x.com",
            "bob@ex.com\u{feff}",
        ] {
            assert!(email("email", bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn usernames_may_hold_an_at_sign_only_as_the_own_email() {
        let own = email("email", "bob@x.com").unwrap();
        assert!(username("username", "BOB@x.com", &own).is_ok());
        assert!(username("username", "alice@x.com", &own).is_err());
        assert_eq!(
            username("username", " Bobby ", &own).unwrap(),
            ("Bobby".to_owned(), "bobby".to_owned())
        );
        assert!(username("username", "bo", &own).is_err());
        assert!(username("username", "admin\u{200b}", &own).is_err());
        assert!(username("username", "\u{200b}\u{200b}\u{200b}", &own).is_err());
        assert_eq!(
            username("username", "Jose\u{301}", &own).unwrap().1,
            "jos\u{e9}"
        );
        // A full-width @ is an @: someone else's address is refused, one's own is the email.
        assert!(username("username", "alice\u{ff20}x.com", &own).is_err());
        assert!(username("username", "\u{ff41}lice\u{ff20}x.com", &own).is_err());
        assert_eq!(
            username("username", "bob\u{ff20}x.com", &own).unwrap().1,
            "bob@x.com"
        );
    }

    #[test]
    fn login_names_are_bounded_before_anything_else() {
        assert!(login_key("emailOrUsername", &"a".repeat(321)).is_err());
        assert_eq!(login_key("emailOrUsername", "ADA").unwrap(), "ada");
        assert_eq!(
            login_key("emailOrUsername", "ada\u{ff20}example.com").unwrap(),
            "ada@example.com"
        );
    }

    #[test]
    fn password_length_is_8_characters_to_256_bytes() {
        assert!(password("password", "1234567").is_err());
        assert!(password("password", "1234567x").is_ok());
        assert!(password("password", &"x".repeat(256)).is_ok());
        assert!(password("password", &"x".repeat(257)).is_err());
        assert!(password("password", "12345678\0").is_err());
        assert!(
            password("password", "1234567\u{7}x").is_err(),
            "control characters"
        );
        assert!(password("password", "        ").is_err(), "only spaces");
        assert!(
            password("password", &"\u{3000}".repeat(8)).is_err(),
            "only spaces"
        );
        // Counted in the form that is hashed: seven characters and a combining accent are seven.
        assert!(password("password", "abcdefe\u{301}").is_err());
        assert!(
            password("password", "Password123").is_err(),
            "common, in any case"
        );
        assert!(password("password", "correct horse battery staple").is_ok());
    }
}
