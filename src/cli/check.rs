//! `check`: the configuration validated and shown, secrets redacted.

use std::process::ExitCode;

use super::{load, ConfigArg, EXIT_CONFIG};
use crate::config::{Config, StateSettings};

pub(super) fn check(arg: &ConfigArg) -> ExitCode {
    match load(arg) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            print!("{c}");
            // The outbound settings as `run` builds them: roots counted per source, the
            // proxy from the config or this environment (credentials as `***`).
            match crate::outbound::Outbound::from_config(&c) {
                Ok(outbound) => print!("{outbound}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            print_state_records(&c);
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `check`'s view of the stored records: which key id seals each credential's record
/// (never a key, never a token). The file store only: a Redis store is read by `run`, and
/// `/tokens` shows each credential's `state_key_id` there.
fn print_state_records(c: &Config) {
    let StateSettings::File { path } = &c.state else {
        println!("state records: in Redis (GET /tokens shows the key id of each credential's record)");
        return;
    };
    let Ok(bytes) = std::fs::read(path) else { return };
    let Some(records) = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("credentials").and_then(|r| r.as_object()).cloned())
    else {
        println!(
            "state records: {} cannot be read whole (`run` keeps what it can and reports the rest)",
            path.display()
        );
        return;
    };
    let kids = c.state_key_ids();
    println!("state records ({}):", path.display());
    for (name, record) in &records {
        match crate::token::seal::kid_of(record) {
            Some(kid) if kids.iter().any(|k| k == kid) => println!("  {name}: sealed with key {kid}"),
            Some(kid) => println!("  {name}: sealed with key {kid}, which no configured key is"),
            None => println!("  {name}: plaintext (sealed at the next start when keys are configured)"),
        }
    }
}
