//! The config loader must never panic, whatever the bytes: every input is either a config or a
//! list of problems, each naming where it is.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match keyward::config::parse(text, std::path::Path::new("/fuzz/keyward.yaml")) {
        Ok(config) => {
            for res in &config.resources {
                let _ = res.listen.to_string();
                let _ = res.upstream.to_string();
            }
        }
        Err(problems) => assert!(!problems.0.is_empty()),
    }
});
