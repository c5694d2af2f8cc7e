//! One file per command.

pub mod a2a;
pub mod call;
pub mod chat;
pub mod load;
pub mod repl;
pub mod tools;

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// for people
    Pretty,
    /// one JSON document, for scripts
    Json,
}
