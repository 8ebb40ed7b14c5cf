//! How a mail leaves: over SMTP (lettre, rustls), or, when no `SMTP_URL` is set (development),
//! as an `.eml` file in `MAIL_DIR`.
//!
//! `SMTP_URL` is `smtp://[user:pass@]host[:port]` (STARTTLS whenever the server offers it;
//! `?tls=required` refuses a server that does not, `?tls=none` never asks: a relay on the same
//! host), or `smtps://[user:pass@]host[:port]` (TLS from the first byte, RFC 8314). The port
//! defaults to 587 and 465. `SMTP_TLS_CA_FILE` adds a PEM file of certificates to the trusted
//! roots (a private CA, or a self-signed server in a test).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
    address::Envelope,
    transport::smtp::{
        authentication::Credentials,
        client::{Certificate, Tls, TlsParameters},
    },
};

use super::smtp_address;
use crate::store::OutboxMail;

/// Longest an SMTP command may wait for the server's answer.
const SMTP_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a whole delivery may take, connection and TLS included.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where mails go.
pub enum Transport {
    /// An SMTP server (`SMTP_URL`).
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `.eml` files in a directory (`MAIL_DIR`), when no SMTP server is set.
    Directory(PathBuf),
}

/// Why a mail was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// The server refused it for good (a 5xx answer, an address it cannot take): not retried.
    Permanent(String),
    /// Worth another try later: the server away, slow, or answering 4xx.
    Transient(String),
}

/// Where a delivered mail went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Accepted by the SMTP server.
    Smtp,
    /// Written to this file.
    File(PathBuf),
}

impl Transport {
    /// The transport `SMTP_URL` names, or the directory when it is unset (created, owner-only,
    /// if missing). Errors say which setting is wrong, never repeating the URL (it may hold a
    /// password).
    pub fn from_settings(
        smtp_url: Option<&str>,
        ca_file: Option<&Path>,
        mail_dir: &Path,
    ) -> Result<Self, String> {
        match smtp_url.map(str::trim).filter(|url| !url.is_empty()) {
            Some(url) => smtp(url, ca_file).map(Self::Smtp),
            None => {
                if ca_file.is_some() {
                    return Err("SMTP_TLS_CA_FILE is set but SMTP_URL is not".into());
                }
                create_private_dir(mail_dir).map_err(|error| {
                    format!("MAIL_DIR {} cannot be created: {error}", mail_dir.display())
                })?;
                Ok(Self::Directory(mail_dir.to_owned()))
            }
        }
    }

    /// Delivers `mail` once, within [`DELIVERY_TIMEOUT`].
    pub async fn send(&self, mail: &OutboxMail) -> Result<Delivered, SendFailure> {
        match tokio::time::timeout(DELIVERY_TIMEOUT, self.send_unbounded(mail)).await {
            Ok(sent) => sent,
            Err(_) => Err(SendFailure::Transient("the delivery timed out".into())),
        }
    }

    async fn send_unbounded(&self, mail: &OutboxMail) -> Result<Delivered, SendFailure> {
        match self {
            Self::Smtp(smtp) => {
                let envelope = Envelope::new(
                    smtp_address(&mail.envelope_from),
                    smtp_address(&mail.envelope_to).into_iter().collect(),
                )
                .map_err(|_| SendFailure::Permanent("the envelope has no recipient".into()))?;
                smtp.send_raw(&envelope, mail.message.as_bytes())
                    .await
                    .map(|_| Delivered::Smtp)
                    .map_err(|error| {
                        let why = match error.status() {
                            Some(code) => format!("the SMTP server answered {code}"),
                            None => error.to_string(),
                        };
                        // A 5xx, or a mail lettre will never be able to send (an address the
                        // server cannot take without SMTPUTF8): given up. The rest is tried again.
                        if error.is_permanent() || (error.is_client() && error.status().is_none()) {
                            SendFailure::Permanent(why)
                        } else {
                            SendFailure::Transient(why)
                        }
                    })
            }
            Self::Directory(directory) => write_eml(directory, mail)
                .await
                .map(Delivered::File)
                .map_err(|error| SendFailure::Transient(error.to_string())),
        }
    }
}

/// The SMTP transport of a URL. Errors: an unknown scheme or `tls` value, a CA file that cannot
/// be read or holds no certificate.
fn smtp(url: &str, ca_file: Option<&Path>) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let refuse = |why: &str| format!("SMTP_URL: {why}");
    let parsed = url::Url::parse(url).map_err(|_| {
        refuse("not a URL like smtp://user:pass@smtp.example.com:587 or smtps://...")
    })?;
    let host = parsed
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| refuse("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tls_setting = parsed
        .query_pairs()
        .find(|(name, _)| name == "tls")
        .map(|(_, value)| value.into_owned());
    let parameters = || -> Result<TlsParameters, String> {
        let mut builder = TlsParameters::builder(host.clone());
        if let Some(ca_file) = ca_file {
            let pem = std::fs::read(ca_file).map_err(|error| {
                format!(
                    "SMTP_TLS_CA_FILE {} cannot be read: {error}",
                    ca_file.display()
                )
            })?;
            let certificate = Certificate::from_pem(&pem).map_err(|_| {
                format!(
                    "SMTP_TLS_CA_FILE {} holds no PEM certificate",
                    ca_file.display()
                )
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        builder
            .build_rustls()
            .map_err(|_| refuse("TLS cannot be set up for this host"))
    };
    let (port, tls) = match (parsed.scheme(), tls_setting.as_deref()) {
        ("smtp", None | Some("opportunistic")) => (587, Tls::Opportunistic(parameters()?)),
        ("smtp", Some("required")) => (587, Tls::Required(parameters()?)),
        ("smtp", Some("none")) => (587, Tls::None),
        ("smtps", None) => (465, Tls::Wrapper(parameters()?)),
        ("smtp" | "smtps", Some(_)) => {
            return Err(refuse(
                "tls is required, opportunistic or none (smtp:// only); smtps:// is always TLS",
            ));
        }
        _ => return Err(refuse("the scheme is smtp:// or smtps://")),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(parsed.port().unwrap_or(port))
        .tls(tls)
        .timeout(Some(SMTP_COMMAND_TIMEOUT));
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let decode = |text: &str| {
            percent_encoding_decode(text).ok_or_else(|| refuse("the user or password is not UTF-8"))
        };
        builder = builder.credentials(Credentials::new(
            decode(parsed.username())?,
            decode(parsed.password().unwrap_or_default())?,
        ));
    }
    Ok(builder.build())
}

/// `%XX` escapes decoded, as URLs carry a user and password.
fn percent_encoding_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

fn create_private_dir(directory: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(directory)
}

/// Writes the message to `<directory>/<time>-<kind>-<id>.eml`, owner-only, whole or not at
/// all (a temporary file renamed into place): a link in it is as good as a password.
async fn write_eml(directory: &Path, mail: &OutboxMail) -> std::io::Result<PathBuf> {
    let name = format!(
        "{}-{}-{}.eml",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
        mail.kind,
        mail.id
    );
    let path = directory.join(&name);
    let partial = directory.join(format!(".{name}.partial"));
    let message = mail.message.clone().into_bytes();
    let (target, temporary) = (path.clone(), partial.clone());
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary)?;
        file.write_all(&message)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &target)
    })
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("the write ended abnormally")));
    if written.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    written.map(|()| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    // lettre's connection pool starts a task: a runtime is needed, as in the server.
    #[tokio::test]
    async fn smtp_urls_are_checked_without_repeating_them() {
        let secret = "s3cret-password";
        for bad in [
            format!("http://user:{secret}@smtp.example.com"),
            format!("smtp://user:{secret}@smtp.example.com?tls=maybe"),
            format!("smtps://user:{secret}@smtp.example.com?tls=none"),
            format!("smtp://user:{secret}@"),
            "not a url".to_owned(),
        ] {
            let error = smtp(&bad, None).expect_err(&bad);
            assert!(!error.contains(secret), "{error}");
        }
        for good in [
            "smtp://localhost:2525",
            "smtp://user:pa%40ss@smtp.example.com:587?tls=required",
            "smtps://smtp.example.com",
            "smtp://127.0.0.1:25?tls=none",
            "smtp://[::1]:2525",
        ] {
            assert!(smtp(good, None).is_ok(), "{good}");
        }
        let missing = Path::new("/no/such/ca.pem");
        assert!(smtp("smtps://smtp.example.com", Some(missing)).is_err());
    }

    #[test]
    fn a_url_user_and_password_are_percent_decoded() {
        assert_eq!(percent_encoding_decode("pa%40ss%2F1").unwrap(), "pa@ss/1");
        assert_eq!(percent_encoding_decode("plain").unwrap(), "plain");
        assert!(percent_encoding_decode("%FF").is_none(), "not UTF-8");
    }

    #[tokio::test]
    async fn without_smtp_a_mail_is_an_owner_only_eml_file() {
        let directory = tempfile::tempdir().unwrap();
        let mail_dir = directory.path().join("mail");
        let transport = Transport::from_settings(None, None, &mail_dir).unwrap();
        let mail = OutboxMail {
            id: uuid::Uuid::new_v4(),
            kind: "password_reset".into(),
            envelope_from: "a@example.com".into(),
            envelope_to: "b@example.com".into(),
            message: "Subject: hi\r\n\r\nbody\r\n".into(),
            attempts: 0,
            expires_at: chrono::Utc::now(),
        };
        let Delivered::File(path) = transport.send(&mail).await.unwrap() else {
            panic!("a file");
        };
        assert_eq!(std::fs::read_to_string(&path).unwrap(), mail.message);
        assert_eq!(path.extension().unwrap(), "eml");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "owner-only");
        }
        let entries = std::fs::read_dir(&mail_dir).unwrap().count();
        assert_eq!(entries, 1, "no partial file left behind");
    }
}
