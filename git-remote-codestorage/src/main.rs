//! `git-remote-codestorage <remote> <url>`: git runs this for `codestorage::` and
//! `codestorage://` URLs. See the library for what it does.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (remote, url) = match args.as_slice() {
        [_, remote, url] => (remote.clone(), url.clone()),
        [_, remote] => (remote.clone(), remote.clone()),
        _ => {
            eprintln!(
                "usage: git-remote-codestorage <remote> <url> (git runs this for codestorage:: URLs)"
            );
            return ExitCode::from(128);
        }
    };
    let result = git_remote_codestorage::target::resolve(&url)
        .and_then(|target| git_remote_codestorage::session::run(&remote, &target));
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(128)),
        Err(e) => {
            eprintln!("fatal: codestorage: {e}");
            ExitCode::from(128)
        }
    }
}
