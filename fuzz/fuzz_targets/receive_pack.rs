//! The receive-pack command list, capabilities and push options, then the checks run on each
//! command and the report written back.
#![no_main]

use codestorage::protocol::pktline::{self, Pkt, Reader};
use codestorage::protocol::receive_pack::{self, RefStatus, Report};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cursor = std::io::Cursor::new(data);
    let req = match receive_pack::read_request(&mut cursor, 64) {
        Ok(req) => req,
        Err(e) => {
            // Refused: the server answers with one ERR packet.
            let mut out = Vec::new();
            pktline::err(&mut out, &e.to_string());
            let mut r = Reader::new(&out);
            assert!(matches!(r.next_pkt(), Ok(Some(Pkt::Data(_)))));
            assert!(r.at_end());
            return;
        }
    };
    assert!(req.commands.len() <= 64);
    let _ = req.expects_pack();
    let mut report = Report::default();
    for cmd in &req.commands {
        let _ = cmd.is_delete();
        let status = match receive_pack::refuse_name(cmd) {
            Some(reason) => RefStatus::Ng(reason.to_owned()),
            None => RefStatus::Ok,
        };
        report.refs.push((cmd.name.clone(), status));
    }
    // The report must be valid pkt-lines ending with a flush.
    let encoded = report.encode();
    let mut r = Reader::new(&encoded);
    let mut last = None;
    while let Some(pkt) = r.next_pkt().expect("report framing") {
        last = Some(pkt);
    }
    assert_eq!(last, Some(Pkt::Flush));
    let mut out = Vec::new();
    let _ = report.send(&req.caps, &mut out);
});
