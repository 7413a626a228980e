//! Any text as a policy document (JSON or TOML): a typed error or a policy, never a panic;
//! a policy that loads survives its own canonical JSON unchanged.
#![no_main]

use engine_rs::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [Policy::from_json(text), Policy::from_toml(text)] {
        if let Ok(p) = parsed {
            let again = Policy::from_json(&p.to_json()).expect("canonical JSON reloads");
            assert_eq!(again.to_json(), p.to_json());
        }
    }
});
