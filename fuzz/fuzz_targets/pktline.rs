//! pkt-line framing: the slice reader (request bodies) and the streaming reader (pushes) must
//! never panic, bound their buffers, and agree packet for packet on arbitrary bytes.
#![no_main]

use codestorage::protocol::pktline::{self, Pkt, Reader};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Seen {
    Data(Vec<u8>),
    Flush,
    Delim,
    End,
}

fuzz_target!(|data: &[u8]| {
    let mut sliced = Vec::new();
    let mut reader = Reader::new(data);
    let slice_ok = loop {
        match reader.next_pkt() {
            Ok(None) => break true,
            Ok(Some(pkt)) => {
                let _ = pkt.text();
                sliced.push(match pkt {
                    Pkt::Data(d) => Seen::Data(d.to_vec()),
                    Pkt::Flush => Seen::Flush,
                    Pkt::Delim => Seen::Delim,
                    Pkt::ResponseEnd => Seen::End,
                });
            }
            Err(_) => break false,
        }
    };
    assert_eq!(slice_ok, reader.at_end());

    let mut streamed = Vec::new();
    let mut cursor = std::io::Cursor::new(data);
    let mut buf = Vec::new();
    let stream_ok = loop {
        match pktline::read(&mut cursor, &mut buf) {
            Ok(pktline::Read::Eof) => break true,
            Ok(pktline::Read::Data) => {
                assert!(buf.len() <= pktline::MAX_DATA_LEN);
                streamed.push(Seen::Data(buf.clone()));
            }
            Ok(pktline::Read::Flush) => streamed.push(Seen::Flush),
            Ok(pktline::Read::Delim) => streamed.push(Seen::Delim),
            Ok(pktline::Read::ResponseEnd) => streamed.push(Seen::End),
            Err(_) => break false,
        }
    };
    assert_eq!(slice_ok, stream_ok);
    assert_eq!(sliced, streamed);
});
