//! What a token endpoint says back, with every secret the request sent blanked out:
//! an endpoint may quote a secret back in an error text, in any spelling.

/// `text` with every secret of four characters or more (shorter ones would blank out
/// ordinary words) replaced by `***`, in each spelling an endpoint may quote it back in:
/// as sent, in any ASCII case, percent-encoded (either case of hex digit, any mix of
/// encoded and plain characters, `+` or `%20` for a space), and inside base64 (as a Basic
/// header carries `client_id:client_secret`, whatever the client id).
///
/// Only the first [`BLANK_LIMIT`] bytes are kept (then `…`): the search costs the text's
/// length times the secrets', and callers show a few hundred characters at most, so a
/// hostile megabyte of error text costs no more than a short one.
pub(super) fn blank_out<'a>(text: &'a str, secrets: &[std::borrow::Cow<'_, str>]) -> std::borrow::Cow<'a, str> {
    let secrets: Vec<&[u8]> = secrets.iter().filter(|s| s.chars().count() >= 4).map(|s| s.as_bytes()).collect();
    let cut = (0..=BLANK_LIMIT.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let (text, cut_off) = (&text[..cut], cut < text.len());
    let bytes = text.as_bytes();
    let mut found: Vec<(usize, usize)> = Vec::new();
    for start in (0..bytes.len()).filter(|&i| text.is_char_boundary(i)) {
        let end = secrets.iter().filter_map(|s| spelled_at(bytes, start, s)).max();
        if let Some(end) = end.filter(|&e| text.is_char_boundary(e)) {
            found.push((start, end));
        }
    }
    found.extend(base64_runs(bytes).filter(|&(s, e)| holds_secret_in_base64(&bytes[s..e], &secrets)));
    if found.is_empty() && !cut_off {
        return std::borrow::Cow::Borrowed(text);
    }
    found.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end) in found {
        if end <= copied {
            continue;
        }
        if start >= copied {
            out.push_str(&text[copied..start]);
            out.push_str("***");
        }
        copied = end;
    }
    out.push_str(&text[copied..]);
    if cut_off {
        out.push('…');
    }
    std::borrow::Cow::Owned(out)
}

/// How much of an outside error text [`blank_out`] searches and keeps.
pub(super) const BLANK_LIMIT: usize = 8 * 1024;

/// Where a spelling of `secret` that begins at `text[start]` ends: each of its bytes as
/// itself in any ASCII case, as `%XX` (either case), or a space as `+`.
fn spelled_at(text: &[u8], start: usize, secret: &[u8]) -> Option<usize> {
    // Every position a spelling of the secret so far may end at (`%` matches itself or
    // begins `%25`, so more than one).
    let mut ends: smallvec::SmallVec<[usize; 4]> = smallvec::smallvec![start];
    for &want in secret {
        let mut next = smallvec::SmallVec::<[usize; 4]>::new();
        for &at in &ends {
            let Some(&got) = text.get(at) else { continue };
            if got.eq_ignore_ascii_case(&want) || (want == b' ' && got == b'+') {
                next.push(at.saturating_add(1));
            }
            let decoded =
                text.get(at.saturating_add(1)..at.saturating_add(3)).and_then(|h| std::str::from_utf8(h).ok());
            if got == b'%'
                && decoded.and_then(|h| u8::from_str_radix(h, 16).ok()).is_some_and(|d| d.eq_ignore_ascii_case(&want))
            {
                next.push(at.saturating_add(3));
            }
        }
        next.sort_unstable();
        next.dedup();
        if next.is_empty() {
            return None;
        }
        ends = next;
    }
    ends.last().copied()
}

/// The stretches of `text` that may be base64 (standard or URL-safe alphabet, at least
/// six characters, with their `=` padding).
fn base64_runs(text: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let is_b64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_');
    let mut from = 0usize;
    std::iter::from_fn(move || loop {
        let start = from.saturating_add(text.get(from..)?.iter().position(is_b64)?);
        let core = text.get(start..)?.iter().take_while(|b| is_b64(b)).count();
        let core_end = start.saturating_add(core);
        let padding = text.get(core_end..)?.iter().take(2).take_while(|&&b| b == b'=').count();
        from = core_end.saturating_add(padding);
        if core >= 6 {
            return Some((start, from));
        }
    })
}

/// Whether `run`, decoded as base64 from any of its first four characters (it may be
/// glued to a word before it), holds a secret in any spelling.
fn holds_secret_in_base64(run: &[u8], secrets: &[&[u8]]) -> bool {
    use base64::engine::{general_purpose::GeneralPurposeConfig, DecodePaddingMode, GeneralPurpose};
    use base64::{alphabet, Engine as _};
    let config = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true);
    let engines = [GeneralPurpose::new(&alphabet::STANDARD, config), GeneralPurpose::new(&alphabet::URL_SAFE, config)];
    let core = run.strip_suffix(b"==").or_else(|| run.strip_suffix(b"=")).unwrap_or(run);
    (0..4).filter_map(|skip| core.get(skip..)).any(|part| {
        let whole = part.get(..part.len().saturating_sub(part.len() % 4)).unwrap_or(part);
        // A last group of two or three characters is a byte or two; of one, nothing.
        let part = if part.len() % 4 == 1 { whole } else { part };
        engines.iter().filter_map(|e| e.decode(part).ok()).any(|decoded| {
            (0..decoded.len()).any(|start| secrets.iter().any(|s| spelled_at(&decoded, start, s).is_some()))
        })
    })
}
