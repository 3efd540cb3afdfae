//! The ring's atomics: std's, or loom's under the `loom` feature (model checking).

#[cfg(feature = "loom")]
pub(crate) use loom::sync::atomic::{fence, AtomicU64};
pub(crate) use std::sync::atomic::Ordering;
#[cfg(not(feature = "loom"))]
pub(crate) use std::sync::atomic::{fence, AtomicU64};
