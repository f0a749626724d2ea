//! The shape of the source, as the project promises it: no circle of
//! imports between the modules of the core and of the protocol (a module
//! that imports another depends on it; neither may depend back, through
//! any path), and no file of the core or the devices longer than 800 lines
//! before its unit tests. Read from the files, without building them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// The longest a file may be before its unit tests.
const MAX_LINES: usize = 800;

/// Every module of the library under `src` (its path, `a::b`; the root is
/// ""), and its file. Binaries are not part of the library.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|name| name != "bin") {
                    pending.push(path);
                }
                continue;
            }
            let relative = path.strip_prefix(src).expect("below src");
            if path.extension().is_none_or(|ext| ext != "rs") || relative == Path::new("main.rs") {
                continue;
            }
            let mut parts: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if parts
                .last()
                .is_some_and(|last| last == "mod" || last == "lib")
            {
                parts.pop();
            }
            found.insert(parts.join("::"), path);
        }
    }
    found
}

/// The text of a file before its unit-test module.
fn before_tests(text: &str) -> &str {
    let lines: Vec<&str> = text.lines().collect();
    let mut offset = 0;
    for (i, line) in lines.iter().enumerate() {
        let is_test_cfg = line.starts_with("#[cfg(test)]") || line.starts_with("#[cfg(all(test");
        if is_test_cfg {
            let item = lines[i + 1..].iter().find(|l| !l.starts_with("#["));
            if item.is_some_and(|l| l.contains("mod ") && l.contains("tests")) {
                return &text[..offset];
            }
        }
        offset += line.len() + 1;
    }
    text
}

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Path,
    Open,
    Close,
    Comma,
    Other,
}

/// The tokens of `text` that paths are made of; comments and string
/// literals are skipped.
fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(Token::Other);
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token::Path);
            i += 2;
        } else {
            out.push(match c {
                '{' => Token::Open,
                '}' => Token::Close,
                ',' => Token::Comma,
                _ => Token::Other,
            });
            i += 1;
        }
    }
    out
}

/// The paths of a `use` tree (or a plain path) starting at `at`.
fn path_tree(tokens: &[Token], mut at: usize) -> Vec<Vec<String>> {
    match tokens.get(at) {
        Some(Token::Open) => {
            let mut paths = Vec::new();
            let mut depth = 0;
            at += 1;
            let mut start = at;
            while let Some(token) = tokens.get(at) {
                match token {
                    Token::Open => depth += 1,
                    Token::Close if depth == 0 => {
                        paths.extend(path_tree(tokens, start));
                        break;
                    }
                    Token::Close => depth -= 1,
                    Token::Comma if depth == 0 => {
                        paths.extend(path_tree(tokens, start));
                        start = at + 1;
                    }
                    _ => {}
                }
                at += 1;
            }
            paths
        }
        Some(Token::Ident(name)) => match tokens.get(at + 1) {
            Some(Token::Path) => path_tree(tokens, at + 2)
                .into_iter()
                .map(|rest| [vec![name.clone()], rest].concat())
                .collect(),
            _ => vec![vec![name.clone()]],
        },
        _ => vec![vec![]],
    }
}

/// Which modules each module uses: through `crate::`, `super::`,
/// `self::` or a child module's name.
fn dependencies(modules: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let split = |module: &str| -> Vec<String> {
        module
            .split("::")
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    };
    let mut graph = BTreeMap::new();
    for (module, file) in modules {
        let text = std::fs::read_to_string(file).expect("a source file");
        let tokens = tokens(before_tests(&text));
        let here = split(module);
        let children: BTreeSet<String> = modules
            .keys()
            .map(|m| split(m))
            .filter(|m| m.len() == here.len() + 1 && m.starts_with(&here))
            .filter_map(|m| m.last().cloned())
            .collect();
        let mut uses = BTreeSet::new();
        for (i, token) in tokens.iter().enumerate() {
            let Token::Ident(head) = token else { continue };
            if tokens.get(i + 1) != Some(&Token::Path) || (i > 0 && tokens[i - 1] == Token::Path) {
                continue;
            }
            let base = match head.as_str() {
                "crate" => vec![],
                "super" => here[..here.len().saturating_sub(1)].to_vec(),
                "self" => here.clone(),
                child if children.contains(child) => [here.clone(), vec![child.into()]].concat(),
                _ => continue,
            };
            let start = if children.contains(head) { i } else { i + 2 };
            let rest_start = if children.contains(head) { 1 } else { 0 };
            for tree in path_tree(&tokens, start) {
                let mut path = base.clone();
                let mut rest = tree[rest_start.min(tree.len())..].to_vec();
                while rest.first().is_some_and(|p| p == "super") {
                    path.pop();
                    rest.remove(0);
                }
                path.extend(rest);
                let used = (0..=path.len())
                    .rev()
                    .map(|k| path[..k].join("::"))
                    .find(|candidate| modules.contains_key(candidate));
                if let Some(used) = used.filter(|used| used != module) {
                    uses.insert(used);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// A circle of modules, if there is one: each uses the next, the last the first.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            return Some(path[at..].to_vec());
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_string());
        for next in &graph[module] {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(module.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_core_and_the_protocol_have_no_circle_of_imports() {
    for crate_dir in ["vmm", "ipc-proto"] {
        let modules = modules(&Path::new(ROOT).join(crate_dir).join("src"));
        assert!(modules.len() > 5, "{crate_dir}: {modules:?}");
        let graph = dependencies(&modules);
        if let Some(circle) = circle(&graph) {
            panic!("{crate_dir}: a circle of imports: {}", circle.join(" → "));
        }
    }
}

#[test]
fn no_file_of_the_core_or_the_devices_is_longer_than_800_lines_before_its_tests() {
    for crate_dir in ["vmm", "device-procs"] {
        let src = Path::new(ROOT).join(crate_dir).join("src");
        let mut files: Vec<PathBuf> = modules(&src).into_values().collect();
        files.push(src.join("main.rs"));
        for file in files.into_iter().filter(|f| f.exists()) {
            let text = std::fs::read_to_string(&file).expect("a source file");
            let lines = before_tests(&text).lines().count();
            assert!(
                lines <= MAX_LINES,
                "{} has {lines} lines before its tests",
                file.display()
            );
        }
    }
}

/// The checker itself finds what it must: a circle through `super::` and
/// a child's name, paths in `use` groups, and none in tests or comments.
#[test]
fn the_checker_sees_circles_through_groups_parents_and_children() {
    let dir = std::env::temp_dir().join(format!("pv-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("machine")).unwrap();
    let write = |file: &str, text: &str| std::fs::write(dir.join(file), text).unwrap();
    write("lib.rs", "pub mod machine;\npub mod control;\n");
    write(
        "control.rs",
        "// crate::machine::Vm in a comment is no import\nuse std::fmt;\n#[cfg(test)]\nmod tests {\n    use crate::machine::Vm;\n}\n",
    );
    write(
        "machine/mod.rs",
        "mod state;\nuse state::{Log, Times};\npub struct Vm;\n",
    );
    write("machine/state.rs", "pub struct Log;\npub struct Times;\n");
    let modules = modules(&dir);
    assert_eq!(
        modules.keys().collect::<Vec<_>>(),
        ["", "control", "machine", "machine::state"]
    );
    assert_eq!(circle(&dependencies(&modules)), None);
    // The child uses its parent, which uses it: a circle.
    write(
        "machine/state.rs",
        "use super::{Vm, super::control};\npub struct Log;\npub struct Times;\n",
    );
    let graph = dependencies(&modules);
    assert_eq!(
        graph["machine::state"],
        BTreeSet::from(["control".to_string(), "machine".to_string()])
    );
    let found = circle(&graph).expect("a circle");
    assert_eq!(found.len(), 2, "{found:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
