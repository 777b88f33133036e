//! Puts the git commit into `keyward --version` (KEYWARD_GIT_COMMIT). A build from a tree
//! without git (the container build context has no .git) says "unknown" unless
//! KEYWARD_GIT_COMMIT is set in the build's environment.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KEYWARD_GIT_COMMIT");
    // Rebuilt when the checked-out commit changes: HEAD, and the branch it names.
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Some(branch) = head.strip_prefix("ref: ") {
            let path = format!(".git/{}", branch.trim());
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    let commit = std::env::var("KEYWARD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            let hash = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (out.status.success() && !hash.is_empty()).then_some(hash)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=KEYWARD_GIT_COMMIT={commit}");
}
