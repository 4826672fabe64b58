//! A credential's row on the status page, and the cells an account's row shares with
//! it: state, who signed in, keys, renewals.

use std::time::{Duration, SystemTime};

use maud::{html, Markup};

use crate::config::{login_path, refresh_path, GrantKind};
use crate::token::TokenInfo;

pub(super) fn credential_row(name: &str, grant: GrantKind, info: &TokenInfo, now: SystemTime) -> Markup {
    html! {
        tr data-credential=(name) {
            td data-label="Name" { strong { (name) } }
            (state_cell(info))
            td data-label="Grant" { (grant.as_str()) }
            (token_cells(info, now))
            td.actions data-label="Actions" {
                @if grant == GrantKind::AuthorizationCode {
                    a.button.primary href=(login_path(name)) { "Sign in" }
                }
                form method="post" action=(refresh_path(name)) {
                    button type="submit" { "Refresh now" }
                }
            }
        }
    }
}

/// The State cell of a credential's or an account's row: its word, and the last error.
pub(super) fn state_cell(info: &TokenInfo) -> Markup {
    let state = info.state.as_str();
    html! {
        td data-label="State" {
            span class={ "state state-" (state) } { (state) }
            @if let Some(e) = &info.last_error { div.error { (e) } }
        }
    }
}

/// The cells a credential's row and an account's row share: who signed in, the keys,
/// time left, last and next renewal, failures.
pub(super) fn token_cells(info: &TokenInfo, now: SystemTime) -> Markup {
    html! {
        td data-label="Signed in as" { (optional(info.principal.as_deref())) }
        td.keys data-label="Organizer / account key" {
            (optional(info.organizer_key.as_deref())) br; (optional(info.account_key.as_deref()))
        }
        td data-label="Time left" { (time_left(info, now)) }
        td.last-renewal data-label="Last renewal" { (when(info.last_refresh.as_deref(), now)) }
        td.next-renewal data-label="Next renewal" { (when(info.next_refresh.as_deref(), now)) }
        td.num data-label="Failures" { (info.consecutive_failures) }
    }
}

/// How long the current token lasts, or "no token".
fn time_left(info: &TokenInfo, now: SystemTime) -> Markup {
    let left = info.expires_at.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok()).map(|exp| {
        match exp.duration_since(now) {
            Ok(left) => short(left),
            Err(_) => "expired".to_string(),
        }
    });
    html! { @match left { Some(t) => { (t) }, None => span.muted { "no token" } } }
}

fn optional(v: Option<&str>) -> Markup {
    html! { @match v { Some(v) => { (v) }, None => span.muted { "—" } } }
}

/// An instant as `<time>`: the UTC time, and how far from now.
fn when(rfc: Option<&str>, now: SystemTime) -> Markup {
    let Some(rfc) = rfc else { return html! { span.muted { "—" } } };
    let relative = humantime::parse_rfc3339(rfc).ok().map(|t| match t.duration_since(now) {
        Ok(ahead) => format!("in {}", short(ahead)),
        Err(e) => format!("{} ago", short(e.duration())),
    });
    let clock = rfc.get(11..19).unwrap_or(rfc);
    html! { time datetime=(rfc) title=(rfc) { (clock) " UTC" @if let Some(r) = relative { br; span.muted { (r) } } } }
}

/// `4m 10s`: whole seconds.
fn short(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}
