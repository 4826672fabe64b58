//! Logging to stderr: the subscriber (`RUST_LOG` filter, text or JSON lines) and the one
//! place that makes every line safe to read. Text from outside (paths, methods, query
//! values, error text of token endpoints, keys endpoints, upstreams and Redis) reaches
//! log fields from many call sites; the writer escapes control characters in whatever
//! it is given, so a call site that forgets cannot let a newline forge a second line or
//! an escape sequence drive the reader's terminal.

use std::io::{self, Write};

/// Log lines the non-blocking writer holds before it drops (80 ms of access log at 50k
/// requests/s; the writer thread, gathering lines into one `write`, kept up with 40k
/// requests/s on the CPU it shares with the proxy, dropping none). The ring is allocated
/// and touched at start, 32 bytes a line: tracing-appender's default, 128,000, would be
/// 4 MiB of resident memory for a sidecar that idles at a few.
const LOG_BUFFER_LINES: usize = 4_096;

/// Bytes the log writer thread gathers before a `write` (it also writes whenever no line
/// is waiting).
const LOG_WRITE_BUFFER: usize = 64 * 1024;

/// How lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `key=value` text, one line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs to stderr through a non-blocking writer (a thread of its own writes; a request
/// never waits on the terminal or a full pipe — under extreme overload lines are dropped
/// instead). In JSON, an access log line's fields are top-level keys; other lines keep
/// theirs under `fields`. The returned guard flushes the lines still queued when dropped.
///
/// No colours, even on a terminal: the writer escapes every escape character, the
/// formatter's own as well as one smuggled in by a field, so a line on screen is always
/// the line in the file.
pub(crate) fn init(format: Format) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{filter::filter_fn, fmt, Layer as _};

    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    // The writer thread drains every line waiting, then flushes: buffered, a busy access
    // log costs one `write` per batch instead of one per line (stderr is unbuffered), and
    // a quiet one is still written at once. Escaping happens on that thread too, never on
    // a request's.
    let stderr = Escaping::new(std::io::BufWriter::with_capacity(LOG_WRITE_BUFFER, std::io::stderr()), format);
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .finish(stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        Format::Text => registry.with(fmt::layer().with_writer(writer).with_ansi(false)).init(),
        Format::Json => {
            let access = |m: &tracing::Metadata<'_>| m.target() == crate::proxy::access::TARGET;
            registry
                .with(fmt::layer().json().with_writer(writer.clone()).with_filter(filter_fn(move |m| !access(m))))
                .with(fmt::layer().json().flatten_event(true).with_writer(writer).with_filter(filter_fn(access)))
                .init()
        }
    }
    guard
}

/// The log filter from `RUST_LOG`: a default level and `target=level` pairs, comma
/// separated (`warn,goto_auth_proxy::access=info`); unset or unreadable means `info`.
/// `Targets` rather than `EnvFilter`: the same syntax for what operators write, without
/// a regular-expression engine in the binary (span and field filters are not supported).
pub(crate) fn filter(spec: Option<&str>) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    spec.filter(|s| !s.trim().is_empty())
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
}

/// A writer that receives one whole log event per `write` (the formatter writes each
/// event with one `write_all`, and the non-blocking writer's thread hands each event on
/// as one message) and passes it on with every control character escaped — C0, DEL and
/// C1 — except the one newline that ends the event.
pub(crate) struct Escaping<W> {
    inner: W,
    format: Format,
}

impl<W: Write> Escaping<W> {
    /// Escapes for `format` what it writes to `inner`.
    pub(crate) fn new(inner: W, format: Format) -> Escaping<W> {
        Escaping { inner, format }
    }
}

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, event: &[u8]) -> io::Result<usize> {
        escape_event(event, self.format, &mut self.inner)?;
        Ok(event.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A byte that is, or (0xC2) may begin, a control character.
fn is_special(b: u8) -> bool {
    b < 0x20 || b == 0x7f || b == 0xc2
}

/// Where the first [`is_special`] byte is. Chunk by chunk without an early exit inside a
/// chunk, which the compiler turns into vector compares: a 230-byte access line is
/// scanned in about 40 ns, where a byte-by-byte search took 500.
fn first_special(bytes: &[u8]) -> Option<usize> {
    let mut offset = 0;
    for chunk in bytes.chunks(32) {
        if chunk.iter().fold(false, |any, &b| any | is_special(b)) {
            return chunk.iter().position(|&b| is_special(b)).map(|at| offset + at);
        }
        offset += chunk.len();
    }
    None
}

/// Writes `event` to `out` with its control characters escaped: in text as `\n`, `\r`,
/// `\t`, `\0`, `\x1b`… (C1 as `\u{9b}`); in JSON, where the formatter already escapes C0
/// inside strings (and nothing but strings can hold one), DEL and C1 as `\u007f`,
/// `\u009b`. One trailing newline stays. A line without any (the usual case) is one
/// scan and one copy.
fn escape_event(event: &[u8], format: Format, out: &mut impl Write) -> io::Result<()> {
    let (body, newline) = match event.split_last() {
        Some((b'\n', body)) => (body, true),
        _ => (event, false),
    };
    let mut clean = 0;
    let mut i = 0;
    while let Some(at) = first_special(&body[i..]) {
        i += at;
        // U+0080..=U+009F is 0xC2 then 0x80..=0x9F in UTF-8; the code point is that
        // second byte. Other 0xC2 sequences (`©`, `°`, no-break space) stay.
        let (code, width) = match (body[i], body.get(i + 1)) {
            (0xc2, Some(&c @ 0x80..=0x9f)) => (c, 2),
            (0xc2, _) => {
                i += 1;
                continue;
            }
            (b, _) => (b, 1),
        };
        out.write_all(&body[clean..i])?;
        match (format, code) {
            (Format::Json, c) => write!(out, "\\u{c:04x}")?,
            (Format::Text, b'\n') => out.write_all(b"\\n")?,
            (Format::Text, b'\r') => out.write_all(b"\\r")?,
            (Format::Text, b'\t') => out.write_all(b"\\t")?,
            (Format::Text, 0) => out.write_all(b"\\0")?,
            (Format::Text, c) if width == 1 => write!(out, "\\x{c:02x}")?,
            (Format::Text, c) => write!(out, "\\u{{{c:x}}}")?,
        }
        i += width;
        clean = i;
    }
    out.write_all(&body[clean..])?;
    if newline {
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn escaped(event: &str, format: Format) -> String {
        let mut out = Vec::new();
        Escaping::new(&mut out, format).write_all(event.as_bytes()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_keeps_one_final_newline_and_escapes_every_other_control_character() {
        let forged =
            "INFO error_description=x\nINFO goto_auth_proxy::access: status=200\u{1b}[31m\r\0\t\u{7f}\u{9b}2J end\n";
        assert_eq!(
            escaped(forged, Format::Text),
            "INFO error_description=x\\nINFO goto_auth_proxy::access: status=200\\x1b[31m\\r\\0\\t\\x7f\\u{9b}2J end\n"
        );
        assert_eq!(escaped("a\u{1}b\u{1f}", Format::Text), "a\\x01b\\x1f", "no newline added");
        assert_eq!(escaped("plain line\n", Format::Text), "plain line\n");
        assert_eq!(escaped("© 20° ü\u{a0}€ 🦀\n", Format::Text), "© 20° ü\u{a0}€ 🦀\n", "printable UTF-8 stays");
        assert_eq!(escaped("\n\n", Format::Text), "\\n\n");
        let long = "a".repeat(70);
        assert_eq!(
            escaped(&format!("{long}©{long}\u{85}{long}\n"), Format::Text),
            format!("{long}©{long}\\u{{85}}{long}\n")
        );
    }

    #[test]
    fn json_escapes_what_json_leaves_raw_as_json_escapes() {
        let line = serde_json::json!({ "path": "/a\u{1b}[2J\u{7f}\u{85}b\n" }).to_string() + "\n";
        let out = escaped(&line, Format::Json);
        assert_eq!(out, "{\"path\":\"/a\\u001b[2J\\u007f\\u0085b\\n\"}\n");
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["path"], "/a\u{1b}[2J\u{7f}\u{85}b\n", "still the same JSON value");
    }

    #[test]
    fn rust_log_takes_a_default_level_and_per_target_levels() {
        let access = crate::proxy::access::TARGET;
        let f = filter(Some("warn,goto_auth_proxy::access=info"));
        assert!(f.would_enable(access, &Level::INFO));
        assert!(!f.would_enable("goto_auth_proxy::token", &Level::INFO));
        assert!(f.would_enable("hyper", &Level::WARN));

        let f = filter(Some("info,goto_auth_proxy::access=off"));
        assert!(!f.would_enable(access, &Level::ERROR));
        assert!(f.would_enable("goto_auth_proxy::token", &Level::INFO));
        assert!(!f.would_enable("goto_auth_proxy::token", &Level::DEBUG));
    }

    #[test]
    fn unset_empty_or_unreadable_rust_log_means_info() {
        for spec in [None, Some(""), Some("  "), Some("=="), Some("info,x=loud")] {
            let f = filter(spec);
            assert!(f.would_enable("goto_auth_proxy", &Level::INFO), "{spec:?}");
            assert!(!f.would_enable("goto_auth_proxy", &Level::DEBUG), "{spec:?}");
        }
    }
}
