//! keyward's one integration-test binary (link time matters on 2 cores).

// Test support code panics on purpose: a failed setup step is a failed test.
#![allow(clippy::unwrap_used)]

mod audit;
mod aws;
mod check;
mod cli;
mod deploy;
mod e2e;
mod http;
mod inbound;
mod layers;
mod lifecycle;
mod limbo;
mod mysql;
mod oauth2;
mod postgres;
mod redis;
mod reload;
pub mod sigv4;
mod support;
mod tcp;
