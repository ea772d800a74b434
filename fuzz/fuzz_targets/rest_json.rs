//! REST request bodies: arbitrary bytes parsed as each JSON body and run through the checks
//! that need no server state. Input: one byte selecting the body kind, then the body.
#![no_main]

use codestorage::http::rest::{BodyKind, check_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    let kind = BodyKind::ALL[usize::from(*kind) % BodyKind::ALL.len()];
    if let Err(e) = check_body(kind, body) {
        assert!(
            e.status.is_client_error(),
            "{kind:?}: {} {}",
            e.status,
            e.message
        );
    }
});
