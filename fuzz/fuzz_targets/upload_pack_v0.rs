//! The v0/v1 upload-pack request (wants, haves, shallow, deepen, filter, done); a refused
//! request is answered with the `ERR` packet the server sends, which must be one valid packet.
#![no_main]

use codestorage::protocol::pktline::{self, Pkt, Reader};
use codestorage::protocol::upload_pack::{Error, request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match request::parse_v0(data) {
        Ok(req) => {
            let _ = req.deepens();
            let _ = req.sideband.max_payload();
        }
        Err(e) => {
            let mut out = Vec::new();
            pktline::err(&mut out, &Error::from(e).to_string());
            let mut r = Reader::new(&out);
            assert!(matches!(r.next_pkt(), Ok(Some(Pkt::Data(_)))));
            assert!(r.at_end());
        }
    }
});
