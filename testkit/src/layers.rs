//! The layers of a crate's modules, read from its source: every `crate::<module>` path of every file (in `use`
//! lines, grouped `use crate::{..}` lines and inline paths; comments, doc links included, are not imports). A
//! test of a crate lists its layers bottom to top and calls [`assert_layers`]: a module may import only from its
//! own layer or below, and no two top-level modules may import each other in a circle. (`scripts/import-graph`
//! prints the same graph for a reader.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Fails, naming each offence and showing the graph, unless the top-level modules under `src` import only from
/// their own layer of `layers` (bottom first) or below and form no cycle. Every module must be in a layer.
pub fn assert_layers(src: &Path, layers: &[&[&str]]) {
    let graph = import_graph(src);
    let mut wrong = Vec::new();
    for (module, imports) in &graph {
        for import in imports {
            if layer_of(layers, import) > layer_of(layers, module) {
                wrong.push(format!("{module} imports {import}, a layer above it"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\ngraph: {graph:#?}");
    assert_eq!(find_cycle(&graph), None, "graph: {graph:#?}");
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules named by `crate::` paths in the code of `source` (comments, doc links included, are
/// not imports).
pub fn crate_imports(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let source = code.as_str();
    let mut out = BTreeSet::new();
    for (i, _) in source.match_indices("crate::") {
        let rest = &source[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != "self" {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// Top-level module of the crate whose sources are under `src` → the top-level modules it imports (itself
/// excluded); `lib.rs` and `main.rs` are the crate root, not a module.
pub fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let parts: Vec<String> = rel
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if parts == ["lib"] || parts == ["main"] {
            continue;
        }
        let module = parts[0].clone();
        let source = std::fs::read_to_string(&file).expect("read file");
        let imports = graph.entry(module.clone()).or_default();
        for m in crate_imports(&source) {
            if m != module {
                imports.insert(m);
            }
        }
    }
    graph
}

fn layer_of(layers: &[&[&str]], module: &str) -> usize {
    layers
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer"))
}

/// A cycle in `graph`, if any, found by an iterative depth-first search.
pub fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // 0 unvisited, 1 on the current path, 2 done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    for start in graph.keys() {
        if state.get(start.as_str()).copied().unwrap_or(0) != 0 {
            continue;
        }
        let mut path: Vec<(&str, Vec<&str>)> = vec![(start, deps(graph, start))];
        state.insert(start, 1);
        while let Some((node, pending)) = path.last_mut() {
            match pending.pop() {
                Some(next) => match state.get(next).copied().unwrap_or(0) {
                    1 => {
                        let from = path.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[from..].iter().map(|(n, _)| n.to_string()).collect();
                        cycle.push(next.to_string());
                        return Some(cycle);
                    }
                    0 => {
                        state.insert(next, 1);
                        path.push((next, deps(graph, next)));
                    }
                    _ => {}
                },
                None => {
                    state.insert(node, 2);
                    path.pop();
                }
            }
        }
    }
    None
}

fn deps<'a>(graph: &'a BTreeMap<String, BTreeSet<String>>, node: &str) -> Vec<&'a str> {
    graph
        .get(node)
        .map(|d| d.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_inline_and_commented_paths_and_cycles() {
        let imports = crate_imports(
            "use crate::{events, metrics::X};\nuse crate::state::session::Session;\nlet x = crate::broker::f();\n\
             /// [`crate::conn`]\nf(); // crate::server",
        );
        let names: Vec<&str> = imports.iter().map(String::as_str).collect();
        assert_eq!(names, ["broker", "events", "metrics", "state"]);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        graph.insert("a".into(), ["b".to_string()].into());
        graph.insert("b".into(), ["c".to_string()].into());
        assert_eq!(find_cycle(&graph), None);
        graph.insert("c".into(), ["a".to_string()].into());
        assert!(find_cycle(&graph).is_some());
    }
}
