//! Names the commit being built in `LIVEFEED_GIT_COMMIT` for the build-info
//! metric: the variable when set (an image built without `.git` passes it as
//! a build argument), else `git rev-parse`, else `unknown`. Never fails the
//! build: git need not be installed.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LIVEFEED_GIT_COMMIT");
    let commit = std::env::var("LIVEFEED_GIT_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(path) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rustc-env=LIVEFEED_GIT_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}
