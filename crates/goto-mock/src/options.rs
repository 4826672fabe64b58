//! How a mock GoTo behaves ([`MockOptions`]) and who can sign in to it ([`MockUser`]).

use std::time::Duration;

/// How the mock behaves; the defaults match the demo. Public: tests and benches start
/// the mock with their own lifetimes, keys and refresh-token rotation.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Lifetime of every access token it issues.
    pub token_lifetime: Duration,
    /// OAuth client id (`/oauth/token`).
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// Direct Login consumer key.
    pub consumer_key: String,
    /// Direct Login user id.
    pub user_id: String,
    /// Direct Login password.
    pub password: String,
    /// A personal access token it accepts.
    pub pat: String,
    /// The organizer key of "the user" (the first user).
    pub organizer_key: String,
    /// The first user's account key.
    pub account_key: String,
    /// Who "the user" is (an email): the OAuth answers' `principal`, the identity
    /// answer's `userName` and the Admin `/me`'s `email`.
    pub principal: String,
    /// The users after the first (whose keys and email are the three fields above), for
    /// tests where many people sign in to one client; they sign in with `login_hint`
    /// or [`MockGoto::sign_in_as`]. Empty by default: one user, as the demo has.
    pub more_users: Vec<MockUser>,
    /// Whether OAuth answers carry organizer/account keys (the old host's shape).
    pub keys_in_oauth_response: bool,
    /// Whether refresh tokens are single-use (a new one each refresh).
    pub rotate_refresh_tokens: bool,
    /// GoTo's quota: at most this many API calls per second per token and API (the
    /// first path segment), with a burst of one second's worth; beyond it `429` with
    /// `Retry-After`. `None` (the default, for tests and benches that fire at will): no
    /// quota. The demo sets 10, GoTo's documented rate.
    pub api_quota: Option<u32>,
    /// Whether an API path outside GoTo's API families (`/G2W/rest/v2/…`, `/admin/rest/v1/…`,
    /// …) answers a JSON `404`, as GoTo does. The demo sets it, so a wrong path looks
    /// wrong; off by default, so tests may forward any path and get it echoed.
    pub known_paths_only: bool,
    /// Whether `/identity/v1/Users/me` answers `503` (so a key lookup must fall back to
    /// the Admin API's `/me`).
    pub identity_unavailable: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            token_lifetime: Duration::from_secs(3600),
            client_id: "demo-client-id".into(),
            client_secret: "demo-client-secret".into(),
            consumer_key: "demo-consumer-key".into(),
            user_id: "api-manager@example.com".into(),
            password: "demo-password".into(),
            pat: "demo-personal-access-token".into(),
            organizer_key: "8439885694023999999".into(),
            account_key: "9999982253621659654".into(),
            principal: "mister.jones@fakemail.com".into(),
            more_users: Vec::new(),
            keys_in_oauth_response: false,
            rotate_refresh_tokens: true,
            api_quota: None,
            identity_unavailable: false,
            known_paths_only: false,
        }
    }
}

impl MockOptions {
    /// Every user, the first one (from [`MockOptions::organizer_key`],
    /// [`MockOptions::account_key`] and [`MockOptions::principal`]) first.
    pub fn users(&self) -> Vec<MockUser> {
        let first = MockUser {
            organizer_key: self.organizer_key.clone(),
            account_key: self.account_key.clone(),
            email: self.principal.clone(),
            first_name: "Moon".into(),
            last_name: "Jones".into(),
        };
        std::iter::once(first).chain(self.more_users.iter().cloned()).collect()
    }
}

/// One person who can sign in to the mock GoTo, as GoTo knows them. Public: tests of many
/// accounts add users with [`MockOptions::more_users`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockUser {
    /// Their organizer (user) key: digits; the SCIM `id`.
    pub organizer_key: String,
    /// Their account's key: digits. Colleagues may share one.
    pub account_key: String,
    /// Their email: the OAuth `principal`, the SCIM `userName`, the Admin `email`.
    pub email: String,
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
}

impl MockUser {
    /// User number `n` of a made-up company: organizer key `7000000000000000000 + n`,
    /// account key `5000000000000000000 + n`, email `userN@example.com`; so a test can
    /// add as many distinct users as it needs.
    pub fn numbered(n: u32) -> MockUser {
        MockUser {
            organizer_key: (7_000_000_000_000_000_000_u64 + u64::from(n)).to_string(),
            account_key: (5_000_000_000_000_000_000_u64 + u64::from(n)).to_string(),
            email: format!("user{n}@example.com"),
            first_name: "User".into(),
            last_name: n.to_string(),
        }
    }
}
