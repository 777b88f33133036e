//! The YAML as users write it, before validation: the `keyward-raw` crate (its own crate so
//! that its deserializers are built for size; see its Cargo.toml).

pub use keyward_raw::*;
