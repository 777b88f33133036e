//! keyward's side of the MySQL handshake never panics, whatever the app or the server sends:
//! the app's HandshakeResponse (with and without `client_password`, through its auth switch)
//! and the server's greeting, framing included, end in a value or a classified error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyward::mysql::fuzz_handshake(data);
});
