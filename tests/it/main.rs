//! keyward's one integration-test binary (link time matters on 2 cores).

mod check;
mod e2e;
mod limbo;
mod support;
mod tcp;
