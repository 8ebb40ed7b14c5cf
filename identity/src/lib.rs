//! How authql tells accounts apart. One normalisation, used when an account is registered, when
//! a login name is looked up, and in the unique columns (and by the migration that recomputes
//! them), so that two spellings of one identity can never be two accounts:
//!
//! - A **username** is prepared and enforced by the PRECIS `UsernameCaseMapped` profile
//!   (RFC 8265 § 3.2): full-width characters mapped to their usual width, lower-cased, NFC, and
//!   refused when it holds spaces, invisible or zero-width characters (U+200B, U+2060, ...),
//!   bidirectional controls (U+202E, ...) or other characters outside the `IdentifierClass`
//!   (RFC 8264 § 4.2), or when it breaks the Bidi Rule (RFC 5893).
//! - An **email**'s local part gets the same profile; its domain is compared in its IDNA ASCII
//!   form (UTS #46 processing with the STD3 rules, RFC 5891: letters, digits and hyphens), so
//!   `Bücher.example` and `xn--bcher-kva.example` are one domain.
//!
//! What the user typed stays the display form; only the key is normalised.

use precis_profiles::{
    UsernameCaseMapped, UsernameCasePreserved, precis_core::profile::PrecisFastInvocation,
};
use unicode_normalization::UnicodeNormalization;

/// Why an identifier cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityError {
    /// Not shaped like `local@domain`.
    MalformedEmail,
    /// The email's domain is not a valid (internationalised) domain name.
    InvalidDomain,
    /// Characters that RFC 8265 does not allow in an identifier: spaces, invisible, zero-width
    /// or bidirectional control characters, symbols outside ASCII, or nothing at all.
    DisallowedCharacters,
}

/// The key an email is unique and looked up by: `UsernameCaseMapped(local) @ ascii(domain)`.
/// Errors: [`IdentityError::MalformedEmail`], [`IdentityError::InvalidDomain`],
/// [`IdentityError::DisallowedCharacters`] (in the local part).
pub fn email_key(email: &str) -> Result<String, IdentityError> {
    let (local, domain) = email
        .trim()
        .rsplit_once('@')
        .ok_or(IdentityError::MalformedEmail)?;
    if local.is_empty() || domain.is_empty() {
        return Err(IdentityError::MalformedEmail);
    }
    let local =
        UsernameCaseMapped::enforce(local).map_err(|_| IdentityError::DisallowedCharacters)?;
    let domain = idna::domain_to_ascii_strict(domain).map_err(|_| IdentityError::InvalidDomain)?;
    if domain.is_empty() || domain.starts_with('.') || domain.ends_with('.') {
        return Err(IdentityError::InvalidDomain);
    }
    Ok(format!("{local}@{domain}"))
}

/// The spelling of `email` to store, show and mail to: its local part in NFC (the same text by
/// Unicode canonical equivalence, so `josé` typed as NFD is the `josé` its key names), when
/// the PRECIS `UsernameCasePreserved` profile (RFC 8265 § 3.3) changes nothing else in it, that
/// is when it differs from its key's local part by case alone. `None` for a local part holding
/// full-width or other compatibility characters: `ｖictim@` has the key of `victim@` but is
/// another mailbox, and `a．．b@` has a key (`a..b@`) that is not an address at all.
pub fn email_spelling(email: &str) -> Option<String> {
    let (local, domain) = email.trim().rsplit_once('@')?;
    let composed: String = local.nfc().collect();
    let form = UsernameCasePreserved::enforce(local).ok()?;
    (form == composed).then(|| format!("{composed}@{domain}"))
}

/// The key a username is unique and looked up by (RFC 8265 `UsernameCaseMapped`).
/// Errors: [`IdentityError::DisallowedCharacters`].
pub fn username_key(username: &str) -> Result<String, IdentityError> {
    UsernameCaseMapped::enforce(username.trim())
        .map(|key| key.into_owned())
        .map_err(|_| IdentityError::DisallowedCharacters)
}

/// The key to look a login name up by: an email's when it holds an `@`, or a character whose
/// compatibility form is one (a full-width `＠`, so `bob＠example.com` is `bob@example.com`),
/// else a username's. `None` for a name no account can have.
pub fn login_key(login: &str) -> Option<String> {
    if login.contains('@') {
        return email_key(login).ok();
    }
    let key = username_key(login).ok()?;
    if key.contains('@') {
        email_key(&key).ok()
    } else {
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_local_part_that_is_its_key_but_for_case_is_spelled() {
        for canonical in [
            "victim@example.org",
            "Victim@example.org",
            "zoë@bücher.example",
            "zoe\u{308}@bücher.example",
            "a.b+c@x.com",
        ] {
            assert!(email_spelling(canonical).is_some(), "{canonical}");
        }
        assert_eq!(
            email_spelling("Jose\u{301}@example.com").as_deref(),
            Some("Jos\u{e9}@example.com")
        );
        for folded in [
            "ｖictim@example.org",
            "victim＠gmail.com@attacker.example",
            "a．．b@example.com",
        ] {
            assert!(email_spelling(folded).is_none(), "{folded}");
        }
    }

    #[test]
    fn one_identity_has_one_key_whatever_its_spelling() {
        // NFC and NFD.
        assert_eq!(
            email_key("jos\u{e9}@example.com"),
            email_key("jose\u{301}@example.com")
        );
        assert_eq!(username_key("Jos\u{e9}"), username_key("jose\u{301}"));
        // Case, width, and the domain's Unicode and ASCII forms.
        assert_eq!(email_key("Ada@EXAMPLE.com").unwrap(), "ada@example.com");
        assert_eq!(username_key("ＡＤＡ").unwrap(), "ada");
        assert_eq!(
            email_key("ada@B\u{fc}cher.example").unwrap(),
            "ada@xn--bcher-kva.example"
        );
        assert_eq!(
            email_key("ada@xn--bcher-kva.example"),
            email_key("ada@bücher.EXAMPLE")
        );
    }

    #[test]
    fn invisible_and_control_characters_are_refused() {
        for name in [
            "admin\u{200b}",
            "\u{200b}\u{200b}\u{200b}",
            "ad\u{2060}min",
            "evil\u{202e}gnp",
            "zero\u{feff}width",
            "two words",
            "",
        ] {
            assert_eq!(
                username_key(name),
                Err(IdentityError::DisallowedCharacters),
                "{name:?}"
            );
        }
        assert_eq!(
            email_key("ad\u{200b}min@example.com"),
            Err(IdentityError::DisallowedCharacters)
        );
        assert_eq!(email_key("nobody"), Err(IdentityError::MalformedEmail));
        assert!(email_key("a@exa mple.com").is_err());
    }

    #[test]
    fn ordinary_names_pass_unchanged() {
        for name in ["ada", "ada_lovelace", "ada.l-1", "a+b"] {
            assert_eq!(username_key(name).unwrap(), name);
        }
        assert_eq!(login_key("ADA@example.com").unwrap(), "ada@example.com");
        assert_eq!(login_key("ADA").unwrap(), "ada");
        assert_eq!(login_key("ad\u{200b}a"), None);
    }

    #[test]
    fn a_compatibility_at_sign_is_an_at_sign() {
        assert_eq!(
            username_key("bob\u{ff20}example.com").unwrap(),
            "bob@example.com"
        );
        assert_eq!(
            login_key("Bob\u{ff20}Example.com").unwrap(),
            login_key("bob@example.com").unwrap()
        );
    }
}
