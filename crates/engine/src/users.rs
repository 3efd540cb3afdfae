//! Users: registration with an argon2 password hash, login, freezing, and the trading
//! accounts bound to a user. Every change is an event in the journal.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordVerifier, Version};
use bourse_model::{AccountBinding, Event, UserRegistered, UserUpdated};

use crate::apply::UserRecord;
use crate::engine::now_ns;
use crate::{Durability, Engine, Error, LsnRange, Result};

/// What registering a user takes.
#[derive(Debug, Clone, Default)]
pub struct NewUser {
    /// Login id.
    pub user_id: String,
    /// Display name.
    pub user_name: String,
    /// The password (hashed with argon2 before anything is stored).
    pub password: String,
    /// Phone.
    pub phone: String,
    /// E-mail.
    pub email: String,
}

/// Passwords shorter than this are refused.
pub const PASSWORD_CHARS_MIN: usize = 8;

impl Engine {
    fn argon2(&self) -> Result<Argon2<'static>> {
        let o = &self.inner.opts;
        let params = Params::new(o.argon2_memory_kib, o.argon2_iterations, 1, None)
            .map_err(|e| Error::Invalid(format!("argon2 parameters: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Registers a user (durably). Fails with [`Error::UserExists`] if the id is taken.
    pub fn register_user(&self, u: &NewUser) -> Result<LsnRange> {
        if u.password.chars().count() < PASSWORD_CHARS_MIN {
            return Err(Error::Invalid(format!(
                "a password has at least {PASSWORD_CHARS_MIN} characters"
            )));
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = self
            .argon2()?
            .hash_password(u.password.as_bytes(), &salt)
            .map_err(|e| Error::Invalid(format!("cannot hash the password: {e}")))?
            .to_string();
        let event = Event::UserRegistered(UserRegistered {
            user_id: u.user_id.clone(),
            user_name: u.user_name.clone(),
            password_hash: hash,
            phone: u.phone.clone(),
            email: u.email.clone(),
            datetime: now_ns(),
        });
        // One user change at a time, so the check and the write agree.
        let _guard = self.inner.users_lock.lock();
        if self.user(&u.user_id)?.is_some() {
            return Err(Error::UserExists(u.user_id.clone()));
        }
        self.submit(&[event], Durability::Durable)
    }

    /// Checks a login; returns the user when the password matches and the user is not
    /// frozen. Unknown users and wrong passwords get the same error.
    pub fn login(&self, user_id: &str, password: &str) -> Result<UserRecord> {
        let user = self.user(user_id)?.ok_or(Error::BadCredentials)?;
        let parsed = PasswordHash::new(&user.password_hash)
            .map_err(|e| Error::Corrupt { what: format!("password hash of {user_id:?}: {e}") })?;
        // NOTE: verification uses the parameters stored in the hash, not the options.
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .map_err(|_| Error::BadCredentials)?;
        if user.frozen {
            return Err(Error::Frozen(user_id.to_string()));
        }
        Ok(user)
    }

    /// Freezes or unfreezes a user (durably).
    pub fn set_frozen(&self, user_id: &str, frozen: bool) -> Result<LsnRange> {
        let _guard = self.inner.users_lock.lock();
        if self.user(user_id)?.is_none() {
            return Err(Error::UnknownUser(user_id.to_string()));
        }
        let event = Event::UserUpdated(UserUpdated {
            user_id: user_id.to_string(),
            frozen,
            datetime: now_ns(),
        });
        self.submit(&[event], Durability::Durable)
    }

    /// Binds a trading account to a user (durably). An account has one owner.
    pub fn bind_account(&self, user_id: &str, account_id: &str) -> Result<LsnRange> {
        let _guard = self.inner.users_lock.lock();
        if self.user(user_id)?.is_none() {
            return Err(Error::UnknownUser(user_id.to_string()));
        }
        if let Some(owner) = self.owner_of(account_id)? {
            if owner != user_id {
                return Err(Error::AccountTaken { account: account_id.to_string() });
            }
            return Err(Error::Invalid(format!(
                "account {account_id:?} is already bound to {user_id:?}"
            )));
        }
        let event = Event::AccountBound(AccountBinding {
            user_id: user_id.to_string(),
            account_id: account_id.to_string(),
            datetime: now_ns(),
        });
        self.submit(&[event], Durability::Durable)
    }

    /// Unbinds a trading account from its user (durably).
    pub fn unbind_account(&self, user_id: &str, account_id: &str) -> Result<LsnRange> {
        let _guard = self.inner.users_lock.lock();
        if self.owner_of(account_id)?.as_deref() != Some(user_id) {
            return Err(Error::NotBound {
                user: user_id.to_string(),
                account: account_id.to_string(),
            });
        }
        let event = Event::AccountUnbound(AccountBinding {
            user_id: user_id.to_string(),
            account_id: account_id.to_string(),
            datetime: now_ns(),
        });
        self.submit(&[event], Durability::Durable)
    }
}
