//! The layout ARCHITECTURE.md promises: no two library modules import each other,
//! directly or through others, and `src/` stays small enough to read at a glance.
//! Reads the source, so it runs in milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Library modules by path (`map::grid`), each with its file; `cli/` is the binary's.
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut mods = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into()).collect();
        if parts[0] == "cli" || parts == ["main"] || parts == ["lib"] {
            continue;
        }
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        mods.insert(parts.join("::"), f);
    }
    mods
}

/// The modules `module` names through `crate::…` or `super::…`, outside its tests.
fn imports(module: &str, file: &Path, mods: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap();
    let parent = |m: &str| {
        m.rsplit_once("::")
            .map_or(String::new(), |(p, _)| p.to_string())
    };
    // `super` is the parent module, for a folder's mod.rs and a file alike.
    let base = parent(module);
    let resolve = |path: &str| -> Option<String> {
        let segs: Vec<&str> = path.split("::").collect();
        (1..=segs.len())
            .rev()
            .map(|k| segs[..k].join("::"))
            .find(|c| mods.contains_key(c))
    };
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap();
        for (prefix, root) in [("crate::", String::new()), ("super::", base.clone())] {
            for (i, _) in line.match_indices(prefix) {
                let rest: String = line[i + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let full = if root.is_empty() {
                    rest
                } else {
                    format!("{root}::{rest}")
                };
                if let Some(t) = resolve(full.trim_end_matches(':')) {
                    // A module's own submodules and its ancestors' re-exports are not cycles.
                    if t != module && !module.starts_with(&format!("{t}::")) {
                        out.insert(t);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn no_two_modules_import_each_other() {
    let mods = modules();
    let graph: BTreeMap<String, BTreeSet<String>> = mods
        .iter()
        .map(|(m, f)| (m.clone(), imports(m, f, &mods)))
        .collect();
    assert!(graph.contains_key("map::grid") && graph["cohort::run"].contains("map::stream"));
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) {
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for n in &graph[m] {
            match state.get(n.as_str()) {
                Some(1) => {
                    let start = path.iter().position(|p| p == n).unwrap();
                    panic!("import cycle: {} -> {n}", path[start..].join(" -> "));
                }
                Some(_) => {}
                None => visit(n, graph, state, path),
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if !state.contains_key(m) {
            visit(m, &graph, &mut state, &mut Vec::new());
        }
    }
}

#[test]
fn the_tree_stays_readable() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let top: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lib.rs" && n != "main.rs")
        .collect();
    // Seven subsystem folders, cli/ and four shared files: a new subsystem is a folder.
    assert!(top.len() <= 12, "{} entries under src/: {top:?}", top.len());
    let main = std::fs::read_to_string(src.join("main.rs")).unwrap();
    assert!(main.lines().count() < 100, "main.rs is not thin");
    for (m, f) in modules() {
        let n = std::fs::read_to_string(&f).unwrap().lines().count();
        assert!(n <= 700, "{m} ({}) has {n} lines", f.display());
    }
}
