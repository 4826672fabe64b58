//! The status page at the admin listener's `/`: what an operator opens first. One
//! self-contained HTML page (inline style and script, both allowed by a per-response
//! nonce in its `Content-Security-Policy`; nothing fetched from elsewhere), readable
//! without JavaScript; with it, the tables refresh every few seconds. Rendered with
//! maud, which escapes every value. Never a token or a secret: it shows what
//! [`Credential::info`] and the display helpers of `config` show.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::config::{display_url, login_path, refresh_path, Config, GrantKind};
use crate::token::TokenInfo;

use super::Credentials;

/// How often the inline script fetches the page again.
const REFRESH_SECS: u32 = 5;

/// The `Content-Security-Policy` of a page whose inline style and script carry `nonce`:
/// nothing else may run or load; fetches and form posts go to this listener only.
pub(super) fn content_security_policy(nonce: &str) -> String {
    format!(
        "default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; connect-src 'self'; \
         img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
}

/// The page: a row per credential and per route.
pub(super) fn render(
    config: &Config,
    credentials: &Credentials,
    requests: &BTreeMap<String, u64>,
    nonce: &str,
) -> String {
    let now = SystemTime::now();
    let rows: Vec<(&str, GrantKind, TokenInfo)> =
        credentials.iter().map(|(name, c)| (name.as_str(), c.config().grant, c.info())).collect();
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "goto-auth-proxy" }
                style nonce=(nonce) { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "goto-auth-proxy" }
                    p.muted id="updated" { "As of " (rfc3339(now)) " · " a href="/tokens" { "/tokens" } " · " a href="/metrics" { "/metrics" } " · " a href="/readyz" { "/readyz" } }
                }
                main {
                    h2 { "Credentials" }
                    div.scroll {
                        table id="credentials" {
                            thead { tr {
                                th { "Name" } th { "State · last error" } th { "Grant" } th { "Signed in as" } th { "Organizer / account key" }
                                th { "Time left" } th { "Last renewal" } th { "Next renewal" } th { "Failures" } th { "Actions" }
                            } }
                            tbody {
                                @for (name, grant, info) in &rows {
                                    (credential_row(name, *grant, info, now))
                                }
                                @if rows.is_empty() {
                                    tr { td colspan="10" { "No credentials are configured." } }
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
            }
        }
    };
    page.into_string()
}

fn credential_row(name: &str, grant: GrantKind, info: &TokenInfo, now: SystemTime) -> Markup {
    let state = info.state.as_str();
    let time_left = info.expires_at.as_deref().and_then(|t| humantime::parse_rfc3339(t).ok()).map(|exp| {
        match exp.duration_since(now) {
            Ok(left) => short(left),
            Err(_) => "expired".to_string(),
        }
    });
    html! {
        tr data-credential=(name) {
            td data-label="Name" { strong { (name) } }
            td data-label="State" {
                span class={ "state state-" (state) } { (state) }
                @if let Some(e) = &info.last_error { div.error { (e) } }
            }
            td data-label="Grant" { (grant.as_str()) }
            td data-label="Signed in as" { (optional(info.principal.as_deref())) }
            td.keys data-label="Organizer / account key" {
                (optional(info.organizer_key.as_deref())) br; (optional(info.account_key.as_deref()))
            }
            td data-label="Time left" { @match time_left { Some(t) => { (t) }, None => span.muted { "no token" } } }
            td.last-renewal data-label="Last renewal" { (when(info.last_refresh.as_deref(), now)) }
            td.next-renewal data-label="Next renewal" { (when(info.next_refresh.as_deref(), now)) }
            td.num data-label="Failures" { (info.consecutive_failures) }
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

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

const STYLE: &str = r#"
:root { color-scheme: light; --fg:#1d2430; --muted:#667085; --line:#e4e7ec; --bg:#f7f8fa; --card:#fff; --accent:#1f5fd6; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color:var(--fg); background:var(--bg); }
header { padding: 20px 24px 4px; }
h1 { font-size: 22px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 16px; margin: 24px 0 8px; }
main { padding: 0 24px 32px; }
.muted { color: var(--muted); }
a { color: var(--accent); }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.scroll { overflow-x: auto; background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 10px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); font-weight: 600; white-space: nowrap; }
tr:last-child td { border-bottom: 0; }
td.num { font-variant-numeric: tabular-nums; }
.error { margin-top: 6px; font-size: 13px; color: #7a2e0e; max-width: 24em; overflow-wrap: anywhere; }
td.keys { font: 13px/1.5 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
td.actions { white-space: nowrap; }
td.actions form { display: inline; margin: 0; }
.state { display: inline-block; padding: 2px 9px; border-radius: 999px; font-size: 13px; font-weight: 600; white-space: nowrap; }
.state::before { content: "●"; margin-right: 5px; }
.state-valid { background: #e3f5e8; color: #146c2e; }
.state-renewing { background: #e6effd; color: #1f4fa8; }
.state-needs_login { background: #fde8e7; color: #a3231b; }
.state-failing { background: #fff1db; color: #8a4b00; }
.state-no_token { background: #eceef2; color: #475467; }
button, .button { font: inherit; font-size: 13px; padding: 5px 11px; border-radius: 7px; border: 1px solid #c8cdd6; background: #fff; color: var(--fg); cursor: pointer; text-decoration: none; display: inline-block; margin: 0 4px 4px 0; }
.button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
button:hover, .button:hover { filter: brightness(0.95); }
@media (max-width: 760px) {
  header, main { padding-left: 12px; padding-right: 12px; }
  table, thead, tbody, tr, td { display: block; }
  thead { display: none; }
  tr { border-bottom: 1px solid var(--line); padding: 6px 0; }
  td { border: 0; padding: 4px 12px; }
  td::before { content: attr(data-label); display: block; font-size: 11px; text-transform: uppercase; color: var(--muted); }
}
"#;

/// Fetches the page again and swaps its tables in; without JavaScript the page is
/// simply static (reload it).
const SCRIPT: &str = r#"
setInterval(async () => {
  try {
    const res = await fetch("/", { headers: { "Accept": "text/html" }, cache: "no-store" });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    for (const id of ["credentials", "routes", "updated"]) {
      const fresh = doc.getElementById(id), here = document.getElementById(id);
      if (fresh && here) here.replaceWith(fresh);
    }
  } catch (e) { /* the proxy is restarting: try again next time */ }
}, REFRESH_MS);
"#;
