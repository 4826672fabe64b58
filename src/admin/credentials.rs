//! A credential's row on the status page, and the cells an account's row shares with
//! it: state, who signed in, keys, renewals.

use std::time::{Duration, SystemTime};

use maud::{html, Markup};

use crate::config::{login_path, refresh_path, GrantKind};
use crate::token::{Credential, CredentialState, TokenInfo};

pub(super) fn credential_row(name: &str, credential: &Credential, info: &TokenInfo, now: SystemTime) -> Markup {
    let grant = credential.config().grant;
    let sign_in = (grant == GrantKind::AuthorizationCode).then_some("Sign in");
    html! {
        tr data-credential=(name) {
            td.name data-label="Name" { strong { (name) } div.grant.muted { (grant.as_str()) } }
            (state_cell(info, sign_in.map(|button| (button, credential))))
            (token_cells(info, now))
            td.actions data-label="Actions" {
                @if let Some(button) = sign_in {
                    a.button.primary href=(login_path(name)) { (button) }
                }
                form method="post" action=(refresh_path(name)) {
                    button type="submit" { "Refresh now" }
                }
            }
        }
    }
}

/// The State cell of a credential's or an account's row: its word, the last error, and
/// how many renewals in a row failed (0 included: the operator sees it was counted).
/// When only a person can help and the row has a sign-in button (`sign_in`: its label,
/// and the credential it signs in), the cell points at the button, and gives the
/// `login` command, with the `--config` the proxy runs with, as the other way.
pub(super) fn state_cell(info: &TokenInfo, sign_in: Option<(&str, &Credential)>) -> Markup {
    let state = info.state.as_str();
    let person = sign_in.filter(|_| info.state == CredentialState::NeedsLogin);
    let command = person.map(|(_, c)| c.login_command());
    let error = match (&info.last_error, &command) {
        (Some(e), Some(command)) => Some(without_command(e, command)),
        (e, _) => e.as_deref(),
    };
    html! {
        td.state-cell data-label="State" {
            span class={ "state state-" (state) } { (state) }
            @if let Some(e) = error { div.error { (e) } }
            @match info.consecutive_failures {
                0 => div.failures { "0 failed renewals" },
                1 => div.failures { "1 renewal failed" },
                n => div.failures { (n) " renewals in a row failed" },
            }
            @if let (Some((button, _)), Some(command)) = (person, command) {
                div.sign-in-hint { "Sign in with the " strong { (button) } " button on this row." }
                div.cli.muted { "Or run " code { (command) } }
            }
        }
    }
}

/// `error` without the "run `goto-auth-proxy login …`" it ends with, when it does: on
/// the page, the row's button says what to do.
fn without_command<'a>(error: &'a str, command: &str) -> &'a str {
    match error.strip_suffix(&format!("run `{command}`")) {
        Some(rest) => rest.trim_end_matches([':', ';', ' ']),
        None => error,
    }
}

/// The cells a credential's row and an account's row share: who signed in, the keys,
/// time left, last and next renewal.
pub(super) fn token_cells(info: &TokenInfo, now: SystemTime) -> Markup {
    html! {
        td.principal data-label="Signed in as" { (optional(info.principal.as_deref())) }
        td.keys data-label="Keys" {
            div { span.key-label { "organizer" } " " (optional(info.organizer_key.as_deref())) }
            div { span.key-label { "account" } " " (optional(info.account_key.as_deref())) }
        }
        td.time-left data-label="Time left" { (time_left(info, now)) }
        td.last-renewal data-label="Last renewal" { (when(info.last_refresh.as_deref(), now)) }
        td.next-renewal data-label="Next renewal" { (when(info.next_refresh.as_deref(), now)) }
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
