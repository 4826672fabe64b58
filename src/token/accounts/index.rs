//! The index the data path reads to choose an account: names, and the principals and
//! keys an account is also known by.

use std::sync::Arc;

use super::Account;

/// Accounts by name, and by what else a request may call them: principal (any case),
/// organizer key, account key. An alias two accounts share chooses neither. Persistent
/// maps (`imbl`): adding or removing one account copies a path, not the whole index, so a
/// first wave of thousands of sign-ins costs O(n log n), not O(n²).
#[derive(Clone, Default)]
pub(crate) struct AccountIndex {
    /// Each account with the aliases it was indexed under (what its token said then).
    by_name: imbl::OrdMap<String, (Arc<Account>, Arc<[String]>)>,
    alias: imbl::HashMap<String, Alias>,
}

/// Who an alias names: `only` while exactly one account has it.
#[derive(Clone)]
struct Alias {
    count: u32,
    only: Option<Arc<Account>>,
}

/// What a request may call `a` besides its name, from its current token.
fn aliases_of(a: &Account) -> Arc<[String]> {
    let token = a.cred.load();
    let Some(t) = token.as_ref() else { return Arc::from([]) };
    [t.principal.as_ref().map(|p| p.to_ascii_lowercase()), t.organizer_key.clone(), t.account_key.clone()]
        .into_iter()
        .flatten()
        .collect()
}

impl AccountIndex {
    pub(super) fn build(accounts: impl IntoIterator<Item = Arc<Account>>) -> AccountIndex {
        accounts.into_iter().fold(AccountIndex::default(), |index, a| index.with(a))
    }

    /// This index with `a` added (or, under its name, indexed again from its token).
    pub(super) fn with(&self, a: Arc<Account>) -> AccountIndex {
        let mut next = self.without(&a.name);
        let aliases = aliases_of(&a);
        for alias in aliases.iter() {
            let entry = match next.alias.get(alias) {
                Some(seen) => Alias { count: seen.count.saturating_add(1), only: None },
                None => Alias { count: 1, only: Some(a.clone()) },
            };
            next.alias.insert(alias.clone(), entry);
        }
        next.by_name.insert(a.name.clone(), (a, aliases));
        next
    }

    /// This index without the account `name`. An alias it shared with exactly one other
    /// account names that one again (found by a scan: removals are rare).
    pub(super) fn without(&self, name: &str) -> AccountIndex {
        let mut next = self.clone();
        let Some((_, aliases)) = next.by_name.remove(name) else { return next };
        for alias in aliases.iter() {
            let Some(seen) = next.alias.get(alias).cloned() else { continue };
            match seen.count {
                0 | 1 => {
                    next.alias.remove(alias);
                }
                2 => {
                    let only = next.by_name.values().find(|(_, a)| a.contains(alias)).map(|(acc, _)| acc.clone());
                    next.alias.insert(alias.clone(), Alias { count: 1, only });
                }
                n => {
                    next.alias.insert(alias.clone(), Alias { count: n.saturating_sub(1), only: None });
                }
            }
        }
        next
    }

    /// Whether `a` is indexed under the aliases its token gives now (a renewal may bring
    /// new keys or a new principal).
    pub(super) fn current(&self, a: &Account) -> bool {
        self.by_name.get(&a.name).is_some_and(|(_, indexed)| **indexed == *aliases_of(a))
    }

    /// The accounts in name order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.by_name.values().map(|(a, _)| a)
    }

    /// How many there are.
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The account named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Account>> {
        self.by_name.get(name).map(|(a, _)| a)
    }

    /// The account an `X-GoTo-Account` value names: its name, principal, organizer or
    /// account key.
    pub(crate) fn named(&self, value: &str) -> Option<&Arc<Account>> {
        if let Some(a) = self.get(value) {
            return Some(a);
        }
        if let Some(found) = self.alias.get(value) {
            return found.only.as_ref();
        }
        if value.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.alias.get(&value.to_ascii_lowercase()).and_then(|f| f.only.as_ref());
        }
        None
    }

    /// The one account whose organizer or account key is `key`.
    pub(crate) fn keyed(&self, key: &str) -> Option<&Arc<Account>> {
        self.alias.get(key).and_then(|f| f.only.as_ref())
    }
}
