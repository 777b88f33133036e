//! The module graph of `src/` has no import cycle (README "How a connection flows": layers
//! point one way). Reads every `crate::…` and `super::…` path (grouped imports included) and
//! every use of a child module a file declares, skips test modules, and looks for strongly
//! connected groups of files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            if module.last().is_some_and(|m| m == "tests") {
                continue;
            }
            let mut text = std::fs::read_to_string(&path).unwrap();
            if let Some(cut) = text.find("#[cfg(test)]\nmod tests") {
                text.truncate(cut);
            }
            let text: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(module, text);
        }
    }
    out
}

fn ident(s: &str) -> usize {
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// The paths starting at `rest` (just after `prefix::`): `a::b`, or a `{…}` group of them.
fn paths(prefix: &[String], rest: &str, out: &mut Vec<Module>) {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut start = 0;
        let bytes = group.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            match b {
                b'{' => depth += 1,
                b'}' if depth == 0 => {
                    paths(prefix, &group[start..i], out);
                    return;
                }
                b'}' => depth -= 1,
                b',' if depth == 0 => {
                    paths(prefix, &group[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let n = ident(rest);
    if n == 0 {
        // `use super::*` (a child module taking its parent's names, as `config/*` does) is
        // the parent's own re-export pattern, not a layer edge: skipped, as
        // `shared/tools/modcycles` skips it.
        if !rest.starts_with('*') {
            out.push(prefix.to_vec());
        }
        return;
    }
    let mut path = prefix.to_vec();
    if &rest[..n] != "self" {
        path.push(rest[..n].to_owned());
    }
    match rest[n..].strip_prefix("::") {
        Some(more) => paths(&path, more, out),
        None => out.push(path),
    }
}

fn references(module: &Module, is_dir: bool, text: &str) -> Vec<Module> {
    let mut out = Vec::new();
    let parent: Module = if is_dir {
        module[..module.len().saturating_sub(1)].to_vec()
    } else {
        module[..module.len() - 1].to_vec()
    };
    for (word, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut at = 0;
        while let Some(i) = text[at..].find(word) {
            let start = at + i;
            at = start + word.len();
            let before = text[..start].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            paths(&base, &text[at..], &mut out);
        }
    }
    // Children declared here (`mod x;`) used as `x::…`.
    for line in text.lines() {
        let line = line.trim();
        let decl = line
            .strip_prefix("pub mod ")
            .or_else(|| line.strip_prefix("mod "))
            .and_then(|r| r.strip_suffix(';'));
        if let Some(child) = decl {
            let own: Module = module.iter().cloned().chain([child.to_owned()]).collect();
            let needle = format!("{child}::");
            let mut at = 0;
            while let Some(i) = text[at..].find(&needle) {
                let start = at + i;
                at = start + needle.len();
                let before = text[..start].chars().last();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                paths(&own, &text[at..], &mut out);
            }
        }
    }
    out
}

#[test]
fn the_module_graph_has_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = modules(&src);
    let dirs: BTreeSet<Module> = files
        .keys()
        .filter(|m| {
            let mut p = src.clone();
            p.extend(m.iter());
            p.is_dir() || m.is_empty()
        })
        .cloned()
        .collect();
    let mut edges: BTreeMap<&Module, BTreeSet<&Module>> = BTreeMap::new();
    for (module, text) in &files {
        let targets = edges.entry(module).or_default();
        for r in references(module, dirs.contains(module), text) {
            // The longest prefix that is a file of its own.
            let target = (1..=r.len())
                .rev()
                .find_map(|k| files.get_key_value(&r[..k]));
            if let Some((t, _)) = target {
                if t != module {
                    targets.insert(t);
                }
            }
        }
    }
    // A cycle exists iff some module reaches itself.
    let mut cycles = Vec::new();
    for start in files.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&Module> = edges[start].iter().copied().collect();
        while let Some(m) = todo.pop() {
            if m == start {
                cycles.push(start.join("/"));
                break;
            }
            if seen.insert(m) {
                todo.extend(edges[m].iter().copied());
            }
        }
    }
    assert!(
        files.len() > 30 && edges.values().map(BTreeSet::len).sum::<usize>() > 50,
        "the scan found too little to mean anything"
    );
    assert!(cycles.is_empty(), "modules in an import cycle: {cycles:?}");
}
