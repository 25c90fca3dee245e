//! `kaskade-loadtest`: loads a WebRTC SFU (kaskade, or Janus for comparison) with
//! real str0m clients and reports what participants would experience and what it
//! cost the router. See `docs/loadtest.md`.

#![warn(missing_docs, clippy::unwrap_used)]
mod tool;

fn main() -> std::process::ExitCode {
    tool::cli::main()
}
