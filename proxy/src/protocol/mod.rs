//! The git wire protocol engine, over bytes: pkt-line framing, upload-pack (v0/v1/v2) and
//! receive-pack.
//! No HTTP types and no sled here.

pub mod pktline;
pub mod receive_pack;
pub mod upload_pack;
