//! Command-line front end: argument definitions, commands, and terminal output.

pub mod args;
pub mod commands;
pub mod display;
pub mod grants;
