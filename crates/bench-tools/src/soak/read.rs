//! What the report reads: the work directory's files parsed into answers, fault
//! windows, samples and token calls, and how a failed answer is classified.

use std::path::Path;

/// Unavoidable failures may trail a `kill -9` window by this much (a connection the
/// client opened just before the replica answered again).
pub(super) const RESTART_SLACK_MS: u64 = 1000;
/// The refresher's backoff cap: a long fault's recovery tail is never longer.
pub(super) const BACKOFF_CAP_MS: u64 = 30_000;
/// Failures of requests to a black-holed upstream are excused this long after it: by
/// then the proxy must have given up the dead connections and opened new ones.
pub(super) const BLACKHOLE_RECOVERY_MS: u64 = 20_000;

/// One answer of `answers.tsv` or `probes.tsv`.
pub(super) struct Answer {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) replica: String,
    pub(super) kind: String,
    pub(super) outcome: String,
    pub(super) status: String,
    pub(super) detail: String,
}

impl Answer {
    pub(super) fn parse(line: &str) -> Option<Answer> {
        let f: Vec<&str> = line.splitn(7, '\t').collect();
        if f.len() < 7 {
            return None;
        }
        Some(Answer {
            start: f[0].parse().ok()?,
            end: f[1].parse().ok()?,
            replica: f[2].into(),
            kind: f[3].into(),
            outcome: f[4].into(),
            status: f[5].into(),
            detail: f[6].into(),
        })
    }

    pub(super) fn overlaps(&self, from: u64, to: u64) -> bool {
        self.start <= to && self.end >= from
    }

    pub(super) fn is_token_unavailable(&self) -> bool {
        self.outcome == "http" && self.status == "503" && self.detail.starts_with("token_unavailable")
    }

    pub(super) fn short(&self) -> String {
        format!("{} {} {}", self.outcome, self.status, self.detail.chars().take(120).collect::<String>())
    }
}

/// One fault the schedule injected.
pub(super) struct Window {
    pub(super) kind: String,
    pub(super) replica: String,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) long: bool,
    pub(super) description: String,
}

impl Window {
    pub(super) fn parse(line: &str) -> Option<Window> {
        let f: Vec<&str> = line.splitn(6, '\t').collect();
        if f.len() < 6 {
            return None;
        }
        Some(Window {
            kind: f[0].into(),
            replica: f[1].into(),
            start: f[2].parse().ok()?,
            end: f[3].parse().ok()?,
            long: f[4] == "1",
            description: f[5].into(),
        })
    }

    pub(super) fn applies_to(&self, replica: &str) -> bool {
        self.replica == "*" || self.replica == replica
    }

    /// Until when failures may still be this fault's doing: the recovery of a token
    /// endpoint fault (the backoff in force when it lifts is at most its length).
    pub(super) fn tail_end(&self) -> u64 {
        if self.kind.starts_with("token") {
            self.end + (self.end - self.start).min(BACKOFF_CAP_MS) + 1000
        } else if self.kind == "kill" {
            self.end + RESTART_SLACK_MS
        } else if self.kind == "blackhole" {
            self.end + BLACKHOLE_RECOVERY_MS
        } else {
            self.end + 1000
        }
    }
}

/// Why a failure happened, as the table counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    OwnRestart,
    LongTokenFault,
    BlackHole,
    Avoidable,
}

pub(super) fn classify(a: &Answer, windows: &[Window]) -> (Cause, Option<usize>) {
    let mine = |w: &&Window| w.applies_to(&a.replica) && a.overlaps(w.start, w.tail_end());
    if let Some(i) = windows.iter().position(|w| w.kind == "kill" && mine(&w)) {
        return (Cause::OwnRestart, Some(i));
    }
    if a.is_token_unavailable() {
        if let Some(i) = windows.iter().position(|w| w.long && mine(&w)) {
            return (Cause::LongTokenFault, Some(i));
        }
    }
    if a.kind == "hostile-h2" {
        if let Some(i) = windows.iter().position(|w| w.kind == "blackhole" && mine(&w)) {
            return (Cause::BlackHole, Some(i));
        }
    }
    (Cause::Avoidable, windows.iter().position(|w| mine(&w)))
}

pub(super) fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|s| s.lines().map(str::to_string).collect()).unwrap_or_default()
}

/// One RSS/fd sample.
pub(super) struct Sample {
    pub(super) phase: String,
    pub(super) process: String,
    pub(super) pid: String,
    pub(super) rss_kb: u64,
    pub(super) fds: i64,
}

pub(super) fn samples(dir: &Path) -> Vec<Sample> {
    lines(&dir.join("samples.tsv"))
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() >= 6).then(|| Sample {
                phase: f[1].into(),
                process: f[2].into(),
                pid: f[3].into(),
                rss_kb: f[4].parse().unwrap_or(0),
                fds: f[5].parse().unwrap_or(0),
            })
        })
        .collect()
}

/// `GET /_hostile/stats` of `soak_tool hostile`.
#[derive(serde::Deserialize, Default)]
pub(super) struct Hostile {
    pub(super) cut: u64,
    pub(super) frozen: u64,
}

/// The replicas the load answered for, in order.
pub(super) fn per_replica_names(answers: &[Answer]) -> Vec<String> {
    let mut names: Vec<String> = answers.iter().map(|a| a.replica.clone()).collect();
    names.sort();
    names.dedup();
    names
}

#[derive(serde::Deserialize, Default)]
pub(super) struct Calls {
    pub(super) calls: Vec<Call>,
    pub(super) password_logins_ms: Vec<u64>,
}

#[derive(serde::Deserialize)]
pub(super) struct Call {
    pub(super) query: String,
}
