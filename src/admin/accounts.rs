//! The accounts of an account credential on the status page: which page of them is
//! shown (search, paging), and their rows with their own buttons.

use std::sync::Arc;
use std::time::SystemTime;

use maud::{html, Markup};

use crate::config::{login_path, name_to_path, refresh_path};
use crate::token::accounts::{Account, AccountSet};
use crate::token::TokenInfo;

use super::credentials::{state_cell, token_cells};

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
    pub(super) fn of(&self, credential: &str) -> (&str, usize) {
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
pub(super) struct AccountPage {
    counts: [(&'static str, usize); 5],
    total: usize,
    matching: usize,
    q: String,
    offset: usize,
    rows: Vec<(Arc<Account>, TokenInfo)>,
}

impl AccountPage {
    pub(super) fn of(set: &AccountSet, q: &str, offset: usize) -> AccountPage {
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

/// Under an account credential's row: its accounts' state counts, a search box, the
/// **Connect an account** form, a page of accounts with their own buttons, and paging.
pub(super) fn accounts_row(credential: &str, page: &AccountPage, now: SystemTime) -> Markup {
    let shown_to = page.offset.saturating_add(page.rows.len());
    let previous = (page.offset > 0).then(|| page.offset.saturating_sub(ACCOUNTS_PER_PAGE));
    let next = (shown_to < page.matching).then_some(shown_to);
    // The view a form post returns to: this one, for this credential.
    let back = AccountView { credential: Some(credential.to_string()), q: page.q.clone(), offset: page.offset };
    html! {
        tr.accounts data-accounts=(credential) {
            td colspan="8" {
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
                        th { "Account" } th { "State · last error" } th { "Signed in as" } th { "Keys" }
                        th { "Time left" } th { "Last renewal" } th { "Next renewal" } th { "Actions" }
                    } }
                    tbody {
                        @for (a, info) in &page.rows { (account_row(credential, a, info, &back, now)) }
                        @if page.rows.is_empty() {
                            tr { td colspan="8" {
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

/// An account row's button that signs its person in again.
const SIGN_IN_AGAIN: &str = "Sign in again";

/// One account: its state and metadata, and its **Sign in again**, **Refresh now** and
/// **Remove** (which asks first) buttons. Each form carries the view to come back to.
fn account_row(credential: &str, account: &Account, info: &TokenInfo, back: &AccountView, now: SystemTime) -> Markup {
    let name = account.name.as_str();
    let path = name_to_path(name);
    let login = format!(
        "{}?{}",
        login_path(credential),
        url::form_urlencoded::Serializer::new(String::new()).append_pair("account", name).finish()
    );
    let refresh = format!("{}/{path}", refresh_path(credential));
    let remove = format!("/accounts/{}/{path}/remove", name_to_path(credential));
    html! {
        tr data-account=(name) {
            td.name data-label="Account" { strong { (name) } }
            (state_cell(info, Some((SIGN_IN_AGAIN, &account.cred))))
            (token_cells(info, now))
            td.actions data-label="Actions" {
                a.button.primary href=(login) { (SIGN_IN_AGAIN) }
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

/// Hidden fields that bring a form post back to `view`.
fn back_fields(view: &AccountView) -> Markup {
    html! {
        @if let Some(c) = &view.credential { input type="hidden" name="credential" value=(c); }
        @if !view.q.is_empty() { input type="hidden" name="q" value=(view.q); }
        @if view.offset > 0 { input type="hidden" name="offset" value=(view.offset); }
    }
}
