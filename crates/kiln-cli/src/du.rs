//! `kiln du` and `kiln prune`, printed as `docker buildx du` and `docker buildx prune` print
//! them: a table (or `--verbose` records), sizes in go-units' decimal form, and buildx's
//! summary lines (`Shared:`, `Private:`, `Reclaimable:`, `Total:`).

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kiln_engine::gc::{PruneOptions, UsageItem};

/// `kiln du` flags.
#[derive(clap::Args)]
pub struct DuArgs {
    /// Show every record with all its fields.
    #[arg(long)]
    verbose: bool,
}

/// `kiln prune` flags.
#[derive(clap::Args)]
pub struct PruneArgs {
    /// Include internal records: the context stat cache (the cache index is compacted).
    #[arg(short = 'a', long)]
    all: bool,
    /// Amount of disk space to keep for cache (e.g. 8MB, 2GB: docker's units, 1MB = 1024 kB).
    #[arg(long = "keep-storage", value_name = "SIZE")]
    keep_storage: Option<String>,
    /// Provide filter values (`until=24h`: only what was not used for 24 hours).
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
    /// Do not prompt for confirmation.
    #[arg(short = 'f', long)]
    force: bool,
    /// Provide a more verbose output.
    #[arg(long)]
    verbose: bool,
}

/// Runs `kiln du` on the store at `root`.
pub fn du(root: &Path, args: &DuArgs) -> Result<ExitCode> {
    let usage = usage_with_mirrors(root)?;
    let now = now_unix();
    let mut out = String::new();
    if args.verbose {
        for item in &usage {
            out.push_str(&pretty(item, now));
        }
    } else {
        out.push_str(&table(&usage, now));
    }
    out.push_str(&summary(&usage));
    write_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `kiln prune` on the store at `root`.
pub fn prune(root: &Path, args: &PruneArgs) -> Result<ExitCode> {
    let keep_storage = args
        .keep_storage
        .as_deref()
        .map(|s| {
            kiln_types::size::parse_ram_size(s).with_context(|| {
                format!("invalid --keep-storage {s:?}: expected a size such as 8MB or 2GB")
            })
        })
        .transpose()?;
    let options = PruneOptions {
        all: args.all,
        keep_storage,
        until: parse_filters(&args.filters)?,
    };
    if !args.force && !confirm(args.all)? {
        return Ok(ExitCode::SUCCESS);
    }
    // Context mirrors first, as BuildKit's default policy takes `source.local` records first.
    let mut removed = prune_mirrors(root, &options)?;
    let report = kiln_engine::gc::prune(root, &options)
        .with_context(|| format!("pruning the store {}", root.display()))?;
    removed.extend(report.removed);
    let report = kiln_engine::gc::PruneReport { removed };
    let now = now_unix();
    let mut out = String::new();
    if args.verbose {
        for item in &report.removed {
            out.push_str(&pretty(item, now));
        }
    } else if !report.removed.is_empty() {
        out.push_str(&table(&report.removed, now));
    }
    out.push_str(&tab_lines(&[("Total:", human_size(report.freed()))]));
    write_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// The store's usage with the context mirrors of a daemon (`kiln serve`) as `source.local`
/// records: they live under the store's `contexts/`, which the engine counts as its own
/// bookkeeping (the `store` item), so their bytes move from that item to theirs.
fn usage_with_mirrors(root: &Path) -> Result<Vec<UsageItem>> {
    let usage = kiln_engine::gc::disk_usage(root)
        .with_context(|| format!("reading the store {}", root.display()))?;
    let mirrors = kiln_server::server::mirrors(root)
        .with_context(|| format!("reading the context mirrors of {}", root.display()))?;
    let moved: u64 = mirrors.iter().map(|m| m.size).sum();
    let (mut items, mut internal): (Vec<_>, Vec<_>) =
        usage.items.into_iter().partition(|i| i.kind != "internal");
    for i in &mut internal {
        if i.id == "store" {
            i.size = i.size.saturating_sub(moved);
        }
    }
    items.extend(mirrors.iter().map(mirror_item));
    // Most recently used first, as BuildKit lists records; bookkeeping last.
    items.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.id.cmp(&b.id)));
    items.extend(internal);
    Ok(items)
}

fn mirror_item(m: &kiln_server::MirrorUsage) -> UsageItem {
    let last_used = m
        .last_used
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    UsageItem {
        id: m.id.clone(),
        kind: "source.local".to_owned(),
        size: m.size,
        in_use: m.in_use,
        shared: false,
        last_used: Some(last_used),
        created: None,
        description: match &m.source {
            Some(s) => format!("local source for {s} of a remote build"),
            None => "local source of a remote build".to_owned(),
        },
        usage_count: 0,
    }
}

/// Removes the unused context mirrors `options` selects, least recently used first: those
/// idle for `until` (all without it), and with `--keep-storage` only until the store fits.
/// As BuildKit's prune, with or without `--all` (`source.local` records are never internal).
fn prune_mirrors(root: &Path, options: &PruneOptions) -> Result<Vec<UsageItem>> {
    let mirrors = kiln_server::server::mirrors(root)
        .with_context(|| format!("reading the context mirrors of {}", root.display()))?;
    if mirrors.is_empty() {
        return Ok(Vec::new());
    }
    let mut total = match options.keep_storage {
        Some(_) => usage_with_mirrors(root)?.iter().map(|i| i.size).sum(),
        None => 0,
    };
    let now = std::time::SystemTime::now();
    let mut removed = Vec::new();
    for m in &mirrors {
        if options.keep_storage.is_some_and(|keep| total <= keep) {
            break;
        }
        let idle = now.duration_since(m.last_used).unwrap_or_default();
        if m.in_use || options.until.is_some_and(|u| idle < u) {
            continue;
        }
        let gone = kiln_server::server::remove_mirror(&m.dir)
            .with_context(|| format!("removing the context mirror {}", m.dir.display()))?;
        if gone {
            total = total.saturating_sub(m.size);
            removed.push(mirror_item(m));
        }
    }
    Ok(removed)
}

/// buildx's question. It reads the answer from standard input as buildx does (so `yes |`
/// works); with no answer to read (not a terminal, nothing piped), it refuses rather than
/// prune silently or do nothing silently.
fn confirm(all: bool) -> Result<bool> {
    let warning = if all {
        "WARNING! This will remove all build cache. Are you sure you want to continue?"
    } else {
        "WARNING! This will remove all dangling build cache. Are you sure you want to continue?"
    };
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{warning} [y/N] ").context("writing to standard output")?;
    stdout.flush().context("writing to standard output")?;
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut answer = String::new();
    let read = stdin
        .lock()
        .read_line(&mut answer)
        .context("reading the answer from standard input")?;
    if read == 0 && !interactive {
        writeln!(stdout).context("writing to standard output")?;
        bail!(
            "kiln prune asks for confirmation, and standard input gave no answer (it is not a \
             terminal): pass -f (--force) to prune without asking"
        );
    }
    Ok(answer.trim().eq_ignore_ascii_case("y"))
}

/// buildx's prune filters that kiln knows: `until` (and its old name `unused-for`).
fn parse_filters(filters: &[String]) -> Result<Option<Duration>> {
    let mut until = None;
    for f in filters {
        let (key, value) = f.split_once('=').unwrap_or((f.as_str(), ""));
        match key.trim() {
            "until" | "unused-for" => {
                if until.is_some() {
                    bail!("--filter {f:?}: the \"until\" filter expects only one value");
                }
                until = Some(parse_go_duration(value.trim()).with_context(|| {
                    format!("--filter {f:?}: \"until\" expects a duration (e.g., '24h')")
                })?);
            }
            other => {
                bail!("--filter {f:?}: kiln does not filter on {other:?}; it knows until=DURATION")
            }
        }
    }
    Ok(until)
}

/// A duration as Go's `time.ParseDuration` reads it: `300ms`, `1.5h`, `2h45m`.
fn parse_go_duration(text: &str) -> Result<Duration> {
    if text.is_empty() {
        bail!("empty duration");
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut secs = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num
            .parse()
            .with_context(|| format!("invalid duration {text:?}"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => bail!("missing unit in duration {text:?}"),
            other => bail!("unknown unit {other:?} in duration {text:?}"),
        };
        secs += value * scale;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(secs))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// go-units' `HumanSize`: decimal units, four significant digits (`1.235MB`, `512B`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    let digits = if v < 10.0 {
        1
    } else if v < 100.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.*}", 4 - digits);
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    format!("{s}{}", UNITS[i])
}

/// go-units' `HumanDuration`.
fn human_duration(secs: u64) -> String {
    let hours = (secs as f64 / 3600.0 + 0.5) as u64;
    match secs {
        0 => "Less than a second".to_owned(),
        1 => "1 second".to_owned(),
        s if s < 60 => format!("{s} seconds"),
        s if s / 60 == 1 => "About a minute".to_owned(),
        s if s / 60 < 60 => format!("{} minutes", s / 60),
        _ if hours == 1 => "About an hour".to_owned(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", secs / 3600 / 24 / 365),
    }
}

fn ago(last_used: Option<u64>, now: u64) -> String {
    last_used.map_or_else(String::new, |t| {
        format!("{} ago", human_duration(now.saturating_sub(t)))
    })
}

/// Cache mounts are mutable, as BuildKit marks them (`*` after the ID in the table).
fn mutable(item: &UsageItem) -> bool {
    item.kind == "exec.cachemount"
}

/// buildx's default table: `ID RECLAIMABLE SIZE LAST ACCESSED`; `*` marks a mutable record's
/// ID and a shared record's size.
fn table(items: &[UsageItem], now: u64) -> String {
    let mut rows = vec![[
        "ID".to_owned(),
        "RECLAIMABLE".to_owned(),
        "SIZE".to_owned(),
        "LAST ACCESSED".to_owned(),
    ]];
    for i in items {
        let id = if mutable(i) {
            format!("{}*", i.id)
        } else {
            i.id.clone()
        };
        let size = if i.shared {
            format!("{}*", human_size(i.size))
        } else {
            human_size(i.size)
        };
        rows.push([id, (!i.in_use).to_string(), size, ago(i.last_used, now)]);
    }
    let widths: Vec<usize> = (0..3)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line = format!(
            "{:w0$} {:w1$} {:w2$} {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// buildx's `--verbose` record.
fn pretty(i: &UsageItem, now: u64) -> String {
    let mut out = format!("ID:           {}\n", i.id);
    if let Some(c) = i.created {
        let at = kiln_types::image::rfc3339_utc(i64::try_from(c).unwrap_or(i64::MAX));
        out.push_str(&format!("Created at:   {at}\n"));
    }
    out.push_str(&format!("Mutable:      {}\n", mutable(i)));
    out.push_str(&format!("Reclaimable:  {}\n", !i.in_use));
    out.push_str(&format!("Shared:       {}\n", i.shared));
    out.push_str(&format!("Size:         {}\n", human_size(i.size)));
    if !i.description.is_empty() {
        out.push_str(&format!("Description:  {}\n", i.description));
    }
    out.push_str(&format!("Usage count:  {}\n", i.usage_count));
    if i.last_used.is_some() {
        out.push_str(&format!("Last used:    {}\n", ago(i.last_used, now)));
    }
    out.push_str(&format!("Type:         {}\n\n", i.kind));
    out
}

/// buildx's summary: `Shared:` and `Private:` when something is shared, then `Reclaimable:`
/// and `Total:`.
fn summary(items: &[UsageItem]) -> String {
    let total: u64 = items.iter().map(|i| i.size).sum();
    let reclaimable: u64 = items.iter().filter(|i| !i.in_use).map(|i| i.size).sum();
    let shared: u64 = items.iter().filter(|i| i.shared).map(|i| i.size).sum();
    let mut lines = Vec::new();
    if shared > 0 {
        lines.push(("Shared:", human_size(shared)));
        lines.push(("Private:", human_size(total - shared)));
    }
    lines.push(("Reclaimable:", human_size(reclaimable)));
    lines.push(("Total:", human_size(total)));
    tab_lines(&lines)
}

/// `key:<tabs>value` lines aligned as Go's tabwriter with a tab pad character aligns them.
fn tab_lines(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let cell = width.div_ceil(8) * 8;
    lines
        .iter()
        .map(|(k, v)| {
            let tabs = (cell - k.len()).div_ceil(8);
            format!("{k}{}{v}\n", "\t".repeat(tabs))
        })
        .collect()
}

/// Writes `text` to standard output; a reader that stopped early (`| head`) is no error.
pub(crate) fn write_stdout(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // `kiln du | head` closes the pipe early: not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_go_units_writes_them() {
        for (bytes, text) in [
            (0, "0B"),
            (999, "999B"),
            (1000, "1kB"),
            (1234, "1.234kB"),
            (12_345, "12.35kB"),
            (123_456_789, "123.5MB"),
            (20_000_000_000, "20GB"),
        ] {
            assert_eq!(human_size(bytes), text, "{bytes}");
        }
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(59), "59 seconds");
        assert_eq!(human_duration(61), "About a minute");
        assert_eq!(human_duration(300), "5 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(5 * 86400), "5 days");
    }

    #[test]
    fn until_takes_go_durations_and_other_filters_are_refused() {
        let f = |s: &str| parse_filters(&[s.to_owned()]);
        assert_eq!(f("until=24h").unwrap(), Some(Duration::from_secs(86400)));
        assert_eq!(f("until=1h30m").unwrap(), Some(Duration::from_secs(5400)));
        assert_eq!(
            f("unused-for=1.5s").unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert!(f("until=24").unwrap_err().to_string().contains("24h"));
        assert!(f("type=regular")
            .unwrap_err()
            .to_string()
            .contains("until=DURATION"));
    }

    #[test]
    fn summary_lines_align_as_buildx_prints_them() {
        let item = |size, in_use, shared| UsageItem {
            id: "x".into(),
            kind: "regular".into(),
            size,
            in_use,
            shared,
            last_used: None,
            created: None,
            description: String::new(),
            usage_count: 0,
        };
        assert_eq!(
            summary(&[item(1000, false, true), item(500, true, false)]),
            "Shared:\t\t1kB\nPrivate:\t500B\nReclaimable:\t1kB\nTotal:\t\t1.5kB\n"
        );
        assert_eq!(
            summary(&[item(1000, false, false)]),
            "Reclaimable:\t1kB\nTotal:\t\t1kB\n"
        );
    }
}
