//! The Redis command scanner never panics, gives the same bytes however the input is split
//! into reads (the first byte picks the split point), and agrees with Redis's parser (the
//! reference model `redis_commands`, itself checked against a real Redis by the test suite):
//! every AUTH/HELLO Redis would read in what keyward sends is one keyward rewrote, and where
//! the scanner did not refuse the stream it found as many AUTH/HELLO commands as Redis does.
#![no_main]

use keyward::redis::scan::{command, redis_commands, Refused, Rest, Scanner};
use libfuzzer_sys::fuzz_target;

const MARK: &[u8] = b"KEYWARD-REWRITTEN";

fn intercepted(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"auth") || name.eq_ignore_ascii_case(b"hello")
}

fn run(chunks: &[&[u8]]) -> (Vec<u8>, Option<Refused>, usize) {
    let mut s = Scanner::new();
    let mut out = Vec::new();
    let mut rewrites = 0;
    let mut rewrite = |args: Vec<Vec<u8>>| {
        rewrites += 1;
        command(&[&args[0], MARK])
    };
    for c in chunks {
        if let Err(why) = s.feed(c, &mut out, &mut rewrite) {
            return (out, Some(why), rewrites);
        }
    }
    (out, None, rewrites)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = (split as usize * rest.len()) / 255;
    let whole = run(&[rest]);
    let (a, b) = rest.split_at(cut.min(rest.len()));
    assert_eq!(whole, run(&[a, b]));
    let (out, refused, rewrites) = whole;
    let (sent, _) = redis_commands(&out);
    let seen = sent.iter().filter(|c| intercepted(&c[0])).count();
    for c in sent.iter().filter(|c| intercepted(&c[0])) {
        assert_eq!(
            c[1..],
            [MARK.to_vec()],
            "an app's own AUTH/HELLO reaches Redis"
        );
    }
    assert_eq!(seen, rewrites);
    if refused.is_none() {
        let (theirs, end) = redis_commands(rest);
        assert_ne!(end, Rest::Error);
        assert_eq!(
            theirs.iter().filter(|c| intercepted(&c[0])).count(),
            rewrites
        );
    }
});
