//! User management: registration, freezing, binding trading accounts to a user.
//!
//! Here `user_id` is the *login user*; `account_id` is a trading account (the
//! `user_id` of trading events). One user may own many accounts.

use serde::{Deserialize, Serialize};

/// A user registered. The password arrives already hashed (argon2 PHC string); the
/// journal never holds a clear-text password.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRegistered {
    /// Login user id.
    pub user_id: String,
    /// Display name.
    pub user_name: String,
    /// Password hash (PHC string format).
    pub password_hash: String,
    /// Phone number, may be empty.
    #[serde(default)]
    pub phone: String,
    /// E-mail address, may be empty.
    #[serde(default)]
    pub email: String,
    /// When.
    pub datetime: i64,
}

/// A user's status changed (frozen users cannot log in or trade).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserUpdated {
    /// Login user id.
    pub user_id: String,
    /// Whether the user is frozen.
    pub frozen: bool,
    /// When.
    pub datetime: i64,
}

/// A trading account was bound to, or unbound from, a user.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountBinding {
    /// Login user id.
    pub user_id: String,
    /// Trading account id.
    pub account_id: String,
    /// When.
    pub datetime: i64,
}

/// An event type the core does not know: a kind chosen by the producer and opaque
/// bytes, journaled and distributed like any other event.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// Producer-defined kind.
    pub kind: u16,
    /// Opaque payload.
    pub data: Vec<u8>,
}
