//! `git-remote-codestorage`: the git remote helper for `codestorage::` URLs.
//!
//! Not implemented yet (a later issue): it will resolve `codestorage::<repo>` to the server,
//! mint a least-privilege token and hand the wire work to git's HTTP transport.

fn main() -> std::process::ExitCode {
    eprintln!("git-remote-codestorage: not available yet in this version of codestorage");
    std::process::ExitCode::FAILURE
}
