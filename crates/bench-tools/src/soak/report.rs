//! `report`: the soak's verdict, from the files `benches/soak.sh` wrote in its work
//! directory (unix milliseconds throughout):
//!
//! * `answers.tsv`, `probes.tsv` — every answer of the steady load and of the upstream
//!   probes ([`super::load`]).
//! * `windows.tsv` — `kind replica start_ms end_ms long description`: each fault as the
//!   schedule injected it (`replica` is `*` for all); `long` is 1 for a token endpoint
//!   fault that outlasts `token_wait`.
//! * `samples.tsv` — `at_ms phase process pid rss_kb fds`, `phase` one of `start` (after
//!   the warm-up), `middle`, `end`, or `cycle`.
//! * `refresh.tsv` — `at_ms group chains held` ([`super::check`]).
//! * `checks.tsv` — `at_ms name ok|fail detail`: what the script verified itself (a
//!   reload serves the changed route, a restarted replica comes back).
//! * `calls-GROUP.json` — the mock's `GET /_mock/token_calls` at the end.
//! * `hostile.json` — `soak_tool hostile`'s `GET /_hostile/stats` at the end (requests
//!   the keep-alive race cut off, connections black-holed).
//!
//! A failed request is **unavoidable** when it overlaps its own replica's `kill -9`
//! window (until it answers again, plus a second), or when it is a `503
//! token_unavailable` during a `long` token endpoint fault or its recovery (the fault's
//! length again, at most the 30 s backoff cap, plus a second: the proxy backs off while
//! the endpoint fails, and a request waits `token_wait` at most), or when it is a
//! request to the black-holed HTTP/2 upstream (`/hostile-h2/`) within 20 s of the black
//! hole (the proxy must notice a silently dropped connection by then). Every other failure is
//! **avoidable** and fails the soak, as do a wrong probe answer, a lost refresh token,
//! two password logins within a second, a failed script check, RSS growth of 10 % or
//! more after the warm-up or a growing fd count in a long-lived replica, and token calls
//! of the Redis pair above 1.5× those of the lone file-store replica.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::read::*;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The script's work directory (the files above).
    #[arg(long)]
    dir: PathBuf,
    /// Where the markdown goes (also printed).
    #[arg(long)]
    out: PathBuf,
    /// A group of replicas sharing a mock: `NAME=a,b` (repeat); `calls-NAME.json` holds
    /// its mock's token calls, tagged `replica=a`…
    #[arg(long = "group", value_parser = parse_group, required = true)]
    groups: Vec<(String, Vec<String>)>,
    /// Replicas that live the whole run (the RSS and fd checks apply to them).
    #[arg(long = "long-lived", required = true)]
    long_lived: Vec<String>,
    /// The lone replica the pair's token calls are compared with.
    #[arg(long)]
    alone: String,
    /// The replicas sharing Redis.
    #[arg(long = "shared", required = true)]
    shared: Vec<String>,
    /// How far a long-lived replica's open fds may be from the warm-up's at the end (a
    /// connection opening or closing at the moment of the sample; idle pooled ones).
    #[arg(long, default_value_t = 2)]
    fd_slack: i64,
    /// Seconds the load ran.
    #[arg(long)]
    seconds: f64,
    /// Lines that open the report (date, commit, machine, settings).
    #[arg(long)]
    header: Vec<String>,
    /// How it was run, for the "Reproduce" line.
    #[arg(long)]
    command: String,
}

fn parse_group(s: &str) -> Result<(String, Vec<String>), String> {
    let (name, members) = s.split_once('=').ok_or("expected NAME=a,b")?;
    Ok((name.to_string(), members.split(',').map(str::to_string).collect()))
}

/// RSS may grow by less than this after the warm-up.
const RSS_GROWTH_LIMIT: f64 = 0.10;
/// The Redis pair may make this many times the lone replica's token calls.
const PAIR_CALLS_LIMIT: f64 = 1.5;

pub fn report(args: &ReportArgs) -> ExitCode {
    let dir = &args.dir;
    let windows: Vec<Window> = lines(&dir.join("windows.tsv")).iter().filter_map(|l| Window::parse(l)).collect();
    let answers: Vec<Answer> = lines(&dir.join("answers.tsv")).iter().filter_map(|l| Answer::parse(l)).collect();
    let probes: Vec<Answer> = lines(&dir.join("probes.tsv")).iter().filter_map(|l| Answer::parse(l)).collect();
    let mut problems: Vec<String> = Vec::new();
    let mut md = String::new();
    let w = &mut md;

    let _ = writeln!(w, "## Chaos soak\n");
    for h in &args.header {
        let _ = writeln!(w, "{h}");
    }
    let _ = writeln!(w);

    // ===== failures by fault =====
    let mut per_kind: BTreeMap<usize, (String, String, usize, u64, [u64; 4])> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for win in &windows {
        if !order.contains(&win.kind) {
            order.push(win.kind.clone());
        }
    }
    let kind_index = |k: &str| order.iter().position(|o| o == k).map_or(0, |i| i + 1);
    for win in &windows {
        let e = per_kind
            .entry(kind_index(&win.kind))
            .or_insert_with(|| (win.kind.clone(), win.description.clone(), 0, 0, [0; 4]));
        e.2 += 1;
        e.3 += answers.iter().filter(|a| win.applies_to(&a.replica) && a.overlaps(win.start, win.tail_end())).count()
            as u64;
    }
    let steady_requests = answers
        .iter()
        .filter(|a| !windows.iter().any(|w| w.applies_to(&a.replica) && a.overlaps(w.start, w.tail_end())))
        .count() as u64;
    per_kind.insert(0, ("steady".into(), "no fault in force".into(), 0, steady_requests, [0; 4]));
    let mut totals = [0u64; 4];
    let mut avoidable_examples: Vec<String> = Vec::new();
    for a in answers.iter().filter(|a| a.outcome != "ok") {
        let (cause, win) = classify(a, &windows);
        let idx = win.map_or(0, |i| kind_index(&windows[i].kind));
        let slot = match cause {
            Cause::OwnRestart => 0,
            Cause::LongTokenFault => 1,
            Cause::BlackHole => 2,
            Cause::Avoidable => 3,
        };
        if let Some(e) = per_kind.get_mut(&idx) {
            e.4[slot] += 1;
        }
        totals[slot] += 1;
        if cause == Cause::Avoidable && avoidable_examples.len() < 20 {
            let during = win.map_or("steady state".to_string(), |i| windows[i].kind.clone());
            avoidable_examples.push(format!("{} on {} during {during}: {}", a.start, a.replica, a.short()));
        }
    }
    let _ = writeln!(w, "| fault | times | requests during it (and its recovery) | failures: its own restart | failures: token endpoint down longer than `token_wait` | failures: upstream black-holed (first 20 s) | failures it should have avoided |");
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|");
    for (kind, description, times, requests, f) in per_kind.values() {
        let times = if kind == "steady" { "—".to_string() } else { times.to_string() };
        let _ = writeln!(w, "| {description} | {times} | {requests} | {} | {} | {} | **{}** |", f[0], f[1], f[2], f[3]);
    }
    let _ = writeln!(
        w,
        "| **all** | {} | {} | {} | {} | {} | **{}** |\n",
        windows.len(),
        answers.len(),
        totals[0],
        totals[1],
        totals[2],
        totals[3]
    );
    if totals[3] > 0 {
        problems.push(format!("{} failures the proxy should have avoided", totals[3]));
    }

    // ===== the other measures =====
    let _ = writeln!(w, "| measure | result | must be |");
    let _ = writeln!(w, "|---|---|---|");
    let mut per_replica: BTreeMap<&str, u64> = BTreeMap::new();
    for a in &answers {
        *per_replica.entry(a.replica.as_str()).or_default() += 1;
    }
    let split: Vec<String> = per_replica.iter().map(|(r, n)| format!("{r} {n}")).collect();
    let rate = answers.len() as f64 / args.seconds.max(1.0);
    let _ =
        writeln!(w, "| requests | {} in {:.0} s ({rate:.0}/s; {}) | |", answers.len(), args.seconds, split.join(", "));
    if answers.len() < 100 {
        problems.push(format!("only {} requests: the load did not run", answers.len()));
    }
    let _ = writeln!(
        w,
        "| failures it could not avoid | {} ({} during its own restart, {} while the token endpoint was down longer than `token_wait`, {} to a black-holed upstream within 20 s) | |",
        totals[0] + totals[1] + totals[2],
        totals[0],
        totals[1],
        totals[2]
    );
    let _ = writeln!(w, "| failures it should have avoided | **{}** | 0 |", totals[3]);

    // The network faults of the hostile upstream.
    let hostile: Hostile = std::fs::read_to_string(dir.join("hostile.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let race: Vec<&Window> = windows.iter().filter(|w| w.kind == "keepalive-race").collect();
    // Those during it that no other fault excuses (a replica's own restart may follow).
    let race_failures = answers
        .iter()
        .filter(|a| a.outcome != "ok" && race.iter().any(|w| a.overlaps(w.start, w.tail_end())))
        .filter(|a| classify(a, &windows).0 == Cause::Avoidable)
        .count();
    let _ = writeln!(
        w,
        "| keep-alive race | {} requests the upstream cut off as they arrived on a kept-alive connection; {race_failures} failed requests during it that nothing excuses | a race happened; 0 failures |",
        hostile.cut
    );
    if !race.is_empty() && hostile.cut == 0 {
        problems.push("the keep-alive race never happened (no request was cut off)".into());
    }
    for win in windows.iter().filter(|w| w.kind == "blackhole") {
        let mut recovered = Vec::new();
        for replica in &per_replica_names(&answers) {
            // Its failures (those that began within the 20 s: a later fault's failures are
            // that fault's), and the first good answer after them, however late.
            let until = win.start + BLACKHOLE_RECOVERY_MS;
            let theirs = |a: &&Answer| a.replica == *replica && a.kind == "hostile-h2" && a.start >= win.start;
            let last_failure =
                answers.iter().filter(theirs).filter(|a| a.outcome != "ok" && a.start <= until).map(|a| a.end).max();
            let back = answers
                .iter()
                .filter(theirs)
                .filter(|a| a.outcome == "ok" && last_failure.is_none_or(|f| a.start >= f))
                .map(|a| a.end)
                .min();
            match back {
                Some(t) => {
                    let after = t.saturating_sub(win.start);
                    recovered.push(format!("{replica} {:.1} s", after as f64 / 1000.0));
                    if after > BLACKHOLE_RECOVERY_MS {
                        problems.push(format!(
                            "{replica}: answered through /hostile-h2/ only {after} ms after the black hole"
                        ));
                    }
                }
                None => {
                    recovered.push(format!("{replica} never"));
                    problems.push(format!(
                        "{replica}: no answer through /hostile-h2/ after the black hole at {}",
                        win.start
                    ));
                }
            }
        }
        let _ = writeln!(
            w,
            "| black hole ({} connections) | answered again after: {} | ≤ 20 s |",
            hostile.frozen,
            recovered.join(", ")
        );
    }

    // Probes.
    let probe_summary = |kind: &str| {
        let all: Vec<&Answer> = probes.iter().filter(|p| p.kind == kind).collect();
        let good = all.iter().filter(|p| p.outcome == "expected").count();
        (good, all.len())
    };
    let (reset_ok, reset_n) = probe_summary("reset");
    let (slow_ok, slow_n) = probe_summary("slow");
    let _ = writeln!(
        w,
        "| upstream faults | {reset_ok} of {reset_n} bodies the upstream broke off reached the client broken off; {slow_ok} of {slow_n} slow (1.5 s) answers arrived whole | all |"
    );
    for p in probes.iter().filter(|p| p.outcome != "expected").take(10) {
        problems.push(format!("probe on {}: {}", p.replica, p.short()));
    }
    if reset_n == 0 || slow_n == 0 {
        problems.push("no upstream probes ran".into());
    }

    // Token calls and password logins.
    let mut calls_by_replica: HashMap<String, u64> = HashMap::new();
    let mut logins = Vec::new();
    for (group, members) in &args.groups {
        let calls: Calls = std::fs::read_to_string(dir.join(format!("calls-{group}.json")))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        for c in &calls.calls {
            let tag = c.query.strip_prefix("replica=").unwrap_or("untagged").to_string();
            *calls_by_replica.entry(tag).or_default() += 1;
        }
        let mut times = calls.password_logins_ms.clone();
        times.sort_unstable();
        let closest = times.windows(2).map(|p| p[1] - p[0]).min();
        if let Some(gap) = closest.filter(|g| *g < 1000) {
            problems.push(format!("two password logins {gap} ms apart at the {group} mock ({})", members.join("+")));
        }
        let closest = closest.map_or("no two".into(), |g| format!("closest two {:.1} s apart", g as f64 / 1000.0));
        logins.push(format!("{} at the {group} mock ({}), {closest}", times.len(), members.join("+")));
    }
    let calls_of = |r: &str| calls_by_replica.get(r).copied().unwrap_or(0);
    let pair: u64 = args.shared.iter().map(|r| calls_of(r)).sum();
    let alone = calls_of(&args.alone);
    let ratio = pair as f64 / alone.max(1) as f64;
    let each: Vec<String> = args.shared.iter().map(|r| format!("{r} {}", calls_of(r))).collect();
    let ideal = 2.0 * args.seconds / 0.95;
    let _ = writeln!(
        w,
        "| token calls | Redis pair {} = {pair}; {} alone on the file store {alone}: **{ratio:.2}×** one replica's (both credentials; ≈ {ideal:.0} with no fault at all: one renewal per credential every 0.95 s) | ≤ {PAIR_CALLS_LIMIT}× |",
        each.join(" + "),
        args.alone
    );
    if alone == 0 || ratio > PAIR_CALLS_LIMIT {
        problems.push(format!("the Redis pair made {pair} token calls, {ratio:.2}× the lone replica's {alone}"));
    }
    let _ = writeln!(w, "| password logins (Direct Login) | {} | never two within 1 s |", logins.join("; "));

    // Refresh tokens.
    let checks: Vec<(String, u64, u64)> = lines(&dir.join("refresh.tsv"))
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() >= 4).then(|| (f[1].to_string(), f[2].parse().unwrap_or(0), f[3].parse().unwrap_or(0)))
        })
        .collect();
    let lost: u64 = checks.iter().map(|(_, chains, held)| chains.saturating_sub(*held)).sum();
    let chains: u64 = checks.iter().map(|(_, chains, _)| chains).sum();
    let _ = writeln!(
        w,
        "| refresh tokens lost | **{lost}** ({} checks, {chains} newest refresh tokens looked for in the stores) | 0 |",
        checks.len()
    );
    if checks.is_empty() || lost > 0 || checks.iter().any(|(_, c, _)| *c == 0) {
        problems.push(format!("refresh tokens lost: {lost} of {chains} in {} checks", checks.len()));
    }

    // The script's own checks.
    let mut check_counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for l in lines(&dir.join("checks.tsv")) {
        let f: Vec<&str> = l.splitn(4, '\t').collect();
        if f.len() < 4 {
            continue;
        }
        let e = check_counts.entry(f[1].to_string()).or_default();
        e.1 += 1;
        if f[2] == "ok" {
            e.0 += 1;
        } else {
            problems.push(format!("{}: {}", f[1], f[3]));
        }
    }
    for (name, (ok, n)) in &check_counts {
        let _ = writeln!(w, "| {name} | {ok} of {n} | all |");
    }
    let _ = writeln!(w);

    // ===== memory and file descriptors =====
    let all_samples = samples(dir);
    let _ = writeln!(w, "| process | RSS start | RSS middle | RSS end | growth | fds start | middle | end |");
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut processes: Vec<&str> = Vec::new();
    for s in &all_samples {
        if !processes.contains(&s.process.as_str()) {
            processes.push(&s.process);
        }
    }
    for p in processes {
        // A replica restarted by the schedule: its last life, from its first sample.
        let mine: Vec<&Sample> = all_samples.iter().filter(|s| s.process == p).collect();
        let last_pid = mine.last().map(|s| s.pid.clone()).unwrap_or_default();
        let life: Vec<&Sample> = mine.iter().copied().filter(|s| s.pid == last_pid).collect();
        let restarted = mine.iter().any(|s| s.pid != last_pid);
        let pick = |phase: &str| life.iter().find(|s| s.phase == phase).copied();
        let (Some(start), Some(end)) = (pick("start").or(life.first().copied()), pick("end")) else { continue };
        let middle = pick("middle");
        let growth = (end.rss_kb as f64 - start.rss_kb as f64) / start.rss_kb.max(1) as f64;
        let mib = |kb: u64| format!("{:.1} MiB", kb as f64 / 1024.0);
        let label = if restarted { format!("{p} (its last life, after a restart)") } else { p.to_string() };
        let _ = writeln!(
            w,
            "| {label} | {} | {} | {} | {:+.1} % | {} | {} | {} |",
            mib(start.rss_kb),
            middle.map_or("—".into(), |m| mib(m.rss_kb)),
            mib(end.rss_kb),
            growth * 100.0,
            start.fds,
            middle.map_or("—".into(), |m| m.fds.to_string()),
            end.fds
        );
        if args.long_lived.iter().any(|l| l == p) {
            if growth >= RSS_GROWTH_LIMIT {
                problems.push(format!("{p}: RSS grew {:.1} % after the warm-up", growth * 100.0));
            }
            if (end.fds - start.fds).abs() > args.fd_slack {
                problems.push(format!("{p}: {} open fds after the warm-up, {} at the end", start.fds, end.fds));
            }
        }
    }
    let _ = writeln!(
        w,
        "\nMust be, for the replicas that live the whole run ({}): RSS growth after the warm-up below {:.0} %, open fds within ±{} of the warm-up's.\n",
        args.long_lived.join(", "),
        RSS_GROWTH_LIMIT * 100.0,
        args.fd_slack
    );

    if !avoidable_examples.is_empty() {
        let _ = writeln!(w, "Failures it should have avoided (first {}):\n", avoidable_examples.len());
        for e in &avoidable_examples {
            let _ = writeln!(w, "* {e}");
        }
        let _ = writeln!(w);
    }
    if problems.is_empty() {
        let _ = writeln!(w, "Verdict: **pass**.\n");
    } else {
        let _ = writeln!(w, "Verdict: **FAIL**:\n");
        for p in &problems {
            let _ = writeln!(w, "* {p}");
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "Reproduce: `{}`", args.command);

    print!("{md}");
    if let Err(e) = std::fs::write(&args.out, &md) {
        eprintln!("soak_tool: cannot write {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
