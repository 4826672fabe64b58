//! The crate's own import rules, checked: every `crate::…` path in `src/` must be an
//! import the table below allows, and the modules must not import each other in a
//! circle. A newcomer who adds an import the design does not want gets a failing test
//! that names the file, the import and the rule — instead of a circle found a year later.
//!
//! Granularity: the top-level modules of `src/` (`token/…` counts as `token`, and so on).
//! Test code (`#[cfg(test)] mod tests` and `tests.rs` files) is not checked: tests may reach
//! anywhere.

// Test and bench code may unwrap, expect and print (the house lints in Cargo.toml are
// for the product).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each module may import of the crate, and why. One line per module.
const ALLOWED: &[(&str, &[&str], &str)] = &[
    // Leaves: import nothing of ours, so anything may use them.
    ("secret", &[], "the redacting Secret type: a leaf"),
    ("random", &[], "unguessable values (state, PKCE, fencing tokens): a leaf"),
    ("response", &[], "the one builder of small answers: a leaf"),
    ("metrics", &[], "metrics in a passed-in registry: a leaf"),
    ("route", &[], "pure routing decisions: a leaf"),
    ("limit", &[], "rate limit and in-flight cap: pure, a leaf"),
    ("server", &[], "the accept loop, generic over per-connection state: a leaf"),
    ("watch", &[], "file watching and content fingerprints: a leaf; app acts on its wake-ups"),
    (
        "upstream",
        &["outbound"],
        "upstream connections; the data path's body type lives here; the outbound proxy hop from outbound",
    ),
    ("error", &["response"], "the proxy's error answers, built by the one answer builder"),
    // Configuration: knows only secrets.
    ("config", &["secret"], "TOML -> validated Config; secrets resolved"),
    // What every outbound connection shares, built from the config.
    ("outbound", &["config", "secret"], "outbound TLS roots, client certificate and proxy rules"),
    // Building blocks above the leaves.
    ("inbound", &["config", "error"], "who may use the listeners"),
    (
        "token",
        &["config", "error", "limit", "metrics", "random", "secret"],
        "tokens: grants, endpoint, stores, refresher; Redis also keeps limit's SharedBudget (GoTo's quota is one per user, like the token)",
    ),
    ("login", &["config", "random", "token"], "authorization-code sign-in flows"),
    ("log", &["proxy"], "stderr logging; proxy only for the access log's target name"),
    (
        "proxy",
        &["config", "error", "inbound", "limit", "metrics", "outbound", "route", "server", "token", "upstream"],
        "the data path",
    ),
    ("notify", &["config", "metrics", "token"], "[[notify]]: follows credentials' health, tells a person"),
    (
        "admin",
        &["config", "error", "inbound", "login", "random", "response", "token"],
        "the admin listener, over a View app builds",
    ),
    // Wiring: only these put the parts together.
    (
        "app",
        &["admin", "config", "inbound", "limit", "login", "metrics", "notify", "outbound", "proxy", "server", "token", "upstream", "watch"],
        "wiring",
    ),
    (
        "cli",
        &["app", "config", "demo", "log", "login", "metrics", "outbound", "proxy", "response", "server", "token"],
        "the command line",
    ),
    ("demo", &["app", "config"], "`demo`: a proxy wired to the mock GoTo of the goto-mock crate"),
];

/// Paths a module must never name, even inside a module it may import, and why.
const FORBIDDEN_PATHS: &[(&str, &str, &str)] = &[
    ("proxy", "reqwest", "the data path never talks to token endpoints"),
    ("proxy", "crate::token::grant", "the data path knows no grant"),
    ("proxy", "crate::token::source", "the data path never calls a token endpoint"),
    ("proxy", "crate::token::store", "the data path never touches a store"),
    ("proxy", "crate::token::redis_store", "the data path never touches a store"),
    ("proxy", "crate::token::redis_budget", "the data path knows the shared budget only as limit::SharedBudget"),
    ("proxy", "crate::demo", "the mock is test equipment"),
    ("proxy", "goto_mock", "the mock is test equipment"),
    ("upstream", "reqwest", "the data path never talks to token endpoints"),
    ("token", "crate::demo", "the mock is test equipment"),
    ("token", "goto_mock", "the mock is test equipment"),
    ("admin", "crate::demo", "the mock is test equipment"),
    ("admin", "goto_mock", "the mock is test equipment"),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/token/store/file.rs` → `token`); `None`
/// for the crate root and `main.rs`, and for test-only files.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).ok()?;
    if rel.file_name().is_some_and(|f| f == "tests.rs") {
        return None;
    }
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// The file's code without comments and without its `#[cfg(test)] mod tests { … }`.
fn code_of(text: &str) -> String {
    let without_tests = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    without_tests.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// Every top-level module a piece of code names through `crate::`, including the
/// grouped form `crate::{a, b::c}`.
fn crate_imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                out.insert(name);
            }
        }
    }
    out
}

struct Imports {
    /// module → (imported module → first file naming it)
    graph: BTreeMap<String, BTreeMap<String, PathBuf>>,
    /// (module, file, code) for the path rules
    files: Vec<(String, PathBuf, String)>,
}

fn imports() -> Imports {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let mut graph: BTreeMap<String, BTreeMap<String, PathBuf>> = BTreeMap::new();
    let mut all = Vec::new();
    for path in files {
        let Some(module) = module_of(&path) else { continue };
        let code = code_of(&std::fs::read_to_string(&path).expect("read"));
        let entry = graph.entry(module.clone()).or_default();
        for dep in crate_imports(&code) {
            if dep != module {
                entry.entry(dep).or_insert_with(|| path.clone());
            }
        }
        all.push((module, path, code));
    }
    Imports { graph, files: all }
}

#[test]
fn every_import_is_one_the_table_allows() {
    let Imports { graph, .. } = imports();
    let table: BTreeMap<&str, &[&str]> = ALLOWED.iter().map(|(m, deps, _)| (*m, *deps)).collect();
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let Some(allowed) = table.get(module.as_str()) else {
            wrong.push(format!("module `{module}` is not in the ALLOWED table of tests/architecture.rs: add a line with its imports and why"));
            continue;
        };
        for (dep, file) in deps {
            if !allowed.contains(&dep.as_str()) {
                wrong.push(format!(
                    "{}: `{module}` imports `crate::{dep}`, which the table does not allow",
                    file.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the architecture:\n{}", wrong.join("\n"));
}

#[test]
fn no_module_names_a_forbidden_path() {
    let Imports { files, .. } = imports();
    let mut wrong = Vec::new();
    for (module, path, code) in &files {
        for (m, forbidden, why) in FORBIDDEN_PATHS {
            if module == m && code.contains(forbidden) {
                wrong.push(format!("{}: `{module}` names `{forbidden}`: {why}", path.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn modules_import_each_other_in_no_circle() {
    let Imports { graph, .. } = imports();
    // Depth-first search; a back edge is a circle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeMap<String, PathBuf>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        circles: &mut Vec<String>,
    ) {
        if let Some(i) = stack.iter().position(|s| *s == m) {
            let mut circle: Vec<&str> = stack[i..].to_vec();
            circle.push(m);
            circles.push(circle.join(" -> "));
            return;
        }
        if !done.insert(m) {
            return;
        }
        stack.push(m);
        for dep in graph.get(m).map(|d| d.keys().collect::<Vec<_>>()).unwrap_or_default() {
            visit(dep, graph, stack, done, circles);
        }
        stack.pop();
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn the_scanner_sees_grouped_and_nested_imports() {
    let code =
        "use crate::{config::Config, token};\nlet x = crate::error::printable(y);\n// crate::admin in a comment\n";
    let found = crate_imports(&code_of(code));
    assert_eq!(found.into_iter().collect::<Vec<_>>(), ["config", "error", "token"]);
    // The table itself lists every module once.
    let names: BTreeSet<&str> = ALLOWED.iter().map(|(m, _, _)| *m).collect();
    assert_eq!(names.len(), ALLOWED.len());
}

// ===== the crate map =====

/// `cargo tree` of the product alone, with features, for the edges `kinds` names.
fn product_tree(kinds: &str) -> String {
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "--offline", "--locked", "-p", "goto-auth-proxy", "--prefix", "none", "-e"])
        .arg(kinds)
        .output()
        .expect("cargo tree");
    assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The binary users build runs the mock GoTo for `demo`, but not its test-only fault
/// injection and remote control: only tests, benches and the soak enable `faults`.
#[test]
fn the_product_builds_the_mock_without_its_faults() {
    let faults = "goto-mock feature \"faults\"";
    let shipped = product_tree("normal,build,features");
    assert!(shipped.contains("goto-mock v"), "the product runs the mock for `demo`:\n{shipped}");
    assert!(!shipped.contains(faults), "the shipped binary would hold the mock's faults:\n{shipped}");
    // The check can fail: the tests' edge does enable them.
    assert!(product_tree("normal,build,dev,features").contains(faults));
}

/// The workspace: the product at the root, its test equipment in `crates/`, never published.
#[test]
fn test_equipment_lives_in_unpublished_crates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for krate in ["goto-mock", "bench-tools"] {
        let manifest = std::fs::read_to_string(root.join("crates").join(krate).join("Cargo.toml")).unwrap();
        assert!(manifest.contains("publish = false"), "crates/{krate} must not be published");
    }
    let product = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(!product.contains("[[example]]"), "bench and soak programs belong in crates/bench-tools");
}

// ===== the layout map in docs/architecture.md =====

/// The first two columns of the module table: the modules a row is about, and its text.
fn layout_rows() -> Vec<(Vec<String>, String)> {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md")).unwrap();
    let ticked = |s: &str| s.split('`').skip(1).step_by(2).map(|w| w.trim_end_matches('/').to_string()).collect();
    page.lines()
        .skip_while(|l| !l.starts_with("| module |"))
        .take_while(|l| l.starts_with('|'))
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            (ticked(cells[0].trim_start_matches("| ")), cells.get(1).unwrap_or(&"").to_string())
        })
        .collect()
}

/// The map names every module of `src/lib.rs` and no module that is gone; a module with a
/// directory lists its files as `` `name` (what it is) ``, and each such file exists.
#[test]
fn the_layout_map_is_current() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let modules: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim_start_matches("pub ").strip_prefix("mod "))
        .map(|l| l.trim_end_matches(';').to_string())
        .filter(|m| !m.contains(' '))
        .collect();
    let rows = layout_rows();
    let mapped: BTreeSet<String> = rows.iter().flat_map(|(m, _)| m.clone()).collect();
    assert!(modules.len() >= 15, "{modules:?}");
    let unmapped: Vec<_> = modules.difference(&mapped).collect();
    assert!(unmapped.is_empty(), "docs/architecture.md does not map {unmapped:?}");
    let gone: Vec<_> = mapped.difference(&modules).collect();
    assert!(gone.is_empty(), "docs/architecture.md maps modules that are gone: {gone:?}");
    let mut stale = Vec::new();
    for (names, text) in &rows {
        let [dir] = names.as_slice() else { continue };
        if !src().join(dir).is_dir() {
            continue;
        }
        // `file` (what it is): a part of the directory.
        let pieces: Vec<&str> = text.split('`').collect();
        for i in (1..pieces.len()).step_by(2) {
            let name = pieces[i].trim_end_matches('/');
            let follows_paren = pieces.get(i + 1).is_some_and(|rest| rest.starts_with(" ("));
            if !follows_paren || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue;
            }
            let base = src().join(dir);
            let exists = name == "mod" || base.join(format!("{name}.rs")).exists() || base.join(name).is_dir();
            if !exists {
                stale.push(format!("{dir}/{name}"));
            }
        }
    }
    assert!(stale.is_empty(), "docs/architecture.md names files that are gone: {stale:?}");
}

/// No source file of the workspace is over 500 lines before its tests: a file that grows
/// past that holds more than one thing, and is split by what its code is.
#[test]
fn no_file_is_over_500_lines_before_its_tests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for krate in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        rust_files(&krate.path().join("src"), &mut files);
    }
    assert!(files.len() > 50, "{} files", files.len());
    let mut long = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue; // a module's tests, in a file of their own
        }
        let code = text.lines().take_while(|l| !l.starts_with("#[cfg(test)]")).count();
        if code > 500 {
            long.push(format!("{}: {code} lines", f.strip_prefix(root).unwrap().display()));
        }
    }
    assert!(long.is_empty(), "over 500 lines before the tests:\n{}", long.join("\n"));
}
