//! Commands whose job is to print for a person (the demo); the binary's other commands live
//! in `main.rs`.

pub mod demo;
pub mod health;
pub mod inspect;
pub mod probe;
pub mod tunnel;
