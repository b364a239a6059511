//! The host's own access to files that someone else may control: a
//! tenant's handler tree and what its code wrote at build time
//! (`untrusted`: opened once, relative to a directory handle, never through
//! a link, read within bounds), and the directories pycage keeps for itself
//! (`private`: owned by this user, writable by no one else).
//!
//! Used by `build` (staging, the cache, the worker's output) and by
//! `capabilities` (SQLite databases, secret files); depends on nothing else
//! in the crate.

pub(crate) mod private;
pub(crate) mod untrusted;
