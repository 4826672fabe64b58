//! Raw → validated: every check that needs more than a type, each error located at the
//! value (or key) it is about. Secrets are resolved here, from the file, the environment
//! or a secret file; `[inbound]` has its own file, `inbound.rs`, and `[tls]` with
//! `proxy.outbound_proxy` theirs, `outbound.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use toml::Spanned;

use super::error::{ConfigError, Locator};
use super::names::quoted;
use super::raw::{RawConfig, RawNotify, RawProxy, RawRoute};
use super::{Config, CredentialConfig, NotifyConfig, NotifyEvent, NotifyTarget, ProxySettings, RouteConfig};

mod credential;
mod inbound;
mod outbound;
mod secret;
mod state;

use credential::validate_credential;
pub(crate) use outbound::proxy_url;
pub(crate) use secret::read_secret_file;
use secret::{resolve_secret, warn_if_others_read};
use state::{validate_state, validate_state_keys};

/// The whole file, checked in file-section order: `[proxy]`, `[state]`, `[inbound]`,
/// `[tls]`, credentials, routes (which name credentials).
pub(super) fn validate(loc: &Locator<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let validated = validate_all(loc, raw);
    // Every secret that cannot be read is told in one run (a fresh machine often lacks
    // several); an error found after one is likely its consequence.
    let mut missing = loc.missing.take();
    match missing.len() {
        0 => validated,
        1 => Err(missing.remove(0)),
        _ => Err(ConfigError::Secrets(missing)),
    }
}

fn validate_all(loc: &Locator<'_>, raw: RawConfig) -> Result<Config, ConfigError> {
    let proxy = validate_proxy(loc, raw.proxy)?;
    let state_encryption_keys = validate_state_keys(loc, &raw.state.encryption_keys)?;
    let state = validate_state(loc, raw.state)?;
    let inbound = inbound::validate_inbound(loc, raw.inbound, &proxy)?;
    let tls = outbound::validate_tls(loc, raw.tls)?;

    let mut credentials = BTreeMap::new();
    let mut spans = Vec::new();
    for (name, spanned) in raw.credentials {
        let span = spanned.span();
        spans.push((name.clone(), span.clone()));
        if !super::is_valid_name(&name) {
            let why = format!("{} is not a credential name: {}", quoted(&name), super::NAME_RULE);
            return Err(loc.err(&span, "credentials", why));
        }
        let cred = validate_credential(loc, &name, &span, spanned.into_inner())?;
        credentials.insert(name, Arc::new(cred));
    }

    let mut routes: Vec<RouteConfig> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, spanned) in raw.routes.into_iter().enumerate() {
        routes.push(validate_route(loc, i, spanned.into_inner(), &credentials, &mut seen)?);
    }
    // A credential no route names is never sent: usually a route that forgot its
    // `credential` (GoTo then answers its requests 401).
    for (name, span) in spans.iter().filter(|(n, _)| !routes.iter().any(|r| r.credential.as_deref() == Some(n))) {
        let why = format!(
            "no route uses credential {}: its token is never sent; name it in a route's `credential`, or remove it",
            quoted(name)
        );
        loc.warn(span, &format!("credentials.{name}"), why);
    }

    let mut notify = Vec::new();
    for (i, spanned) in raw.notify.into_iter().enumerate() {
        notify.push(validate_notify(loc, i, &spanned)?);
    }

    Ok(Config {
        warnings: loc.warnings.take(),
        files: loc.files.take(),
        source: loc.file.to_string(),
        proxy,
        state,
        state_encryption_keys,
        inbound,
        tls,
        credentials,
        routes,
        notify,
    })
}

/// `[proxy]`: its types are checked by serde; what remains is that counts are not 0
/// and that `outbound_proxy` is a proxy URL.
fn validate_proxy(loc: &Locator<'_>, raw: RawProxy) -> Result<ProxySettings, ConfigError> {
    let proxy = ProxySettings {
        listen: raw.listen,
        admin_listen: raw.admin_listen,
        connect_timeout: raw.connect_timeout,
        request_timeout: raw.request_timeout,
        body_idle_timeout: raw.body_idle_timeout,
        max_request_body: raw.max_request_body.as_u64(),
        token_wait: raw.token_wait,
        workers: raw.workers,
        max_concurrent_requests: raw.max_concurrent_requests,
        outbound_proxy: outbound::validate_outbound_proxy(loc, raw.outbound_proxy.as_ref())?,
        access_log: raw.access_log,
        watch_files: raw.watch_files,
    };
    if proxy.workers == Some(0) {
        return Err(loc.err_key("proxy.workers", &(0..0), "must be at least 1"));
    }
    if proxy.max_concurrent_requests == 0 {
        return Err(loc.err_key("proxy.max_concurrent_requests", &(0..0), "must be at least 1"));
    }
    Ok(proxy)
}

/// `routes[i]`: a prefix no earlier route has (`seen` records them), an http(s)
/// upstream, a credential that exists, HTTP methods, a positive rate.
fn validate_route(
    loc: &Locator<'_>,
    i: usize,
    r: RawRoute,
    credentials: &BTreeMap<String, Arc<CredentialConfig>>,
    seen: &mut BTreeMap<String, usize>,
) -> Result<RouteConfig, ConfigError> {
    let key = |k: &str| format!("routes[{i}].{k}");
    let prefix = r.prefix.get_ref().clone();
    if !prefix.starts_with('/') {
        let why = format!("{} must start with `/`", quoted(&prefix));
        return Err(loc.err(&r.prefix.span(), key("prefix"), why));
    }
    if let Some(first) = seen.insert(prefix.clone(), i) {
        let why = format!("{} is already used by routes[{first}]", quoted(&prefix));
        return Err(loc.err(&r.prefix.span(), key("prefix"), why));
    }
    let upstream = parse_url(loc, &r.upstream, &key("upstream"))?;
    if upstream.query().is_some() || upstream.fragment().is_some() {
        return Err(loc.err(&r.upstream.span(), key("upstream"), "must not have a query or fragment"));
    }
    let credential = match r.credential {
        Some(c) if !credentials.contains_key(c.get_ref()) => {
            let known: Vec<String> = credentials.keys().map(|k| quoted(k)).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(loc.err(
                &c.span(),
                key("credential"),
                format!("{} names no credential that exists (defined: {known})", quoted(c.get_ref())),
            ));
        }
        Some(c) => Some(c.into_inner()),
        None => None,
    };
    let methods = match r.methods {
        None => None,
        Some(m) => {
            let span = m.span();
            let mut out = Vec::new();
            for (n, s) in m.into_inner().into_iter().enumerate() {
                let method = http::Method::from_bytes(s.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    loc.err(&span, key(&format!("methods[{n}]")), "is not an HTTP method such as \"GET\"")
                })?;
                out.push(method);
            }
            Some(out)
        }
    };
    let rate_limit = match r.rate_limit {
        Some(l) if !(*l.get_ref() > 0.0 && l.get_ref().is_finite()) => {
            return Err(loc.err(&l.span(), key("rate_limit"), "must be a positive number of requests per second"));
        }
        l => l.map(Spanned::into_inner),
    };
    Ok(RouteConfig {
        prefix,
        upstream,
        credential,
        strip_prefix: r.strip_prefix,
        methods,
        rate_limit,
        retry_429: r.retry_429,
    })
}

/// `notify[i]`: exactly one of `webhook` (an http(s) URL) and `command` (a non-empty
/// argv), known event names, `after_failures` at least 1.
fn validate_notify(loc: &Locator<'_>, i: usize, spanned: &Spanned<RawNotify>) -> Result<NotifyConfig, ConfigError> {
    let key = |k: &str| format!("notify[{i}].{k}");
    let n = spanned.get_ref();
    let target = match (&n.webhook, &n.command) {
        (Some(w), None) => {
            let url = resolve_secret(loc, w, &key("webhook"))?;
            // The URL is a secret: the error says what is wrong, never what it is.
            let ok = url::Url::parse(url.expose())
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if !ok {
                return Err(loc.err(&w.span(), key("webhook"), "must be an http:// or https:// URL with a host"));
            }
            NotifyTarget::Webhook(url)
        }
        (None, Some(c)) => {
            if c.get_ref().first().is_none_or(|program| program.is_empty()) {
                return Err(loc.err(
                    &c.span(),
                    key("command"),
                    "must name a program: a list such as [\"/usr/local/bin/page-oncall\"]",
                ));
            }
            NotifyTarget::Command(c.get_ref().clone())
        }
        _ => {
            return Err(loc.err(
                &spanned.span(),
                format!("notify[{i}]"),
                "needs exactly one of `webhook` and `command`",
            ));
        }
    };
    let events = match &n.events {
        None => NotifyEvent::ALL.to_vec(),
        Some(list) => {
            let mut out = Vec::new();
            for (j, name) in list.get_ref().iter().enumerate() {
                let Some(e) = NotifyEvent::ALL.into_iter().find(|e| e.as_str() == name) else {
                    return Err(loc.err(
                        &list.span(),
                        key(&format!("events[{j}]")),
                        "is not an event: \"needs_login\", \"refresh_failing\" or \"recovered\"",
                    ));
                };
                out.push(e);
            }
            out
        }
    };
    let after_failures = match &n.after_failures {
        None => 3,
        Some(a) if *a.get_ref() == 0 => return Err(loc.err(&a.span(), key("after_failures"), "must be at least 1")),
        Some(a) => *a.get_ref(),
    };
    Ok(NotifyConfig { target, events, after_failures })
}

/// An http(s) URL with a host.
fn parse_url(loc: &Locator<'_>, s: &Spanned<String>, key: &str) -> Result<url::Url, ConfigError> {
    // url's ParseError says what is wrong in fixed words, never quoting the input.
    let url = url::Url::parse(s.get_ref()).map_err(|e| loc.err(&s.span(), key, format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(loc.err(&s.span(), key, "must be an http:// or https:// URL with a host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{err, GOOD};
    use super::super::Config;

    #[test]
    fn redis_sentinel_and_cluster_are_read_and_shown_without_their_passwords() {
        use super::super::{RedisTarget, StateSettings};
        let with = |state: &str| format!("{GOOD}\n[state]\nstore = \"redis\"\n{state}\n");
        let c = Config::parse(
            "t.toml",
            &with(
                "redis_sentinels = [\"redis://:s3cret@10.0.0.1:26379\", \"redis://:s3cret@10.0.0.2:26379\", \"redis://:s3cret@10.0.0.3:26379\"]\nredis_master = \"gapmaster\"",
            ),
        )
        .unwrap();
        let StateSettings::Redis { target, .. } = &c.state else { panic!("redis") };
        assert!(
            matches!(target, RedisTarget::Sentinel { sentinels, master } if sentinels.len() == 3 && master == "gapmaster")
        );
        let shown = c.to_string();
        assert!(shown.contains("state: redis sentinel gapmaster via 3 sentinels [redacted urls]"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");

        let c =
            Config::parse("t.toml", &with("redis_cluster = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]"))
                .unwrap();
        assert!(c.to_string().contains("state: redis cluster of 2 seeds [redacted urls]"), "{c}");
        let c = Config::parse("t.toml", &with("redis_url = \"redis://:s3cret@h:6379/0\"")).unwrap();
        assert!(c.to_string().contains("state: redis single [redacted url]"), "{c}");
    }

    #[test]
    fn redis_targets_that_conflict_or_are_incomplete_are_refused_by_name() {
        let with = |state: &str| format!("{GOOD}\n[state]\nstore = \"redis\"\n{state}\n");
        for (state, says) in [
            ("redis_sentinels = [\"redis://a:26379\"]", "state.redis_sentinels: needs state.redis_master"),
            ("redis_master = \"m\"", "state.redis_master: needs state.redis_sentinels"),
            (
                "redis_url = \"redis://h/0\"\nredis_cluster = [\"redis://a:7000\"]",
                "state.redis_cluster: cannot be set together with state.redis_url",
            ),
            (
                "redis_sentinels = [\"redis://a:26379\"]\nredis_master = \"m\"\nredis_cluster = [\"redis://a:7000\"]",
                "state.redis_cluster: cannot be set together with state.redis_sentinels",
            ),
            ("redis_cluster = []", "state.redis_cluster: is empty"),
            ("redis_cluster = [\"http://:pw@a:7000\"]", "state.redis_cluster[0]: must be a redis:// or rediss:// URL"),
            (
                "redis_cluster = [\"redis://a:7000\", \"rediss://b:7000\"]",
                "state.redis_cluster[1]: mixes redis:// and rediss://",
            ),
            ("redis_sentinels = [\"redis://a:26379\"]\nredis_master = \" \"", "state.redis_master: is empty"),
        ] {
            let e = err(&with(state));
            assert!(e.contains(says), "{state}: {e}");
            assert!(!e.contains(":pw@"), "{e}");
            assert!(e.starts_with("t.toml:"), "names the line: {e}");
        }
    }

    #[test]
    fn dangling_credential_is_quoted_with_the_names_that_exist() {
        let text = GOOD.replace("credential = \"goto\"", "credential = \"g2w_missing\"");
        let e = err(&text);
        let line = text.lines().position(|l| l.contains("\"g2w_missing\"")).unwrap() + 1;
        assert_eq!(
            e,
            format!(
                "t.toml:{line}: routes[1].credential: \"g2w_missing\" names no credential that exists (defined: \"g2a\", \"goto\")"
            )
        );
        // A name with control characters is quoted escaped: it cannot break the line.
        let e = err(&GOOD.replace("credential = \"goto\"", "credential = \"go\\u001b[2K\\nto\""));
        assert!(e.contains("\"go\\u{1b}[2K\\nto\" names no credential") && !e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn grants_prefixes_and_listen_addresses_are_quoted_back() {
        // (the last line that has it: a duplicate is refused at the second route)
        let line_of = |text: &str, needle: &str| {
            text.lines().enumerate().filter(|(_, l)| l.contains(needle)).last().unwrap().0 + 1
        };
        for (from, to, says) in [
            (
                "grant = \"password\"",
                "grant = \"passwrod\"",
                "credentials.g2a.grant: \"passwrod\" is not a grant: expected ",
            ),
            ("prefix = \"/G2A/\"", "prefix = \"G2A/\"", "routes[0].prefix: \"G2A/\" must start with `/`"),
            ("prefix = \"/G2A/\"", "prefix = \"/\"", "routes[1].prefix: \"/\" is already used by routes[0]"),
            ("127.0.0.1:18080", "10.9.8.7:80", "proxy.listen: \"10.9.8.7:80\" is not a loopback address"),
        ] {
            let text = GOOD.replace(from, to);
            let e = err(&text);
            let line = line_of(&text, to);
            assert!(e.starts_with(&format!("t.toml:{line}: {says}")), "{e}");
        }
    }

    #[test]
    fn credential_names_outside_the_rule_are_refused_quoted_at_their_line() {
        for (header, shown) in [
            ("[credentials.\"a b\"]", "\"a b\""),
            ("[credentials.\"x<script>\"]", "\"x<script>\""),
            ("[credentials.\"prod?x\"]", "\"prod?x\""),
            ("[credentials.\"..\"]", "\"..\""),
            ("[credentials.\"\"]", "\"\""),
            ("[credentials.\"r\\u001b[31mred\"]", "\"r\\u{1b}[31mred\""),
            ("[credentials.\"é\"]", "\"é\""),
        ] {
            let text = GOOD.replace("[credentials.goto]", header).replace("credential = \"goto\"", "");
            let e = err(&text);
            let line = text.lines().position(|l| l == header).unwrap() + 1;
            let expected = format!(
                "t.toml:{line}: credentials: {shown} is not a credential name: a name is 1 to 64 ASCII letters, digits, \"_\", \"-\" and \".\""
            );
            assert_eq!(e, expected, "{header}");
        }
        let long = "x".repeat(65);
        let e = err(&GOOD.replace("[credentials.goto]", &format!("[credentials.{long}]")));
        assert!(e.contains(&format!("\"{long}\" is not a credential name")), "{e}");
        // The rule's edges are accepted.
        let text = GOOD
            .replace("goto", "\"a.b-c_D9\"")
            .replace("\"\"a.b-c_D9\"\"", "\"a.b-c_D9\"")
            .replace("g2a", &"x".repeat(64));
        let c = Config::parse("t.toml", &text).unwrap();
        assert!(c.credentials.contains_key("a.b-c_D9") && c.credentials.contains_key(&"x".repeat(64)));
    }

    #[test]
    fn duplicate_prefix_refused() {
        let text = GOOD.replace("prefix = \"/G2A/\"", "prefix = \"/\"");
        assert!(err(&text).contains("already used by routes[0]"));
    }

    #[test]
    fn missing_env_secret_refused() {
        let text = GOOD.replace("\"pw-literal-secret\"", "{ env = \"GOTO_AUTH_PROXY_TEST_UNSET_VAR\" }");
        let e = err(&text);
        assert!(e.contains("credentials.g2a.password") && e.contains("GOTO_AUTH_PROXY_TEST_UNSET_VAR"), "{e}");
    }

    #[test]
    fn every_unreadable_secret_is_reported_in_one_run_with_its_line() {
        let text = GOOD
            .replace("\"pw-literal-secret\"", "{ env = \"GOTO_AUTH_PROXY_TEST_UNSET_A\" }")
            .replace("\"cs-literal-secret\"", "{ file = \"/nonexistent/goto_client_secret\" }")
            .replace("client_id = \"cid\"", "client_id = { env = \"GOTO_AUTH_PROXY_TEST_UNSET_B\" }");
        let e = err(&text);
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        assert!(e.starts_with("3 secrets cannot be read:"), "{e}");
        for (key, what, needle) in [
            ("credentials.g2a.password", "GOTO_AUTH_PROXY_TEST_UNSET_A is not set", "UNSET_A"),
            ("credentials.goto.client_id", "GOTO_AUTH_PROXY_TEST_UNSET_B is not set", "UNSET_B"),
            (
                "credentials.goto.client_secret",
                "cannot read secret file /nonexistent/goto_client_secret",
                "nonexistent",
            ),
        ] {
            let line = format!("t.toml:{}: {key}: ", line_of(needle));
            assert!(e.lines().any(|l| l.trim_start().starts_with(&line) && l.contains(what)), "{line} {what}: {e}");
        }
    }

    #[test]
    fn a_credential_no_route_uses_is_warned_about_by_name_and_line() {
        let text = GOOD.replace("credential = \"goto\"\n", "");
        let c = Config::parse("t.toml", &text).unwrap();
        let line = text.lines().position(|l| l.contains("[credentials.goto]")).unwrap() + 1;
        let expected = format!("t.toml:{line}: credentials.goto: no route uses credential \"goto\"");
        assert!(c.warnings.iter().any(|w| w.starts_with(&expected)), "{:?}", c.warnings);
        assert!(Config::parse("t.toml", GOOD).unwrap().warnings.is_empty());
    }

    #[test]
    fn the_login_command_a_message_suggests_carries_the_config_file_given() {
        let c = Config::parse("conf/mine.toml", GOOD).unwrap();
        assert_eq!(
            c.credentials["goto"].login_command(Some("alice")),
            "goto-auth-proxy login --config conf/mine.toml --credential goto --account alice"
        );
        let c = Config::parse(crate::config::DEFAULT_CONFIG_PATH, GOOD).unwrap();
        assert_eq!(c.credentials["goto"].login_command(None), "goto-auth-proxy login --credential goto");
    }

    #[test]
    fn an_empty_secret_names_where_it_came_from() {
        std::env::set_var("GOTO_AUTH_PROXY_TEST_EMPTY_VAR", "");
        let text = GOOD.replace("\"pw-literal-secret\"", "{ env = \"GOTO_AUTH_PROXY_TEST_EMPTY_VAR\" }");
        let e = err(&text);
        assert!(
            e.contains("credentials.g2a.password: is empty (environment variable GOTO_AUTH_PROXY_TEST_EMPTY_VAR)"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty");
        std::fs::write(&p, "\n").unwrap();
        let text = GOOD.replace("\"pw-literal-secret\"", &format!("{{ file = {:?} }}", p.display().to_string()));
        assert!(err(&text).contains(&format!("is empty (secret file {})", p.display())), "{}", err(&text));
    }

    #[test]
    fn secret_file_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "abc\n").unwrap();
        let text = GOOD.replace("\"pw-literal-secret\"", &format!("{{ file = {:?} }}", p.display().to_string()));
        let c = Config::parse("t.toml", &text).unwrap();
        assert_eq!(c.credentials["g2a"].password.as_ref().unwrap().expose(), "abc");
    }

    #[cfg(unix)]
    #[test]
    fn key_and_secret_files_others_can_read_are_warned_about_by_name_never_content() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (secret, key) = (dir.path().join("password"), dir.path().join("state.key"));
        std::fs::write(&secret, "file-s3cr3t\n").unwrap();
        std::fs::write(&key, format!("{}\n", b64(&[5; 32]))).unwrap();
        let text = with_keys(&format!("[{{ file = {:?} }}]", key.display().to_string()))
            .replace("\"pw-literal-secret\"", &format!("{{ file = {:?} }}", secret.display().to_string()));
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
        let mode =
            |p: &std::path::Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();

        mode(&secret, 0o644);
        mode(&key, 0o640);
        let c = Config::parse("t.toml", &text).unwrap();
        assert_eq!(
            c.warnings,
            vec![
                format!(
                    "t.toml:{}: state.encryption_keys[0]: {} is readable by other users (mode 0640); only the proxy's own user should read it (chmod 600)",
                    line_of("encryption_keys"),
                    key.display()
                ),
                format!(
                    "t.toml:{}: credentials.g2a.password: {} is readable by other users (mode 0644); only the proxy's own user should read it (chmod 600)",
                    line_of("password = {"),
                    secret.display()
                ),
            ]
        );
        assert!(!format!("{:?}", c.warnings).contains("s3cr3t"));

        // Owner-only files: nothing to say.
        mode(&secret, 0o600);
        mode(&key, 0o400);
        assert!(Config::parse("t.toml", &text).unwrap().warnings.is_empty());
        assert!(Config::parse("t.toml", GOOD).unwrap().warnings.is_empty(), "literal secrets are no files");
    }

    #[test]
    fn notify_entries_resolve_with_defaults_and_bad_ones_are_named_by_key_and_line() {
        use super::super::{NotifyEvent, NotifyTarget};
        let ok = format!("{GOOD}\n[[notify]]\nwebhook = \"https://hooks.example/T0/SECRET\"\n\n[[notify]]\ncommand = [\"/bin/page\", \"-q\"]\nevents = [\"needs_login\"]\nafter_failures = 5\n");
        let c = Config::parse("t.toml", &ok).unwrap();
        assert!(c.proxy.access_log, "the access log is on by default");
        assert!(matches!(&c.notify[0].target, NotifyTarget::Webhook(u) if u.expose().ends_with("/SECRET")));
        assert_eq!((c.notify[0].events.len(), c.notify[0].after_failures), (3, 3));
        assert_eq!(c.notify[1].target, NotifyTarget::Command(vec!["/bin/page".into(), "-q".into()]));
        assert_eq!((c.notify[1].events.clone(), c.notify[1].after_failures), (vec![NotifyEvent::NeedsLogin], 5));
        assert!(!c.to_string().contains("SECRET") && !format!("{c:?}").contains("SECRET"));

        let off = GOOD.replace("max_request_body = \"1MiB\"", "max_request_body = \"1MiB\"\naccess_log = false");
        assert!(!Config::parse("t.toml", &off).unwrap().proxy.access_log);

        for (entry, says) in [
            (
                "webhook = \"https://h.example/x\"\ncommand = [\"/bin/x\"]",
                "notify[0]: needs exactly one of `webhook` and `command`",
            ),
            ("events = [\"needs_login\"]", "notify[0]: needs exactly one of `webhook` and `command`"),
            ("webhook = \"not a url SECRET\"", "notify[0].webhook: must be an http:// or https:// URL"),
            ("command = []", "notify[0].command: must name a program"),
            ("command = [\"/bin/x\"]\nevents = [\"paged\"]", "notify[0].events[0]: is not an event"),
            ("command = [\"/bin/x\"]\nafter_failures = 0", "notify[0].after_failures: must be at least 1"),
            ("command = [\"/bin/x\"]\nshell = true", "shell"),
        ] {
            let e = err(&format!("{GOOD}\n[[notify]]\n{entry}\n"));
            assert!(e.contains(says) && e.contains("t.toml:"), "{entry}: {e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
    }

    #[test]
    fn key_foreign_to_grant_refused() {
        let text = GOOD.replace("password = \"pw-literal-secret\"", "password = \"x\"\npat = \"y\"");
        assert!(err(&text).contains("credentials.g2a.pat: is not used by grant \"password\""));
    }

    #[test]
    fn missing_required_key_refused() {
        let text = GOOD.replace("username = \"user@example.com\"\n", "");
        assert!(err(&text).contains("credentials.g2a.username: is required"));
    }

    #[test]
    fn rate_limit_must_be_positive() {
        let text = GOOD.replace("credential = \"g2a\"", "credential = \"g2a\"\nrate_limit = 0");
        assert!(err(&text).contains("routes[0].rate_limit"));
        let text = GOOD.replace("credential = \"g2a\"", "credential = \"g2a\"\nrate_limit = 10");
        assert_eq!(Config::parse("t.toml", &text).unwrap().routes[0].rate_limit, Some(10.0));
    }

    #[test]
    fn url_and_route_errors_do_not_echo_the_value() {
        let text = GOOD.replace(
            "upstream = \"https://api.getgo.com\"\ncredential = \"g2a\"",
            "upstream = \"https://u:pa55@[zz/\"\ncredential = \"g2a\"",
        );
        let e = err(&text);
        assert!(e.contains("routes[0].upstream: is not a URL (") && !e.contains("pa55"), "{e}");
        let text = GOOD.replace("credential = \"g2a\"", "credential = \"g2a\"\nmethods = [\"GET\", \"B@D s3cr3t\"]");
        let e = err(&text);
        assert!(e.contains("routes[0].methods[1]: is not an HTTP method") && !e.contains("s3cr3t"), "{e}");
        let text = GOOD.replace("prefix = \"/G2A/\"", "prefix = \"/\"");
        let e = err(&text);
        assert!(e.contains("routes[1].prefix: \"/\" is already used by routes[0]"), "{e}");
    }

    #[test]
    fn secrets_from_env_and_files_never_appear_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "file-s3cr3t\n").unwrap();
        let file = format!("{{ file = {:?} }}", p.display().to_string());
        // A valid secret, then a later error in the same credential.
        let text = GOOD
            .replace("\"pw-literal-secret\"", &file)
            .replace("grant = \"password\"", "grant = \"password\"\nscope = \"x\"");
        let e = err(&text);
        assert!(e.contains("credentials.g2a.scope: is not used by grant"), "{e}");
        assert!(!e.contains("file-s3cr3t"), "{e}");
        let line = text.lines().position(|l| l.starts_with("scope")).unwrap() + 1;
        assert!(e.starts_with(&format!("t.toml:{line}:")), "{e}");
    }

    #[test]
    fn upstream_must_be_http() {
        let text = GOOD.replace(
            "upstream = \"https://api.getgo.com\"\ncredential = \"g2a\"",
            "upstream = \"ftp://x\"\ncredential = \"g2a\"",
        );
        assert!(err(&text).contains("routes[0].upstream"));
    }

    fn with_keys(keys: &str) -> String {
        GOOD.replace("[credentials.g2a]", &format!("[state]\nencryption_keys = {keys}\n\n[credentials.g2a]"))
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn state_encryption_keys_resolve_and_show_only_key_ids() {
        let (new, old) = (b64(&[1; 32]), b64(&[2; 32]));
        let c = Config::parse("t.toml", &with_keys(&format!("[\"{new}\", \"{old}\"]"))).unwrap();
        assert_eq!(c.state_encryption_keys.len(), 2);
        assert_eq!(c.state_encryption_keys[0].expose(), new);
        let ids = c.state_key_ids();
        assert_eq!(ids, vec![crate::secret::key_id(&[1; 32]), crate::secret::key_id(&[2; 32])]);
        let shown = c.to_string();
        assert!(shown.contains(&format!("encryption: 2 key(s), key ids: {} (seals), {}", ids[0], ids[1])), "{shown}");
        let debug = format!("{c:?}");
        assert!(!shown.contains(&new) && !debug.contains(&new) && !debug.contains(&old), "{debug}");
        let none = Config::parse("t.toml", GOOD).unwrap();
        assert!(none.state_encryption_keys.is_empty());
        assert!(none.to_string().contains("encryption: off"));
    }

    #[test]
    fn state_encryption_keys_of_the_wrong_size_are_refused_by_position_and_line() {
        for bad in [b64(&[3; 31]), b64(&[3; 33]), "not-base64-key!".to_string()] {
            let text = with_keys(&format!("[\n  \"{}\",\n  \"{bad}\",\n]", b64(&[1; 32])));
            let e = err(&text);
            assert!(
                e.contains("t.toml:10:")
                    && e.contains(
                        "state.encryption_keys[1]: expected base64 of 32 bytes (goto-auth-proxy keygen makes one)"
                    ),
                "{e}"
            );
            assert!(!e.contains(&bad), "{e}");
        }
    }

    #[test]
    fn state_encryption_keys_come_from_files_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.key");
        std::fs::write(&p, format!("{}\n", b64(&[4; 32]))).unwrap();
        let c = Config::parse("t.toml", &with_keys(&format!("[{{ file = {:?} }}]", p.display().to_string()))).unwrap();
        assert_eq!(c.state_key_ids(), vec![crate::secret::key_id(&[4; 32])]);
        std::fs::write(&p, "short\n").unwrap();
        let e = err(&with_keys(&format!("[{{ file = {:?} }}]", p.display().to_string())));
        assert!(e.contains("state.encryption_keys[0]: expected base64 of 32 bytes") && !e.contains("short"), "{e}");
        let e = err(&with_keys("[{ env = \"GOTO_AUTH_PROXY_TEST_UNSET_STATE_KEY\" }]"));
        assert!(
            e.contains(
                "state.encryption_keys[0]: environment variable GOTO_AUTH_PROXY_TEST_UNSET_STATE_KEY is not set"
            ),
            "{e}"
        );
    }

    #[test]
    fn client_auth_and_authorize_params_resolve_and_show_in_check() {
        let text = GOOD.replace(
            "refresh_before = \"2m\"",
            "refresh_before = \"2m\"\nclient_auth = \"basic_rfc6749\"\nauthorize_params = { prompt = \"consent\", ui_locales = \"de\" }",
        );
        let c = Config::parse("t.toml", &text).unwrap();
        let goto = &c.credentials["goto"];
        assert_eq!(goto.client_auth, super::super::ClientAuth::BasicRfc6749);
        assert_eq!(
            goto.authorize_params,
            vec![("prompt".into(), "consent".into()), ("ui_locales".into(), "de".into())]
        );
        let shown = c.to_string();
        assert!(
            shown.contains("client_auth: basic_rfc6749") && shown.contains("authorize_params: prompt, ui_locales"),
            "{shown}"
        );
        // The default is not shown.
        let plain = Config::parse("t.toml", GOOD).unwrap();
        assert_eq!(plain.credentials["goto"].client_auth, super::super::ClientAuth::Basic);
        assert!(!plain.to_string().contains("client_auth"));
    }

    #[test]
    fn client_auth_must_be_a_known_mode_and_suit_the_grant() {
        let text = GOOD.replace("refresh_before = \"2m\"", "refresh_before = \"2m\"\nclient_auth = \"digest-s3cr3t\"");
        let e = err(&text);
        assert!(
            e.starts_with("t.toml:18:") && e.contains("credentials.goto.client_auth: is not a client authentication"),
            "{e}"
        );
        assert!(!e.contains("s3cr3t"), "{e}");
        let text = GOOD.replace("password = \"pw-literal-secret\"", "password = \"x\"\nclient_auth = \"post\"");
        assert!(err(&text).contains("credentials.g2a.client_auth: is not used by grant \"password\""));
    }

    #[test]
    fn authorize_params_may_not_name_what_the_proxy_sets() {
        for own in super::super::AUTHORIZE_PARAMS_OWN {
            let text = GOOD.replace(
                "refresh_before = \"2m\"",
                &format!("refresh_before = \"2m\"\nauthorize_params = {{ prompt = \"consent\", {own} = \"v4lue\" }}"),
            );
            let e = err(&text);
            assert!(
                e.starts_with("t.toml:18:")
                    && e.contains(&format!("credentials.goto.authorize_params.{own}: is set by the proxy itself")),
                "{e}"
            );
            assert!(!e.contains("v4lue"), "{e}");
        }
        let text =
            GOOD.replace("password = \"pw-literal-secret\"", "password = \"x\"\nauthorize_params = { a = \"b\" }");
        assert!(err(&text).contains("credentials.g2a.authorize_params: is not used by grant \"password\""));
    }
}
