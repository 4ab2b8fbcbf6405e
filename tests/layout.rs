//! The crate's layout stays readable: dependencies between its top-level modules run one way
//! (no cycle), and the layout table in docs/development.md lists every module once and nothing
//! that is not there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None`: the crate root, binaries).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib" && name != "bin").then_some(name)
}

/// `crate::x` paths in the code (not in comments, not in `#[cfg(test)]` test modules).
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut found = BTreeSet::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

/// Module -> the other top-level modules it uses.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let uses = crate_paths(&std::fs::read_to_string(&file).unwrap());
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(uses.into_iter().filter(|m| *m != module));
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn dependencies_between_top_level_modules_run_one_way() {
    let graph = graph();
    assert!(graph.len() >= 20, "{graph:?}");
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_from(&graph, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn the_checker_finds_a_cycle_when_there_is_one() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        cycle_from(&graph, "a").unwrap().join(" -> "),
        "a -> b -> c -> a"
    );
    graph.get_mut("c").unwrap().clear();
    assert!(cycle_from(&graph, "a").is_none());
    assert_eq!(
        crate_paths(
            "use crate::kms::Kms;\n// crate::cli\nlet x = crate::api::X;\n#[cfg(test)]\nmod tests {\n use crate::seal;\n}"
        ),
        BTreeSet::from(["kms".to_owned(), "api".to_owned()])
    );
}

/// The rows of the layout table (the table under "# Development" in docs/development.md): for
/// each, the top-level modules of `src/` its first column names (`src/cli.rs` and `src/cli/`
/// are one).
fn layout_rows() -> Vec<BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/development.md")).unwrap();
    let section = page
        .strip_prefix("# Development\n")
        .expect("docs/development.md starts with its Development heading");
    let rows: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.starts_with("| path |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(rows.len() > 10, "{rows:?}");
    let mut out = Vec::new();
    for row in &rows {
        let first = row.split('|').nth(1).unwrap();
        // `src/cli.rs` and `src/cli/` in one row are one module.
        let mut in_row = BTreeSet::new();
        for path in first.split('`').skip(1).step_by(2) {
            assert!(
                root.join(path.trim_end_matches('/')).exists(),
                "docs/development.md lists {path}, which does not exist"
            );
            if let Some(module) = path.strip_prefix("src/") {
                let module = module.trim_end_matches('/');
                let module = module.strip_suffix(".rs").unwrap_or(module);
                if !module.contains('/') {
                    in_row.insert(module.to_owned());
                }
            }
        }
        out.push(in_row);
    }
    out
}

/// Every path in the layout table exists, and every top-level module of `src/` is in
/// it exactly once.
#[test]
fn the_layout_table_matches_the_tree() {
    let mut listed: BTreeMap<String, usize> = BTreeMap::new();
    for row in layout_rows() {
        for module in row {
            *listed.entry(module).or_default() += 1;
        }
    }
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let name = name.strip_suffix(".rs").unwrap_or(&name).to_owned();
        if name != "lib" && name != "bin" {
            modules.insert(name);
        }
    }
    let missing: Vec<_> = modules
        .iter()
        .filter(|m| !listed.contains_key(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "modules missing from the table in docs/development.md: {missing:?}"
    );
    let twice: Vec<_> = listed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "listed more than once: {twice:?}");
}

/// The table is in layer order: a module uses only modules in its own row or the rows above,
/// and the CLI and the controller, the two tops, do not use each other.
#[test]
fn the_layout_table_is_in_layer_order() {
    let graph = graph();
    let rows = layout_rows();
    let row_of = |m: &str| rows.iter().position(|r| r.contains(m));
    let mut upward = Vec::new();
    for (module, uses) in &graph {
        let Some(at) = row_of(module) else { continue };
        for used in uses {
            if row_of(used).is_some_and(|r| r > at) {
                upward.push(format!("{module} uses {used}, listed below it"));
            }
        }
    }
    assert!(upward.is_empty(), "{upward:#?}");
    assert!(!graph["cli"].contains("controller"), "{:?}", graph["cli"]);
    assert!(
        !graph["controller"].contains("cli"),
        "{:?}",
        graph["controller"]
    );
}
