//! Enrollment codes, as a user pastes them into `shimgate enroll`: any
//! text either parses or is refused, and what parses prints back to a code
//! that parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shimgate_wire::code::EnrollmentCode;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Also through the prefix, or nearly every input stops at WrongPrefix.
    for candidate in [text.to_owned(), format!("sg1-{text}")] {
        if let Ok(code) = candidate.parse::<EnrollmentCode>() {
            let again: EnrollmentCode = code.to_string().parse().expect("a printed code parses");
            assert_eq!(again, code);
            let _ = code.gateway_host();
            assert!(!format!("{code:?}").contains(&code.to_string()));
        }
    }
});
