//! The git wire protocol engine, over bytes: pkt-line framing, upload-pack (v0/v1/v2) and
//! receive-pack.
//! No HTTP types and no sled here.

pub mod pktline;
pub mod receive_pack;
pub mod upload_pack;

use codestorage_store::ObjectId;

/// A v0 ref advertisement: one `<id> <name>` line per ref, the capabilities after a NUL on the
/// first line (on a `capabilities^{}` line when there are no refs), then a flush.
pub fn ref_advertisement(lines: &[(ObjectId, String)], caps: &str) -> Vec<u8> {
    let null = [(
        ObjectId::null(gix_hash::Kind::Sha1),
        "capabilities^{}".to_owned(),
    )];
    let lines = if lines.is_empty() { &null[..] } else { lines };
    let mut out = Vec::new();
    for (i, (id, name)) in lines.iter().enumerate() {
        let mut payload = format!("{id} {name}").into_bytes();
        if i == 0 {
            payload.push(0);
            payload.extend_from_slice(caps.as_bytes());
        }
        payload.push(b'\n');
        pktline::data(&mut out, &payload);
    }
    pktline::flush(&mut out);
    out
}
