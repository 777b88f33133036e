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
    if building_dist() {
        strip_symbols();
        // Both link options are LLD's (GNU ld rejects them).
        if links_with_lld() {
            order_hot_functions();
            pack_relocations();
        }
    }
}

/// Whether this is the `dist` profile (what the container image ships): OUT_DIR is
/// `<target>/[<triple>/]<profile>/build/<pkg>-<hash>/out`.
fn building_dist() -> bool {
    let out_dir = std::env::var("OUT_DIR").unwrap_or_default();
    std::path::Path::new(&out_dir)
        .ancestors()
        .nth(3)
        .and_then(|p| p.file_name())
        .is_some_and(|p| p == "dist")
}

/// The shipped binary has no symbol table. The linker strips it rather than the profile's
/// `strip = true`: a profile setting changes every crate's symbol hashes, so the names
/// link/hot-symbols.sh reads (KEYWARD_KEEP_SYMBOLS=1) would not be the shipped build's.
fn strip_symbols() {
    println!("cargo:rerun-if-env-changed=KEYWARD_KEEP_SYMBOLS");
    if std::env::var("KEYWARD_KEEP_SYMBOLS").as_deref() != Ok("1") {
        println!("cargo:rustc-link-arg-bins=-Wl,--strip-all");
    }
}

/// Lays out the functions keyward runs when it starts, loads its config and serves a first
/// connection (`link/hot-symbols.txt`, written by `link/hot-symbols.sh`) together at the front
/// of the binary's text. The kernel maps a binary's text in windows of 64 KB and more around
/// each page that runs, so ~3 MB of such functions scattered over the dist binary's 10 MB of
/// text made 7.4–8.1 MB of it resident at idle (3.1–3.3 MB laid out together).
///
/// Only the dist profile (one LTO unit): the release build's names differ (ThinLTO's
/// `.llvm.<hash>` suffixes change from build to build), and with the dist list it measured
/// 0.4 MB larger, not smaller. Only where the linker is LLD (rustc's default for
/// x86_64-unknown-linux-gnu since 1.90, unless the build names another linker): GNU ld does not
/// know the option. Symbols the list names that a build lacks (renamed, inlined) are skipped;
/// new functions keep the default place. `KEYWARD_NO_SYMBOL_ORDER=1` turns it off.
fn order_hot_functions() {
    println!("cargo:rerun-if-changed=link/hot-symbols.txt");
    println!("cargo:rerun-if-env-changed=KEYWARD_NO_SYMBOL_ORDER");
    let list = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("link/hot-symbols.txt");
    if std::env::var("KEYWARD_NO_SYMBOL_ORDER").as_deref() == Ok("1") || !list.exists() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// The PIE's relative relocations packed (DT_RELR, `-z pack-relative-relocs`): 0.7 MB of
/// `.rela.dyn` that the dynamic loader reads whole at every start, and that then stays resident,
/// become a few KB. Needs glibc 2.36 where the binary runs (the container image's base, Debian
/// 12, has it); the linker marks the binary `GLIBC_ABI_DT_RELR`, so an older glibc refuses it
/// with a clear message instead of running it unrelocated. Only where the build host's glibc has
/// it (a native build: what the binary will be run with); called only where LLD links.
fn pack_relocations() {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("HOST") == var("TARGET") && version_printed("getconf", "GNU_LIBC_VERSION") >= (2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the binary is linked by LLD: rustc 1.90 and later link x86_64-unknown-linux-gnu with
/// it (earlier ones: the system's cc and GNU ld), unless the build names another linker
/// (RUSTFLAGS, or the target's `linker` setting; any RUSTFLAGS mentioning a linker count: a
/// needless skip costs only memory).
fn links_with_lld() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    var("TARGET") == "x86_64-unknown-linux-gnu"
        && !flags.contains("linker")
        && !flags.contains("fuse-ld")
        && var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
        && version_printed(&rustc, "--version") >= (1, 90)
}

/// The major and minor version in the second word `program arg` prints ("rustc 1.95.0 (…)",
/// "glibc 2.36"); (0, 0) if it cannot be run or read.
fn version_printed(program: &str, arg: &str) -> (u32, u32) {
    let Ok(out) = Command::new(program).arg(arg).output() else {
        return (0, 0);
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}
