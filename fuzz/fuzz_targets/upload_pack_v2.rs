//! The v2 upload-pack command request (`ls-refs`, `fetch`, capabilities, arguments); a refused
//! request is answered with the `ERR` packet the server sends, which must be one valid packet.
#![no_main]

use codestorage::protocol::pktline::{self, Pkt, Reader};
use codestorage::protocol::upload_pack::{Error, request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = request::parse_v2(data) {
        let mut out = Vec::new();
        pktline::err(&mut out, &Error::from(e).to_string());
        let mut r = Reader::new(&out);
        assert!(matches!(r.next_pkt(), Ok(Some(Pkt::Data(_)))));
        assert!(r.at_end());
    }
});
