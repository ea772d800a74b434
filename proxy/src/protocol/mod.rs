//! The git wire protocol engine, over bytes: pkt-line framing and upload-pack (v0/v1/v2).
//! No HTTP types and no sled here.

pub mod pktline;
pub mod upload_pack;
