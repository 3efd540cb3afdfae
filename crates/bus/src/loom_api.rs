//! The ring's internals, exposed only under the `loom` feature for model checking.

pub use crate::ring::{meta, Canary, Header, Read, Ring, Writer};
