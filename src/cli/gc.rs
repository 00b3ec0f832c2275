//! `comfix gc` and `comfix roots`.

use clap::Args;

use super::{format_bytes, Context, Outcome};
use crate::store::GcOptions;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Report what would be deleted and freed, delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Stop once this much is freed (bytes, or with a unit: 500M, 10G, 1T)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_freed: Option<u64>,
    /// First delete home generations older than this (30d, 12h, 90min), never a current one
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub delete_older_than: Option<std::time::Duration>,
    /// How long what a home that is gone (moved, copied away or deleted) used is kept after a
    /// collection first finds it gone; a moved home's next command registers it again
    #[arg(long, value_name = "DURATION", env = "COMFIX_HOME_GRACE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub home_grace: std::time::Duration,
    /// Delete the entries of `paths/` the last `store rebuild-db` could not recover (until
    /// then, a collection refuses: they may be what a live home uses)
    #[arg(long)]
    pub delete_unrecovered: bool,
}

/// `10G` → 10 GiB; plain numbers are bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size"))?;
    let factor: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("unknown unit in `{text}` (use K, M, G or T)")),
    };
    Ok((number * factor as f64) as u64)
}

pub fn gc(args: GcArgs, context: &Context) -> anyhow::Result<Outcome> {
    let store = context.open_existing_store()?;
    let report = store.gc(
        &GcOptions {
            dry_run: args.dry_run,
            max_freed: args.max_freed,
            older_than: args
                .delete_older_than
                .map(|age| crate::store::db::now() - age.as_secs() as i64),
            home_grace: args.home_grace.as_secs() as i64,
            delete_unrecovered: args.delete_unrecovered,
        },
        &crate::derive::keep::LiveLocks,
    )?;
    if context.json {
        context.print_json(&serde_json::json!({
            "removed_generations": report.removed_generations,
            "report": report,
        }))?;
    } else {
        for generation in &report.removed_generations {
            println!("generation\t{generation}");
        }
        for path in &report.deleted_paths {
            println!("path\t{}", store.path_of(path).display());
        }
        for other in &report.removed_other {
            println!("other\t{other}");
        }
        for error in &report.errors {
            eprintln!("warning: {error}");
        }
        for (home, until) in &report.kept_for_gone_homes {
            tracing::warn!(
                "kept what `{home}` used: the home is gone (moved, copied away or deleted); it is freed after {} (`--home-grace 0s` frees it now; a moved home's next `comfix status` registers it where it is)",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs((*until).max(0) as u64)
                )
            );
        }
        // The summary is data too: `freed <bytes> <human>` (what leaves the disk).
        println!(
            "{}\t{}\t{}",
            if args.dry_run { "would-free" } else { "freed" },
            report.freed_bytes,
            format_bytes(report.freed_bytes)
        );
        tracing::info!(
            "{} {} paths and {} objects, {} freed ({} of file contents); {} live paths kept by {} roots",
            if args.dry_run {
                "would delete"
            } else {
                "deleted"
            },
            report.deleted_paths.len(),
            report.removed_objects,
            format_bytes(report.freed_bytes),
            format_bytes(report.freed_content_bytes),
            report.live_paths,
            report.roots
        );
    }
    Ok(if report.errors.is_empty() {
        Outcome::Success
    } else {
        Outcome::Failure
    })
}

#[derive(serde::Serialize)]
struct RootInfo {
    #[serde(flatten)]
    root: crate::store::Root,
    closure_paths: usize,
    closure_bytes: u64,
}

pub fn roots(context: &Context) -> anyhow::Result<Outcome> {
    let store = context.open_existing_store()?;
    let mut out = Vec::new();
    for root in store.all_roots()? {
        let (closure_paths, closure_bytes) = match store.query(&root.path)? {
            Some(record) => {
                let closure = store.closure(&record)?;
                (closure.len(), closure.iter().map(|r| r.size).sum())
            }
            None => (0, 0),
        };
        out.push(RootInfo {
            root,
            closure_paths,
            closure_bytes,
        });
    }
    if context.json {
        context.print_json(&out)?;
    } else {
        for info in &out {
            println!(
                "{}\t{}\t{} paths, {}{}",
                info.root.name,
                store.path_of(&info.root.path).display(),
                info.closure_paths,
                format_bytes(info.closure_bytes),
                if info.root.home_gone {
                    "\t(stale: its home is gone — moved, copied away or deleted)"
                } else if info.root.live {
                    ""
                } else {
                    "\t(stale: its generation is gone)"
                }
            );
        }
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert!(parse_size("3X").is_err());
    }
}
