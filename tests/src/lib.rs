//! Support shared by the end-to-end tests (`e2e/`) and the benchmark tools (`src/bin/`).
//!
//! - [`cgi`]: `git http-backend` as CGI behind a small hyper server, with fault knobs and
//!   resource accounting (`GET /__stats`): the real git server that codestorage mirrors from in
//!   the tests, and the baseline it is compared against in `scripts/bench`.
//! - [`procfs`]: CPU time, peak RSS and child processes from `/proc`.

pub mod cgi;
pub mod procfs;
