//! What an operator does in an incident (`authql admin ...`): list a user's sessions, end them,
//! disable, enable or delete the account, mail it a password-reset link, mark its address
//! verified, remove its second factors. The same effects as the user's own revocation: rows
//! are deleted in the store, so every instance refuses the tokens on its next request.
//!
//! The commands and their answers are plain data (serde), so that the CLI can run them here,
//! against `DATABASE_URL`, or hand them to the running server that serves a SQLite file
//! (`crate::admin`), which keeps its session cache exact.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use std::sync::Arc;

use crate::{
    error::AppError,
    service::{
        accounts::Accounts,
        events::{SessionEventKind, SessionEvents},
        input,
    },
    store::{RoleChange, Session, SessionPage, Storage, TokenPurpose, User},
};

/// One admin command; `login` is an email or a username, matched as login matches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum AdminCommand {
    /// The user's live sessions: id, created, last refreshed, expiry, idle expiry, IP, user
    /// agent.
    Sessions {
        /// The user's email or username.
        login: String,
    },
    /// Ends every session of the user.
    RevokeSessions {
        /// The user's email or username.
        login: String,
    },
    /// Ends one session.
    RevokeSession {
        /// The session's id (a UUID, as `sessions` and `mySessions` show it).
        id: Uuid,
    },
    /// Disables the account: it cannot log in or refresh (ACCOUNT_DISABLED), and all its
    /// sessions end.
    DisableUser {
        /// The user's email or username.
        login: String,
    },
    /// Enables a disabled account again; its ended sessions stay ended.
    EnableUser {
        /// The user's email or username.
        login: String,
    },
    /// Deletes the user and every session of it; the email and username are free again.
    DeleteUser {
        /// The user's email or username.
        login: String,
    },
    /// Mails the user a link to set a new password (queued in the outbox; a running server
    /// sends it). Refused for a disabled account.
    SendPasswordReset {
        /// The user's email or username.
        login: String,
    },
    /// Marks the user's address verified, as following a verification link would.
    VerifyEmail {
        /// The user's email or username.
        login: String,
    },
    /// Removes the user's second factors (TOTP, recovery codes, passkeys) and ends every
    /// session of it: for a user who lost them. Their next login asks for the password only.
    ResetMfa {
        /// The user's email or username.
        login: String,
    },
    /// Grants the user a role: in the `roles` claim of every access token issued from now on,
    /// and at once in `/auth/verify` and token introspection answers. Granting a held role
    /// changes nothing.
    GrantRole {
        /// The user's email or username.
        login: String,
        /// 1 to 64 ASCII letters, digits and `_ - . : /`, starting with a letter or digit.
        role: String,
    },
    /// Takes a role from the user (at once through `/auth/verify` and introspection; access
    /// tokens already issued keep it in their claim until they expire).
    RevokeRole {
        /// The user's email or username.
        login: String,
        role: String,
    },
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum AdminAnswer {
    /// `sessions`: the user and its live sessions, newest first.
    Sessions {
        user: UserSummary,
        sessions: Vec<SessionSummary>,
    },
    /// `revoke-sessions`, `revoke-session`, `disable-user`, `delete-user`: how many sessions
    /// ended.
    Done {
        user: Option<UserSummary>,
        ended_sessions: u64,
    },
}

/// A user as an operator sees one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    pub id: Uuid,
    pub email: String,
    pub username: String,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// When the address was verified; `None` while it is not.
    #[serde(default)]
    pub email_verified_at: Option<DateTime<Utc>>,
    /// Its roles, sorted.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// A session as an operator sees one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    /// The absolute end, fixed at login (the API's `expiresAt`).
    pub expires_at: DateTime<Utc>,
    /// The end if not refreshed before (`SESSION_IDLE_TIMEOUT` after the last refresh).
    pub idle_expires_at: DateTime<Utc>,
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
}

/// Why a command did nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "failure", rename_all = "kebab-case")]
pub enum AdminFailure {
    #[error("no user has the email or username {login:?}")]
    UnknownUser { login: String },
    #[error("no session has the id {id}")]
    UnknownSession { id: Uuid },
    #[error(
        "no mail was queued for {login:?}: the account is disabled, or its address cannot receive mail"
    )]
    NoMail { login: String },
    #[error(
        "{role:?} is not a role name: 1 to 64 ASCII letters, digits and _ - . : /, starting with a letter or digit"
    )]
    InvalidRole { role: String },
    #[error("{login:?} holds the most roles an account may hold (32)")]
    TooManyRoles { login: String },
    #[error("the database cannot be reached; try again")]
    DatabaseUnavailable,
    #[error("the command failed; the server log says why")]
    Failed,
}

impl From<AppError> for AdminFailure {
    fn from(error: AppError) -> Self {
        match error {
            AppError::ServiceUnavailable => Self::DatabaseUnavailable,
            _ => Self::Failed,
        }
    }
}

impl From<crate::store::StoreError> for AdminFailure {
    fn from(error: crate::store::StoreError) -> Self {
        AppError::from(error).into()
    }
}

/// Runs admin commands against a store, and publishes the session events they cause.
#[derive(Clone)]
pub struct Admin {
    store: Storage,
    events: SessionEvents,
    /// Composes the mails the commands queue.
    accounts: Arc<Accounts>,
}

impl Admin {
    /// The commands over `store`, their events published on `events`, their mails composed by
    /// `accounts`.
    pub fn new(store: Storage, events: SessionEvents, accounts: Arc<Accounts>) -> Self {
        Self {
            store,
            events,
            accounts,
        }
    }

    async fn revoked(&self, user: &User, session_ids: &[Uuid]) {
        self.events
            .publish_all(SessionEventKind::Revoked, user.id, session_ids)
            .await;
    }

    /// Runs `command`; each logs what it did (ids only) as `event = "admin_..."`.
    pub async fn run(&self, command: &AdminCommand) -> Result<AdminAnswer, AdminFailure> {
        let store = &self.store;
        let answer = match command {
            AdminCommand::Sessions { login } => {
                let user = self.user(login).await?;
                // Every live session: a user has at most MAX_SESSIONS_PER_USER.
                let everything = SessionPage {
                    first: i64::MAX.unsigned_abs(),
                    after: None,
                };
                let sessions = store
                    .sessions
                    .list_live_sessions(user.id, user.credential_version, Utc::now(), everything)
                    .await?;
                AdminAnswer::Sessions {
                    user: user.into(),
                    sessions: sessions.into_iter().map(Into::into).collect(),
                }
            }
            AdminCommand::RevokeSessions { login } => {
                let user = self.user(login).await?;
                let ended = store.sessions.delete_other_sessions(user.id, None).await?;
                self.revoked(&user, &ended).await;
                tracing::warn!(event = "admin_revoke_sessions", user_id = %user.id, ended_sessions = ended.len(), "admin ended every session of a user");
                done(Some(user), &ended)
            }
            AdminCommand::RevokeSession { id } => {
                let (user, _) = store
                    .sessions
                    .find_session(*id)
                    .await?
                    .ok_or(AdminFailure::UnknownSession { id: *id })?;
                let ended = store.sessions.delete_user_sessions(user.id, &[*id]).await?;
                if ended.is_empty() {
                    return Err(AdminFailure::UnknownSession { id: *id });
                }
                self.revoked(&user, &ended).await;
                tracing::warn!(event = "admin_revoke_session", user_id = %user.id, session_id = %id, "admin ended a session");
                done(Some(user), &ended)
            }
            AdminCommand::DisableUser { login } => {
                let user = self.user(login).await?;
                // Disabling again keeps the time it was first disabled.
                let disabled_at = user.disabled_at.unwrap_or_else(Utc::now);
                let ended = store
                    .users
                    .set_user_disabled(user.id, Some(disabled_at))
                    .await?
                    .ok_or_else(|| unknown(login))?;
                let user = self.stored(user).await?;
                self.revoked(&user, &ended).await;
                tracing::warn!(event = "admin_disable_user", user_id = %user.id, ended_sessions = ended.len(), "admin disabled a user");
                done(Some(user), &ended)
            }
            AdminCommand::EnableUser { login } => {
                let user = self.user(login).await?;
                store
                    .users
                    .set_user_disabled(user.id, None)
                    .await?
                    .ok_or_else(|| unknown(login))?;
                let user = self.stored(user).await?;
                tracing::warn!(event = "admin_enable_user", user_id = %user.id, "admin enabled a user");
                done(Some(user), &[])
            }
            AdminCommand::DeleteUser { login } => {
                let user = self.user(login).await?;
                let ended = store
                    .users
                    .delete_user(user.id, None)
                    .await?
                    .ok_or_else(|| unknown(login))?;
                self.revoked(&user, &ended).await;
                tracing::warn!(event = "admin_delete_user", user_id = %user.id, ended_sessions = ended.len(), "admin deleted a user");
                done(Some(user), &ended)
            }
            AdminCommand::SendPasswordReset { login } => {
                let user = self.user(login).await?;
                if user.disabled_at.is_some() {
                    return Err(AdminFailure::NoMail {
                        login: login.clone(),
                    });
                }
                let issued = self
                    .accounts
                    .link_mail(&user, TokenPurpose::PasswordReset, &user.email, Utc::now())?
                    .ok_or_else(|| AdminFailure::NoMail {
                        login: login.clone(),
                    })?;
                store.tokens.issue_token(issued).await?;
                self.accounts.doorbell.ring();
                tracing::warn!(event = "admin_send_password_reset", user_id = %user.id, "admin queued a password-reset link");
                done(Some(user), &[])
            }
            AdminCommand::VerifyEmail { login } => {
                let user = self.user(login).await?;
                let user = store
                    .users
                    .mark_email_verified(user.id, Utc::now())
                    .await?
                    .ok_or_else(|| unknown(login))?;
                tracing::warn!(event = "admin_verify_email", user_id = %user.id, "admin marked an address verified");
                done(Some(user), &[])
            }
            AdminCommand::ResetMfa { login } => {
                let user = self.user(login).await?;
                let ended = store
                    .second_factors
                    .reset_second_factors(user.id)
                    .await?
                    .ok_or_else(|| unknown(login))?;
                self.revoked(&user, &ended).await;
                tracing::warn!(event = "admin_reset_mfa", user_id = %user.id, ended_sessions = ended.len(), "admin removed every second factor of a user");
                done(Some(user), &ended)
            }
            AdminCommand::GrantRole { login, role } | AdminCommand::RevokeRole { login, role } => {
                let grant = matches!(command, AdminCommand::GrantRole { .. });
                let role = input::role("role", role)
                    .map_err(|_| AdminFailure::InvalidRole { role: role.clone() })?;
                let user = self.user(login).await?;
                let roles = match store.users.change_user_role(user.id, &role, grant).await? {
                    RoleChange::Roles(roles) => roles,
                    RoleChange::UnknownUser => return Err(unknown(login)),
                    RoleChange::TooManyRoles => {
                        return Err(AdminFailure::TooManyRoles {
                            login: login.clone(),
                        });
                    }
                };
                if grant {
                    tracing::warn!(event = "admin_grant_role", user_id = %user.id, role = %role, "admin granted a role");
                } else {
                    tracing::warn!(event = "admin_revoke_role", user_id = %user.id, role = %role, "admin revoked a role");
                }
                done(Some(User { roles, ..user }), &[])
            }
        };
        Ok(answer)
    }

    /// `user` as the store has it now (its times at the store's precision), or as it was if it
    /// is gone meanwhile.
    async fn stored(&self, user: User) -> Result<User, AdminFailure> {
        Ok(self
            .store
            .users
            .find_credentials_by_id(user.id)
            .await?
            .map_or(user, |found| found.user))
    }

    async fn user(&self, login: &str) -> Result<User, AdminFailure> {
        let normalized = input::login_key("login", login).map_err(|_| unknown(login))?;
        self.store
            .users
            .find_credentials(&normalized)
            .await?
            .map(|found| found.user)
            .ok_or_else(|| unknown(login))
    }
}

fn unknown(login: &str) -> AdminFailure {
    AdminFailure::UnknownUser {
        login: login.to_owned(),
    }
}

fn done(user: Option<User>, ended: &[Uuid]) -> AdminAnswer {
    AdminAnswer::Done {
        user: user.map(Into::into),
        ended_sessions: ended.len() as u64,
    }
}

impl From<User> for UserSummary {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            email: user.email,
            username: user.username,
            created_at: user.created_at,
            disabled_at: user.disabled_at,
            email_verified_at: user.email_verified_at,
            roles: user.roles,
        }
    }
}

impl From<Session> for SessionSummary {
    fn from(session: Session) -> Self {
        Self {
            id: session.id,
            created_at: session.created_at,
            last_refreshed_at: session.last_refreshed_at,
            expires_at: session.expires_at,
            idle_expires_at: session.idle_expires_at,
            ip_address: session.ip_address,
            user_agent: session.user_agent,
        }
    }
}
