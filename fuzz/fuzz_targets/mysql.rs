//! keyward's hand-written MySQL pieces never panic: packet framing, ERR parsing, and the
//! COM_CHANGE_USER watch, which must give the same bytes however the input is split.
#![no_main]

use keyward::mysql::codec::{packet, parse_err, CommandWatch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let _ = packet(rest, 1 << 20);
    let _ = parse_err(rest);
    let cut = (split as usize * rest.len()) / 255;
    let mut whole = Vec::new();
    let n = CommandWatch::default().feed(rest, 0x11, &mut whole);
    let (a, b) = rest.split_at(cut.min(rest.len()));
    let mut w = CommandWatch::default();
    let mut parts = Vec::new();
    let m = w.feed(a, 0x11, &mut parts) + w.feed(b, 0x11, &mut parts);
    assert_eq!((n, whole), (m, parts));
});
