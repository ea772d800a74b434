//! The remote-helper conversation (gitremote-helpers).
//!
//! git first asks for `capabilities` and sends `option` lines; a probe child (`git remote-http`
//! without credentials, which does no network I/O for these) answers them exactly as git's HTTP
//! transport would. At git's first real command (`list`, `list for-push`, `fetch`, `push`,
//! `stateless-connect`, `connect`) the helper knows whether it reads or writes, obtains a token
//! with that scope, checks that the server is there and accepts it, then starts the real child
//! with the token in its environment, replays what git said so far (discarding the child's
//! answers, which git already has), and from then on only copies bytes both ways.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use crate::target::Target;
use crate::token::{Access, obtain};
use crate::{Error, setting};

/// A `git remote-http(s)` child.
struct Transport {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Transport {
    fn spawn(remote: &str, target: &Target, token: Option<&str>) -> Result<Transport, Error> {
        let helper = if target.is_https() {
            "remote-https"
        } else {
            "remote-http"
        };
        let mut cmd = Command::new("git");
        cmd.arg(helper)
            .arg(remote)
            .arg(target.http_url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(token) = token {
            // Appended to whatever GIT_CONFIG_COUNT the user set already.
            let n: usize = std::env::var("GIT_CONFIG_COUNT")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("t:{token}"));
            cmd.env("GIT_CONFIG_COUNT", (n + 1).to_string())
                .env(format!("GIT_CONFIG_KEY_{n}"), "http.extraHeader")
                .env(
                    format!("GIT_CONFIG_VALUE_{n}"),
                    format!("Authorization: Basic {basic}"),
                );
        }
        let mut child = cmd.spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::Io(io::Error::other("git remote-http without pipes")));
        };
        Ok(Transport {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    /// Send one command line and read its answer: up to a blank line for `capabilities`, one
    /// line for `option`.
    fn ask(&mut self, line: &str) -> Result<Vec<String>, Error> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut answer = Vec::new();
        loop {
            let mut l = String::new();
            if self.stdout.read_line(&mut l)? == 0 {
                return Err(Error::Io(io::Error::other("git remote-http ended early")));
            }
            let l = l.trim_end_matches('\n').to_owned();
            let end = line != "capabilities" || l.is_empty();
            answer.push(l);
            if end {
                return Ok(answer);
            }
        }
    }

    fn close(mut self) {
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

/// What the first real command needs.
fn access_of(command: &str) -> Access {
    let write = command.starts_with("push ")
        || command.starts_with("list for-push")
        || command.ends_with(" git-receive-pack");
    if write { Access::Write } else { Access::Read }
}

/// Extra CA certificates for the preflight request, as git would use them.
fn ca_file() -> Option<String> {
    setting("GIT_SSL_CAINFO", "http.sslCAInfo")
}

/// Ask the server once, with the token, before git's transport does: turns "nothing there" and
/// "token refused" into messages that say what to do.
fn preflight(target: &Target, token: &str) -> Result<(), Error> {
    let mut builder = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60));
    if let Some(path) = ca_file()
        && let Ok(pem) = std::fs::read(&path)
        && let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem)
    {
        builder = builder.tls_certs_merge(certs);
    }
    let client = builder
        .build()
        .map_err(|e| Error::Io(io::Error::other(e.to_string())))?;
    let url = format!("{}/info/refs?service=git-upload-pack", target.http_url());
    let resp = client
        .get(&url)
        .header("Git-Protocol", "version=2")
        .basic_auth("t", Some(token))
        .send()
        .map_err(|e| Error::Unreachable {
            server: target.server.clone(),
            reason: describe(&e),
        })?;
    let status = resp.status().as_u16();
    if status == 401 || status == 403 {
        let message = resp.text().unwrap_or_default().trim().to_owned();
        return Err(Error::Refused { status, message });
    }
    Ok(())
}

/// A reqwest error without the URL (which carries nothing secret here, but is noise).
fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

/// Copy `from` into `to` until the end, flushing as data arrives.
fn pump(mut from: impl Read, mut to: impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// Run the helper for `remote` and `target`, talking to git on stdin/stdout. Returns the exit
/// code of git's transport.
pub fn run(remote: &str, target: &Target) -> Result<i32, Error> {
    let mut git_in = BufReader::new(io::stdin());
    let mut git_out = io::stdout();
    let mut probe: Option<Transport> = None;
    let mut said: Vec<String> = Vec::new();
    let command = loop {
        let mut line = String::new();
        if git_in.read_line(&mut line)? == 0 {
            if let Some(p) = probe {
                p.close();
            }
            return Ok(0);
        }
        let line = line.trim_end_matches('\n').to_owned();
        if line.is_empty() {
            // The end of the conversation before any command.
            if let Some(p) = probe {
                p.close();
            }
            return Ok(0);
        }
        if line == "capabilities" || line.starts_with("option ") {
            if probe.is_none() {
                probe = Some(Transport::spawn(remote, target, None)?);
            }
            let answer = match probe.as_mut() {
                Some(p) => p.ask(&line)?,
                None => Vec::new(),
            };
            for a in answer {
                writeln!(git_out, "{a}")?;
            }
            git_out.flush()?;
            said.push(line);
            continue;
        }
        break line;
    };
    if let Some(p) = probe {
        p.close();
    }

    let token = obtain(&target.repo, access_of(&command))?;
    preflight(target, &token)?;
    let mut transport = Transport::spawn(remote, target, Some(&token))?;
    drop(token);
    for line in &said {
        transport.ask(line)?;
    }
    writeln!(transport.stdin, "{command}")?;
    transport.stdin.flush()?;

    let Transport {
        mut child,
        stdin,
        stdout,
    } = transport;
    // git -> transport, on a thread; transport -> git here.
    let forward = std::thread::spawn(move || pump(git_in, stdin));
    let copied = pump(stdout, &mut git_out);
    let status = child.wait()?;
    // git closes our stdin when it is done; the thread ends with it.
    drop(forward);
    copied?;
    Ok(status.code().unwrap_or(128))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_map_to_the_least_scope() {
        assert_eq!(access_of("list"), Access::Read);
        assert_eq!(
            access_of("fetch 1111111111111111111111111111111111111111 refs/heads/main"),
            Access::Read
        );
        assert_eq!(access_of("stateless-connect git-upload-pack"), Access::Read);
        assert_eq!(access_of("list for-push"), Access::Write);
        assert_eq!(
            access_of("push refs/heads/main:refs/heads/main"),
            Access::Write
        );
        assert_eq!(access_of("connect git-receive-pack"), Access::Write);
    }
}
