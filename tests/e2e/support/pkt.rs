//! pkt-line builders for hand-made upload-pack requests, and checks on raw responses.
//!
//! The well-formed bodies here are proven against real `git http-backend` by the harness tests,
//! so when codestorage rejects one of them, that is codestorage's doing.

use std::io::Write;

pub const FLUSH: &[u8] = b"0000";
pub const DELIM: &[u8] = b"0001";

/// The content type git sends with an upload-pack POST.
pub const UPLOAD_PACK_REQUEST: &str = "application/x-git-upload-pack-request";

/// One pkt-line: 4 hex digits of total length, then `payload`.
pub fn pkt(payload: impl AsRef<[u8]>) -> Vec<u8> {
    let payload = payload.as_ref();
    let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Concatenates pieces into one body.
pub fn body(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A v2 `ls-refs` request asking for symrefs, peeled tags and the unborn HEAD.
pub fn v2_ls_refs() -> Vec<u8> {
    body(&[
        &pkt("command=ls-refs\n"),
        DELIM,
        &pkt("symrefs\n"),
        &pkt("peel\n"),
        &pkt("unborn\n"),
        FLUSH,
    ])
}

/// A v2 `fetch` request: `want` each id, `done`, no progress, no haves.
pub fn v2_fetch(wants: &[&str]) -> Vec<u8> {
    let mut out = [
        pkt("command=fetch\n"),
        DELIM.to_vec(),
        pkt("no-progress\n"),
        pkt("ofs-delta\n"),
    ]
    .concat();
    for w in wants {
        out.extend(pkt(format!("want {w}\n")));
    }
    out.extend(pkt("done\n"));
    out.extend_from_slice(FLUSH);
    out
}

/// A v0/v1 stateless-rpc upload-pack request: `want` each id (capabilities on the first), flush,
/// `done`.
pub fn v0_want(wants: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, w) in wants.iter().enumerate() {
        if i == 0 {
            out.extend(pkt(format!(
                "want {w} multi_ack_detailed side-band-64k ofs-delta no-progress\n"
            )));
        } else {
            out.extend(pkt(format!("want {w}\n")));
        }
    }
    out.extend_from_slice(FLUSH);
    out.extend(pkt("done\n"));
    out
}

/// `data` gzip-compressed, as git sends large request bodies.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("finish gzip")
}

/// Whether `body` carries pack data (a `PACK` signature anywhere, sideband or not).
pub fn has_pack(body: &[u8]) -> bool {
    contains(body, b"PACK")
}

/// Whether `body` carries an `ERR ` pkt-line or a sideband-3 error.
pub fn has_err(body: &[u8]) -> bool {
    contains(body, b"ERR ") || has_sideband_error(body)
}

fn has_sideband_error(body: &[u8]) -> bool {
    let mut rest = body;
    while rest.len() >= 4 {
        let Some(len) = std::str::from_utf8(&rest[..4])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
        else {
            return false;
        };
        if len < 4 {
            rest = &rest[4..];
            continue;
        }
        if len > rest.len() {
            return false;
        }
        if len > 4 && rest[4] == 3 {
            return true;
        }
        rest = &rest[len..];
    }
    false
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
