//! The status page at the admin listener's `/`: what an operator opens first. One
//! self-contained HTML page (inline style and script, both allowed by a per-response
//! nonce in its `Content-Security-Policy`; nothing fetched from elsewhere), readable
//! without JavaScript; with it, the tables refresh every few seconds. Rendered with
//! maud, which escapes every value. Never a token or a secret: it shows what
//! [`Credential::info`] and the display helpers of `config` show.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::config::{display_url, login_path, name_to_path, refresh_path, Config, GrantKind};
use crate::token::accounts::{Account, AccountSet};
use crate::token::TokenInfo;

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

/// Accounts shown per page under an account credential.
pub(super) const ACCOUNTS_PER_PAGE: usize = 50;

/// Which accounts the page shows: `/?credential=C&q=TEXT&offset=N`. The search and the
/// offset apply to credential `C` (to every account credential when `C` is not given);
/// the others show their first page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct AccountView {
    credential: Option<String>,
    q: String,
    offset: usize,
}

impl AccountView {
    /// The view a query string (`/`'s, or a form body carrying the same fields) asks for.
    pub(super) fn parse(query: &[u8]) -> AccountView {
        let mut view = AccountView::default();
        for (k, v) in url::form_urlencoded::parse(query) {
            match k.as_ref() {
                "credential" if !v.is_empty() => view.credential = Some(v.into_owned()),
                "q" => view.q = v.trim().to_string(),
                "offset" => view.offset = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        view
    }

    /// `/` showing this view again (where a form post redirects the browser).
    pub(super) fn location(&self) -> String {
        let query = self.query(self.offset);
        if query.is_empty() {
            "/".to_string()
        } else {
            format!("/?{query}")
        }
    }

    /// The search text and offset for `credential`'s accounts.
    fn of(&self, credential: &str) -> (&str, usize) {
        match &self.credential {
            Some(c) if c != credential => ("", 0),
            _ => (&self.q, self.offset),
        }
    }

    /// This view's query string at `offset` (empty fields left out).
    fn query(&self, offset: usize) -> String {
        let mut out = url::form_urlencoded::Serializer::new(String::new());
        if let Some(c) = &self.credential {
            out.append_pair("credential", c);
        }
        if !self.q.is_empty() {
            out.append_pair("q", &self.q);
        }
        if offset > 0 {
            out.append_pair("offset", &offset.to_string());
        }
        out.finish()
    }

    /// `credential`'s accounts at `offset`, searching `q`: a link of the page.
    fn link(credential: &str, q: &str, offset: usize) -> String {
        AccountView { credential: Some(credential.to_string()), q: q.to_string(), offset }.location()
    }
}

/// One page of an account credential's accounts: the matching accounts' total and the
/// page's accounts with their metadata (read for these only, never for every account).
struct AccountPage {
    counts: [(&'static str, usize); 5],
    total: usize,
    matching: usize,
    q: String,
    offset: usize,
    rows: Vec<(Arc<Account>, TokenInfo)>,
}

impl AccountPage {
    fn of(set: &AccountSet, q: &str, offset: usize) -> AccountPage {
        let index = set.index();
        let needle = q.to_lowercase();
        let mut matching = 0usize;
        let mut page = Vec::new();
        for a in index.iter().filter(|a| needle.is_empty() || matches(a, &needle)) {
            if matching >= offset && page.len() < ACCOUNTS_PER_PAGE {
                page.push(a.clone());
            }
            matching = matching.saturating_add(1);
        }
        let rows = page.into_iter().map(|a| (a.clone(), a.cred.info())).collect();
        AccountPage { counts: set.state_counts(), total: index.len(), matching, q: q.to_string(), offset, rows }
    }
}

/// Whether account `a`'s name, principal, organizer key or account key contains
/// `needle` (lower case), ignoring case. Reads the current token's fields only.
fn matches(a: &Account, needle: &str) -> bool {
    let contains = |s: &str| s.to_lowercase().contains(needle);
    if contains(&a.name) {
        return true;
    }
    let token = a.cred.load();
    token
        .as_ref()
        .as_ref()
        .is_some_and(|t| [&t.principal, &t.organizer_key, &t.account_key].into_iter().flatten().any(|s| contains(s)))
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
    let rows: Vec<(&str, GrantKind, TokenInfo, Option<AccountPage>)> = credentials
        .iter()
        .map(|(name, c)| {
            let page = accounts.get(name).map(|set| {
                let (q, offset) = view.of(name);
                AccountPage::of(set, q, offset)
            });
            (name.as_str(), c.config().grant, c.info(), page)
        })
        .collect();
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
                                @for (name, grant, info, page) in &rows {
                                    (credential_row(name, *grant, info, now))
                                    @if let Some(page) = page { (accounts_row(name, page, now)) }
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

/// Under an account credential's row: its accounts' state counts, a search box, the
/// **Connect an account** form, a page of accounts with their own buttons, and paging.
fn accounts_row(credential: &str, page: &AccountPage, now: SystemTime) -> Markup {
    let shown_to = page.offset.saturating_add(page.rows.len());
    let previous = (page.offset > 0).then(|| page.offset.saturating_sub(ACCOUNTS_PER_PAGE));
    let next = (shown_to < page.matching).then_some(shown_to);
    // The view a form post returns to: this one, for this credential.
    let back = AccountView { credential: Some(credential.to_string()), q: page.q.clone(), offset: page.offset };
    html! {
        tr.accounts data-accounts=(credential) {
            td colspan="10" {
                div.accounts-head {
                    strong { (page.total) " account" @if page.total != 1 { "s" } }
                    @for (state, n) in &page.counts {
                        " " span class={ "count state state-" (state) } data-state=(state) { (state) " " (n) }
                    }
                }
                div.accounts-tools {
                    form.search method="get" action="/" role="search" {
                        input type="hidden" name="credential" value=(credential);
                        input type="search" name="q" value=(page.q) placeholder="name, email or key" aria-label="Search accounts";
                        button type="submit" { "Search" }
                        @if !page.q.is_empty() { " " a href=(AccountView::link(credential, "", 0)) { "Show all" } }
                    }
                    form.connect method="get" action=(login_path(credential)) {
                        input type="text" name="account" placeholder="account name (optional)" aria-label="Account name" maxlength="64";
                        button.primary type="submit" { "Connect an account" }
                    }
                }
                table.accounts {
                    thead { tr {
                        th { "Account" } th { "State · last error" } th { "Signed in as" } th { "Organizer / account key" }
                        th { "Time left" } th { "Last renewal" } th { "Next renewal" } th { "Failures" } th { "Actions" }
                    } }
                    tbody {
                        @for (a, info) in &page.rows { (account_row(credential, &a.name, info, &back, now)) }
                        @if page.rows.is_empty() {
                            tr { td colspan="9" {
                                @if page.total == 0 { "No account has signed in yet: connect one." }
                                @else if page.matching == 0 { "No account matches \u{201c}" (page.q) "\u{201d}." }
                                @else { "No accounts on this page." }
                            } }
                        }
                    }
                }
                nav.paging {
                    @if page.rows.is_empty() { span.muted { "0 shown" } }
                    @else { span.muted { (page.offset + 1) "\u{2013}" (shown_to) " of " (page.matching) @if !page.q.is_empty() { " matching" } } }
                    @if let Some(p) = previous { " " a.button rel="prev" href=(AccountView::link(credential, &page.q, p)) { "\u{2190} Previous" } }
                    @if let Some(n) = next { " " a.button rel="next" href=(AccountView::link(credential, &page.q, n)) { "Next \u{2192}" } }
                }
            }
        }
    }
}

/// One account: its state and metadata, and its **Sign in again**, **Refresh now** and
/// **Remove** (which asks first) buttons. Each form carries the view to come back to.
fn account_row(credential: &str, name: &str, info: &TokenInfo, back: &AccountView, now: SystemTime) -> Markup {
    let account = name_to_path(name);
    let login = format!(
        "{}?{}",
        login_path(credential),
        url::form_urlencoded::Serializer::new(String::new()).append_pair("account", name).finish()
    );
    let refresh = format!("{}/{account}", refresh_path(credential));
    let remove = format!("/accounts/{}/{account}/remove", name_to_path(credential));
    html! {
        tr data-account=(name) {
            td data-label="Account" { strong { (name) } }
            (state_cell(info))
            (token_cells(info, now))
            td.actions data-label="Actions" {
                a.button.primary href=(login) { "Sign in again" }
                form.refresh method="post" action=(refresh) {
                    (back_fields(back))
                    button type="submit" { "Refresh now" }
                }
                form.remove method="post" action=(remove) data-account=(name) {
                    (back_fields(back))
                    label.confirm { input type="checkbox" name="confirm" value="yes" required; " yes, remove" }
                    button type="submit" { "Remove" }
                }
            }
        }
    }
}

/// The State cell of a credential's or an account's row: its word, and the last error.
fn state_cell(info: &TokenInfo) -> Markup {
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
fn token_cells(info: &TokenInfo, now: SystemTime) -> Markup {
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

/// Hidden fields that bring a form post back to `view`.
fn back_fields(view: &AccountView) -> Markup {
    html! {
        @if let Some(c) = &view.credential { input type="hidden" name="credential" value=(c); }
        @if !view.q.is_empty() { input type="hidden" name="q" value=(view.q); }
        @if view.offset > 0 { input type="hidden" name="offset" value=(view.offset); }
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

/// The answer to a **Remove** posted without "yes, remove" ticked: nothing was removed,
/// and a way back to `back` (the page the form was on).
pub(super) fn not_removed(credential: &str, account: &str, back: &str) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Nothing was removed" } }
            body {
                h1 { "Nothing was removed" }
                p { "The account " strong { (account) } " of " strong { (credential) } " is still there: tick \u{201c}yes, remove\u{201d} next to Remove to confirm." }
                p { a href=(back) { "Back to the status page" } }
            }
        }
    }
    .into_string()
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
tr.accounts > td { background: #fbfcfd; padding: 8px 10px 14px 28px; }
.accounts-head { margin: 2px 0 8px; }
.accounts-head .count { margin-left: 6px; font-weight: 500; }
.accounts-tools { display: flex; flex-wrap: wrap; gap: 8px 24px; margin-bottom: 8px; }
.accounts-tools form { display: flex; gap: 6px; align-items: center; margin: 0; }
.accounts-tools form button { margin: 0; }
input[type=search], input[type=text] { font: inherit; font-size: 13px; padding: 5px 8px; border: 1px solid #c8cdd6; border-radius: 7px; min-width: 14em; }
table.accounts { border: 1px solid var(--line); border-radius: 8px; background: var(--card); }
table.accounts th, table.accounts td { padding: 7px 8px; }
label.confirm { font-size: 12px; color: var(--muted); margin-right: 4px; }
nav.paging { margin-top: 8px; display: flex; gap: 8px; align-items: center; }
button.primary { background: var(--accent); border-color: var(--accent); color: #fff; }
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
const SCRIPT: &str = r##"
setInterval(async () => {
  try {
    // Not while someone is filling in a form (a search, an account name, "yes, remove"):
    // redrawing would wipe it.
    const busy = [...document.querySelectorAll("#credentials input")].some((i) => i === document.activeElement
      || (i.type === "checkbox" ? i.checked !== i.defaultChecked : i.value !== i.defaultValue));
    if (busy) return;
    // The same view (search, page) as the one shown: the address keeps the query.
    const res = await fetch(location.pathname + location.search, { headers: { "Accept": "text/html" }, cache: "no-store" });
    if (!res.ok) return;
    const doc = new DOMParser().parseFromString(await res.text(), "text/html");
    for (const id of ["credentials", "routes", "updated"]) {
      const fresh = doc.getElementById(id), here = document.getElementById(id);
      if (fresh && here) here.replaceWith(fresh);
    }
  } catch (e) { /* the proxy is restarting: try again next time */ }
}, REFRESH_MS);
// Remove asks once more (the form's "yes, remove" box is the question without JavaScript).
document.addEventListener("submit", (e) => {
  const form = e.target;
  if (form.classList.contains("remove") && !confirm("Remove the account " + form.dataset.account + "? Its tokens are deleted; the person must sign in again.")) {
    e.preventDefault();
  }
});
"##;
