//! keyward's PostgreSQL startup and login exchanges must never panic, whatever the app or the
//! server sends: every input ends in a message, a classified error, or a closed connection.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyward::postgres::fuzz_exchange(data);
});
