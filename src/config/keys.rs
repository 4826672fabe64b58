//! The dotted key at a position of a TOML text (`routes[1].methods[0]`), so that an
//! error toml reports at a byte span can name the key instead of quoting the value.
//!
//! A text that parses is walked with `toml_edit` (the parser `toml` itself uses), so
//! tables, arrays of tables, dotted and quoted keys are read exactly as the
//! deserializer read them. A text with a syntax error has no document to walk: then the
//! longest run of whole lines before the error that does parse gives the current table,
//! and the statement the error is in is named from its own key.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Key, Table, Value};

/// One `key = value` statement or `[table]` header.
struct Entry {
    /// From the key's (or header's) first byte to the end of the line the value (or
    /// header) ends on.
    range: Range<usize>,
    /// The full dotted key: `routes[1].methods`, or for a header `credentials.g2a`.
    key: String,
    /// A `[table]` or `[[array]]` header rather than a statement.
    header: bool,
    /// For a value that is an array: where it opens and closes, and its top-level commas
    /// (so a position inside it maps to an element index).
    array: Option<ArrayShape>,
}

/// Where an array value's brackets and top-level commas are.
struct ArrayShape {
    open: usize,
    close: usize,
    commas: Vec<usize>,
}

/// The dotted key at byte `pos`: the statement or header it falls in, with an array
/// element's index (`inbound.keys[1]`); the enclosing table when it falls between
/// statements; `config` at the top of the file. Never fails, whatever the text.
pub(super) fn key_at(text: &str, pos: usize) -> String {
    match ImDocument::parse(text) {
        Ok(doc) => key_in(&entries(text, doc.as_table()), pos),
        Err(_) => key_at_broken(text, pos),
    }
}

/// Where the `key = …` statement of a dotted key (no indexes) starts, when the text
/// parses and has one.
pub(super) fn statement_start(text: &str, key: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    entries(text, doc.as_table()).into_iter().find(|e| !e.header && e.key == key).map(|e| e.range.start)
}

/// [`key_at`] over the entries of a parsed text.
fn key_in(entries: &[Entry], pos: usize) -> String {
    let mut table: Option<&str> = None;
    for e in entries {
        if e.range.start > pos {
            break;
        }
        if pos <= e.range.end {
            return match &e.array {
                Some(a) if a.open < pos && pos < a.close => {
                    let index = a.commas.iter().filter(|c| **c < pos).count();
                    format!("{}[{index}]", e.key)
                }
                _ => e.key.clone(),
            };
        }
        if e.header {
            table = Some(&e.key);
        }
    }
    table.unwrap_or("config").to_string()
}

/// Every statement and header of a parsed document, in file order.
fn entries(text: &str, root: &Table) -> Vec<Entry> {
    let mut out = Vec::new();
    walk(text, root, "", &mut out);
    out.sort_by_key(|e| e.range.start);
    out
}

/// Adds the entries of `table` (whose dotted key is `path`) and of the tables in it.
fn walk(text: &str, table: &Table, path: &str, out: &mut Vec<Entry>) {
    for (name, item) in table.iter() {
        let Some(key) = table.key(name) else { continue };
        let full = join(path, &as_written(text, key));
        match item {
            Item::None => {}
            Item::Value(value) => out.extend(statement(text, key, value, full)),
            // `a.b = 1`: the table `a` is part of a statement, not a header.
            Item::Table(t) if t.is_dotted() => walk(text, t, &full, out),
            Item::Table(t) => {
                out.extend(header(text, t, full.clone()));
                walk(text, t, &full, out);
            }
            Item::ArrayOfTables(array) => {
                for (n, t) in array.iter().enumerate() {
                    let full = format!("{full}[{n}]");
                    out.extend(header(text, t, full.clone()));
                    walk(text, t, &full, out);
                }
            }
        }
    }
}

/// The header entry of a `[table]` or `[[array]]` element; none for a table only implied
/// by a longer header (`credentials` in `[credentials.g2a]`).
fn header(text: &str, table: &Table, key: String) -> Option<Entry> {
    let start = table.span().filter(|_| !table.is_implicit())?.start;
    Some(Entry { range: start..line_end(text, start), key, header: true, array: None })
}

/// The entry of a `key = value` statement whose last key segment is `key`.
fn statement(text: &str, key: &Key, value: &Value, full: String) -> Option<Entry> {
    // A statement's key is on one line (with nothing but blanks before it), whether or
    // not it is dotted.
    let key_start = key.span()?.start;
    let line = line_start(text, key_start);
    let start = line + text.get(line..key_start)?.bytes().take_while(|b| matches!(b, b' ' | b'\t')).count();
    let span = value.span()?;
    let array = value.as_array().map(|a| ArrayShape {
        open: span.start,
        close: span.end.saturating_sub(1),
        commas: a.iter().filter_map(|v| v.span().and_then(|s| comma_after(text, s.end))).collect(),
    });
    Some(Entry { range: start..line_end(text, span.end), key: full, header: false, array })
}

/// The comma that ends an array element ending at `from`: only blanks, newlines and
/// comments may come between; `None` when the array closes first.
fn comma_after(text: &str, from: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut i = from;
    while let Some(&c) = b.get(i) {
        match c {
            b',' => return Some(i),
            b'#' => i = line_end(text, i),
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            _ => return None,
        }
    }
    None
}

/// A key segment as the file writes it: quotes removed, escapes left as written.
fn as_written(text: &str, key: &Key) -> String {
    match key.span().and_then(|s| text.get(s)) {
        Some(raw) => ['"', '\''].iter().find_map(|q| raw.strip_prefix(*q)?.strip_suffix(*q)).unwrap_or(raw).to_string(),
        None => key.get().to_string(),
    }
}

/// `path.segment`, or `segment` at the top.
fn join(path: &str, segment: &str) -> String {
    if path.is_empty() {
        segment.to_string()
    } else {
        format!("{path}.{segment}")
    }
}

/// Offset of the first byte of the line `i` is on.
fn line_start(text: &str, i: usize) -> usize {
    text.as_bytes()[..i.min(text.len())].iter().rposition(|c| *c == b'\n').map_or(0, |n| n + 1)
}

/// Offset of the newline ending the line `i` is on (or the end of the text).
fn line_end(text: &str, i: usize) -> usize {
    text.as_bytes().iter().skip(i).position(|c| *c == b'\n').map_or(text.len(), |n| i + n)
}

// ===== text that does not parse =====

/// [`key_at`] for a text with a syntax error: the text before the line the error is on
/// (or before an earlier line, when the error is inside a value that spans lines) is
/// parsed for the current table, and the statement after it, which the error is in, is
/// named from its key. An error inside an array names the array, not the element.
fn key_at_broken(text: &str, pos: usize) -> String {
    let pos = pos.min(text.len());
    let mut cut = line_start(text, pos);
    let (before, doc) = loop {
        // `cut` follows a newline, so it is a char boundary.
        let before = text.get(..cut).unwrap_or("");
        if let Ok(doc) = ImDocument::parse(before) {
            break (before, doc);
        }
        if cut == 0 {
            return "config".to_string();
        }
        cut = line_start(text, cut - 1);
    };
    let table = entries(before, doc.as_table()).into_iter().rev().find(|e| e.header).map(|e| e.key);
    let named = first_statement(text, cut).filter(|(start, _)| *start <= pos).and_then(|(_, line)| {
        if line.starts_with('[') {
            header_key(doc.as_table(), line)
        } else {
            statement_key(line, table.as_deref())
        }
    });
    named.or(table).unwrap_or_else(|| "config".to_string())
}

/// The first line from `from` that is neither blank nor a comment: where its text
/// starts, and that text.
fn first_statement(text: &str, from: usize) -> Option<(usize, &str)> {
    let mut start = from;
    while start < text.len() {
        let end = line_end(text, start);
        let line = text.get(start..end)?.trim_start_matches([' ', '\t']);
        if !line.trim().is_empty() && !line.starts_with('#') {
            return Some((end - line.len(), line));
        }
        start = end + 1;
    }
    None
}

/// The dotted key of a `[table]` or `[[array]]` header line, with the index of every
/// array of tables it passes through (`[routes.extra]` after two `[[routes]]` →
/// `routes[1].extra`) as `root`, the document before it, has them.
fn header_key(root: &Table, line: &str) -> Option<String> {
    let (inner, array) = match line.strip_prefix("[[") {
        Some(rest) => (rest.split_once("]]")?.0, true),
        None => (line.strip_prefix('[')?.split_once(']')?.0, false),
    };
    let inner = inner.trim_matches([' ', '\t']);
    let keys = Key::parse(inner).ok()?;
    let mut table = Some(root);
    let mut out = String::new();
    for (n, key) in keys.iter().enumerate() {
        out = join(&out, &as_written(inner, key));
        let item = table.and_then(|t| t.get(key.get()));
        if n + 1 == keys.len() {
            if array {
                let next = item.and_then(Item::as_array_of_tables).map_or(0, |a| a.len());
                out.push_str(&format!("[{next}]"));
            }
            break;
        }
        table = match item {
            Some(Item::ArrayOfTables(a)) => {
                let last = a.len().saturating_sub(1);
                out.push_str(&format!("[{last}]"));
                a.get(last)
            }
            Some(Item::Table(t)) => Some(t),
            _ => None,
        };
    }
    Some(out)
}

/// The dotted key of a `key = value` line in `table`; `None` when no key starts it.
fn statement_key(line: &str, table: Option<&str>) -> Option<String> {
    line.match_indices('=').find_map(|(i, _)| {
        let written = line.get(..i)?.trim_matches([' ', '\t']);
        let keys = Key::parse(written).ok()?;
        let key = keys.iter().map(|k| as_written(written, k)).collect::<Vec<_>>().join(".");
        Some(join(table.unwrap_or(""), &key))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_scanner_follows_tables_arrays_and_strings() {
        let text = "top = 1\n# [fake]\n[proxy] # c\nlisten = \"a#b\" # c\n[[routes]]\nprefix = \"\"\"\n[not.a.header]\nx = 1\"\"\"\n[[routes]]\nmethods = [\n  \"GET\", # c, d\n  'PUT',\n]\n[routes.extra]\n\"q.k\" . z = 2\n[credentials . \"g 2\"]\nk = { a = [1, 2], b = 3 }\n";
        let at = |needle: &str| key_at(text, text.find(needle).unwrap());
        assert_eq!(at("1\n#"), "top");
        assert_eq!(at("\"a#b\""), "proxy.listen");
        assert_eq!(at("[not.a"), "routes[0].prefix");
        assert_eq!(at("x = 1"), "routes[0].prefix");
        assert_eq!(at("\"GET\""), "routes[1].methods[0]");
        assert_eq!(at("'PUT'"), "routes[1].methods[1]");
        assert_eq!(at("[\n  \"GET\""), "routes[1].methods");
        assert_eq!(at("[routes.extra]"), "routes[1].extra");
        assert_eq!(at("2\n[cred"), "routes[1].extra.q.k.z");
        assert_eq!(at("b = 3"), "credentials.g 2.k");
        assert_eq!(key_at("", 0), "config");
        // Never panics on anything, including cut-off text.
        for cut in 0..text.len() {
            if text.is_char_boundary(cut) {
                let _ = key_at(&text[..cut], cut);
            }
        }
    }

    #[test]
    fn text_that_does_not_parse_names_the_statement_the_error_is_in() {
        let at = |text: &str, needle: &str| key_at(text, text.rfind(needle).unwrap());
        assert_eq!(at("[proxy]\nlisten = 127.0.0.1:80\n", "127"), "proxy.listen");
        let unterminated = "[credentials.a]\ngrant = \"static\"\ntoken = \"s3cr3t-xyz\n";
        assert_eq!(key_at(unterminated, unterminated.len()), "credentials.a.token");
        // Inside a value that spans lines: the statement starts on an earlier line.
        assert_eq!(at("[proxy]\nx = \"\"\"\nab\\qc\n\"\"\"\n", "\\q"), "proxy.x");
        assert_eq!(at("[[routes]]\nmethods = [\"GET\",\n  7777x]\n", "x]"), "routes[0].methods");
        // Headers, with the indexes of the arrays of tables before them.
        assert_eq!(at("[[routes]]\n[[routes]]\n[routes.e]\n[routes.e]\n", "[routes.e]"), "routes[1].e");
        assert_eq!(at("[proxy]\n[[proxy]]\n", "[[proxy]]"), "proxy[0]");
        assert_eq!(at("[[a]]\n[[a]]\n[[a.b]]\nx = 1\ny = 2 2\n", "2 2"), "a[1].b[0].y");
        // No statement at the error: the table it is in, or the top of the file.
        assert_eq!(at("top = 1\n[proxy\nlisten = 2\n", "[proxy"), "config");
        assert_eq!(at("[inbound]\n# \u{7f}\n", "\u{7f}"), "inbound");
    }

    #[test]
    fn statement_start_finds_a_key_written_dotted_or_indented() {
        let text = "[proxy]\nworkers = 0\n[credentials]\n  g.scope = \"x\"\n";
        assert_eq!(statement_start(text, "proxy.workers"), text.find("workers"));
        assert_eq!(statement_start(text, "credentials.g.scope"), text.find("g.scope"));
        assert_eq!(statement_start(text, "proxy.listen"), None);
        assert_eq!(statement_start("[proxy\nworkers = 0\n", "proxy.workers"), None);
    }
}
