//! Records the commit the binary is built from, for `kaskade_build_info`:
//! `KASKADE_BUILD_COMMIT` if set (container builds without .git), else git.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=KASKADE_BUILD_COMMIT");
    let commit = std::env::var("KASKADE_BUILD_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    // Rebuild when HEAD moves (worktrees keep HEAD in their own git dir).
    if let Some(dir) = git(&["rev-parse", "--path-format=absolute", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
    }
    println!(
        "cargo:rustc-env=KASKADE_BUILD_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
