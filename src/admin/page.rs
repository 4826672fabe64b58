//! The status page at the admin listener's `/`: what an operator opens first. One
//! self-contained HTML page (inline style and script, both allowed by a per-response
//! nonce in its `Content-Security-Policy`; nothing fetched from elsewhere), readable
//! without JavaScript; with it, the tables refresh every few seconds. Rendered with
//! maud, which escapes every value. Never a token or a secret: it shows what
//! [`Credential::info`] and the display helpers of `config` show.

use std::collections::BTreeMap;
use std::time::SystemTime;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::config::{display_url, Config};
use crate::login::Outcome;
use crate::token::{Credential, TokenInfo};

use super::accounts::{accounts_row, AccountPage, AccountView};
use super::credentials::credential_row;
use super::{AccountSets, Credentials};

/// How often the inline script fetches the page again.
const REFRESH_SECS: u32 = 5;

/// The `Content-Security-Policy` of a page whose inline style and script carry `nonce`:
/// nothing else may run or load; fetches and forms go to this listener only — and, for
/// forms, on to `sign_in_origins` (a browser holds a form's redirect to `form-action`
/// too, and **Connect an account** is a form that `/login` redirects to the sign-in page).
pub(super) fn content_security_policy(nonce: &str, sign_in_origins: &[String]) -> String {
    let mut form_action = String::from("'self'");
    for origin in sign_in_origins {
        form_action.push(' ');
        form_action.push_str(origin);
    }
    format!(
        "default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; connect-src 'self'; \
         img-src 'self'; form-action {form_action}; base-uri 'none'; frame-ancestors 'none'"
    )
}

/// The origins (`https://host[:port]`) of the account credentials' sign-in pages: where
/// the page's **Connect an account** forms end up.
pub(super) fn sign_in_origins(config: &Config) -> Vec<String> {
    let mut origins: Vec<String> = config
        .credentials
        .values()
        .filter(|c| c.accounts)
        .filter_map(|c| url::Url::parse(&c.authorize_url).ok())
        .map(|u| u.origin())
        .filter(|o| o.is_tuple())
        .map(|o| o.ascii_serialization())
        .collect();
    origins.sort();
    origins.dedup();
    origins
}

/// The page: a row per credential (an account credential's accounts under it, a page at
/// a time, see [`AccountView`]) and per route.
pub(super) fn render(
    config: &Config,
    credentials: &Credentials,
    accounts: &AccountSets,
    requests: &BTreeMap<String, u64>,
    view: &AccountView,
    nonce: &str,
) -> String {
    let now = SystemTime::now();
    let rows: Vec<(&str, &Credential, TokenInfo, Option<AccountPage>)> = credentials
        .iter()
        .map(|(name, c)| {
            let page = accounts.get(name).map(|set| {
                let (q, offset) = view.of(name);
                AccountPage::of(set, q, offset)
            });
            (name.as_str(), c.as_ref(), c.info(), page)
        })
        .collect();
    let body = html! {
        header {
            h1 { "goto-auth-proxy" }
            p.muted id="updated" { "As of " (rfc3339(now)) " · " a href="/tokens" { "/tokens" } " · " a href="/metrics" { "/metrics" } " · " a href="/readyz" { "/readyz" } }
        }
        main {
            h2 { "Credentials" }
            div.scroll {
                table id="credentials" {
                    thead { tr {
                        th { "Name · grant" } th { "State · last error" } th { "Signed in as" } th { "Keys" }
                        th { "Time left" } th { "Last renewal" } th { "Next renewal" } th { "Actions" }
                    } }
                    tbody {
                        @for (name, credential, info, page) in &rows {
                            (credential_row(name, credential, info, now))
                            @if let Some(page) = page { (accounts_row(name, page, now)) }
                        }
                        @if rows.is_empty() {
                            tr { td colspan="8" { "No credentials are configured." } }
                        }
                    }
                }
            }
            h2 { "Routes" }
            div.scroll {
                table id="routes" {
                    thead { tr { th { "Prefix" } th { "Upstream" } th { "Credential" } th { "Rate limit" } th { "Requests served" } } }
                    tbody {
                        @for r in &config.routes {
                            tr {
                                td data-label="Prefix" { code { (r.prefix) } }
                                td data-label="Upstream" { (display_url(&r.upstream)) }
                                td data-label="Credential" {
                                    @match &r.credential { Some(c) => { (c) }, None => span.muted { "none (passed through)" } }
                                }
                                td data-label="Rate limit" {
                                    @match r.rate_limit { Some(l) => { (l) " / s" }, None => span.muted { "none" } }
                                }
                                td.num data-label="Requests served" { (requests.get(&r.prefix).copied().unwrap_or(0)) }
                            }
                        }
                    }
                }
            }
        }
        script nonce=(nonce) { (PreEscaped(SCRIPT.replace("REFRESH_MS", &(REFRESH_SECS * 1000).to_string()))) }
    };
    document("goto-auth-proxy", nonce, body)
}

/// The answer to a **Remove** posted without "yes, remove" ticked: nothing was removed,
/// and a way back to `back` (the page the form was on).
pub(super) fn not_removed(credential: &str, account: &str, back: &str, nonce: &str) -> String {
    message(
        "Nothing was removed",
        nonce,
        html! { "The account " strong { (account) } " of " strong { (credential) } " is still there: tick \u{201c}yes, remove\u{201d} next to Remove to confirm." },
        back,
    )
}

/// The page a sign-in's `/callback` answers with, signed in or not: in the status page's
/// look, and with a way back to it.
pub(super) fn after_sign_in(outcome: &Outcome, nonce: &str) -> String {
    // Relative: the status page is `/` of the listener serving `/callback`, also behind a
    // reverse proxy that serves it under a path.
    message(outcome.title, nonce, outcome.message.clone(), "./")
}

/// A page of one message in the status page's look, with a link back to the page at
/// `back`.
fn message(title: &str, nonce: &str, said: Markup, back: &str) -> String {
    let body = html! {
        header { h1 { "goto-auth-proxy" } }
        main.message {
            h2 { (title) }
            p { (said) }
            p { a.button.primary href=(back) { "Back to the status page" } }
        }
    };
    document(title, nonce, body)
}

/// An HTML document of this listener: `title`, the page's style (allowed by `nonce`),
/// and `body`.
fn document(title: &str, nonce: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style nonce=(nonce) { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
    .into_string()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The look of the status page and of the pages it leads to: plain CSS; long values
/// wrap, so a 1,280 px window shows every column.
const STYLE: &str = include_str!("page.css");

/// Fetches the page again and swaps its tables in; without JavaScript the page is
/// simply static (reload it).
const SCRIPT: &str = include_str!("page.js");
