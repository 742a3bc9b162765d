//! The data flow runs one way: no top-level module of `src/` reaches back to one that uses it.
//! A reader can then study one stage without loading its callers (DESIGN §2).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// Top-level module of each `.rs` file under `src/` (binaries and the crate root excluded).
fn sources(src: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut dirs = vec![src.to_owned()];
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
            let relative = path.strip_prefix(src).unwrap();
            let first = relative.components().next().unwrap();
            let top = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if top != "lib" && top != "main" {
                found.push((top, path));
            }
        }
    }
    found
}

/// The top-level modules a file's non-test code names through `crate::`, including those in
/// `use crate::{a::b, c}` groups.
fn references(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find(';').unwrap_or(group.len());
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group[..end].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        start = false;
                        names.insert(identifier(&group[i..]));
                    }
                    _ => {}
                }
            }
        } else {
            names.insert(identifier(rest));
        }
    }
    names
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&src);
    let tops: BTreeSet<String> = files.iter().map(|(top, _)| top.clone()).collect();
    let mut graph = Graph::new();
    for (top, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let edges = graph.entry(top.clone()).or_default();
        for name in references(&text) {
            if name != *top && tops.contains(&name) {
                let file = path.strip_prefix(&src).unwrap().display().to_string();
                edges.entry(name).or_default().insert(file);
            }
        }
    }
    graph
}

/// A path from `from` back to `to`, if one exists.
fn path_back(graph: &Graph, from: &str, to: &str) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![from.to_owned()]];
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        if last == to {
            return Some(path);
        }
        if !seen.insert(last.clone()) {
            continue;
        }
        for next in graph.get(last).into_iter().flat_map(BTreeMap::keys) {
            let mut longer = path.clone();
            longer.push(next.clone());
            stack.push(longer);
        }
    }
    None
}

#[test]
fn the_reference_scanner_sees_plain_paths_and_groups() {
    let text = "use crate::a::B;\nuse crate::{b, c::{D, E}, d::F};\nfn f() { crate::e::g(); }\n\
                #[cfg(test)]\nmod tests { use crate::z; }";
    assert_eq!(
        references(text),
        ["a", "b", "c", "d", "e"].map(str::to_owned).into()
    );
}

#[test]
fn no_top_level_module_depends_on_one_that_depends_on_it() {
    let graph = graph();
    assert!(
        graph.len() > 10,
        "the scan found too few modules: {graph:?}"
    );
    let mut cycles = Vec::new();
    for (module, edges) in &graph {
        for (target, files) in edges {
            if let Some(back) = path_back(&graph, target, module) {
                cycles.push(format!(
                    "{module} -> {} (the first arrow from {})",
                    back.join(" -> "),
                    files.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "module cycles; move what both sides share into a leaf module:\n{}",
        cycles.join("\n")
    );
}
