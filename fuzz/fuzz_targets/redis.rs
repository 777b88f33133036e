//! The Redis command scanner never panics and gives the same bytes however the input is split
//! into reads (the first byte picks the split point).
#![no_main]

use keyward::redis::scan::{command, Scanner};
use libfuzzer_sys::fuzz_target;

fn run(chunks: &[&[u8]]) -> Vec<u8> {
    let mut s = Scanner::new();
    let mut out = Vec::new();
    let mut rewrite = |args: Vec<Vec<u8>>| {
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        command(&refs)
    };
    for c in chunks {
        s.feed(c, &mut out, &mut rewrite);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let cut = (split as usize * rest.len()) / 255;
    let whole = run(&[rest]);
    let (a, b) = rest.split_at(cut.min(rest.len()));
    assert_eq!(whole, run(&[a, b]));
});
