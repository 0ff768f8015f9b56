//! Policy rule text (console forms and the JSON API): subjects,
//! destinations and actions. No input may panic, and what parses prints as
//! text that parses to the same value (the console shows rules that way and
//! an edit saves them back).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shimgate_registry::{Action, Dest, Subject};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = text.parse::<Subject>() {
        assert_eq!(
            s.to_string().parse::<Subject>().as_ref(),
            Ok(&s),
            "{text:?}"
        );
    }
    if let Ok(d) = text.parse::<Dest>() {
        assert_eq!(d.to_string().parse::<Dest>().as_ref(), Ok(&d), "{text:?}");
    }
    if let Ok(a) = text.parse::<Action>() {
        assert_eq!(a.to_string().parse::<Action>().ok(), Some(a), "{text:?}");
    }
});
