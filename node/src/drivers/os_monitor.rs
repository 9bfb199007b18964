//! os-monitor: every N seconds, the device's load averages, CPU use, memory, disk use
//! of the data directory's file system and, where the device has one, battery.
//!
//! A reading:
//!
//! ```json
//! {"load1": 0.42, "load5": 0.37, "load15": 0.30, "cpu_percent": 12.5,
//!  "mem_total_bytes": 25165824000, "mem_used_bytes": 3221225472, "mem_used_percent": 12.8,
//!  "disk_total_bytes": 270582939648, "disk_used_bytes": 198642237440, "disk_used_percent": 73.4,
//!  "battery_percent": 81}
//! ```
//!
//! Linux only (it reads /proc and /sys); elsewhere the driver fails with a clear error.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{Context, Outcome};

/// CPU time counters from the first line of /proc/stat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Jiffies spent idle (idle + iowait).
    pub idle: u64,
    /// All jiffies.
    pub total: u64,
}

/// Parses /proc/stat's `cpu` line.
pub fn parse_cpu(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    // guest and guest_nice are already counted in user and nice.
    let total = fields.iter().take(8).sum();
    Some(CpuTimes { idle, total })
}

/// Parses /proc/loadavg.
pub fn parse_load(loadavg: &str) -> Option<[f64; 3]> {
    let mut parts = loadavg.split_whitespace().map(str::parse::<f64>);
    Some([
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    ])
}

/// Parses /proc/meminfo: total and available bytes.
pub fn parse_mem(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// Where Linux lists the device's power supplies.
pub const POWER_SUPPLY: &str = "/sys/class/power_supply";

/// One battery's charge: energy or charge now and full, and the capacity in percent.
#[derive(Debug, Default)]
struct Charge {
    now_full: Option<(u64, u64)>,
    percent: Option<u64>,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The device's battery charge in percent, from a power-supply directory laid out as
/// Linux's `/sys/class/power_supply` (`POWER_SUPPLY`), or `None` when the device has
/// no battery. Batteries of peripherals (`scope` = `Device`, a wireless mouse, say) and
/// empty battery bays (`present` = 0) are not counted. Several batteries (some laptops
/// have two) are combined by their energy (or charge) now and full when every one
/// reports them, else by the mean of their `capacity`.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
pub fn battery(power_supply: &Path) -> Option<u64> {
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(power_supply)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .collect();
    dirs.sort();
    let text = |dir: &Path, name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map(|t| t.trim().to_owned())
            .unwrap_or_default()
    };
    let mut charges = Vec::new();
    for dir in &dirs {
        if text(dir, "type") != "Battery"
            || text(dir, "scope") == "Device"
            || text(dir, "present") == "0"
        {
            continue;
        }
        let pair = |now: &str, full: &str| {
            Some((read_u64(&dir.join(now))?, read_u64(&dir.join(full))?))
                .filter(|(_, full)| *full > 0)
        };
        charges.push(Charge {
            now_full: pair("energy_now", "energy_full")
                .or_else(|| pair("charge_now", "charge_full")),
            percent: read_u64(&dir.join("capacity")).map(|p| p.min(100)),
        });
    }
    if charges.is_empty() {
        return None;
    }
    let pairs: Option<Vec<(u64, u64)>> = charges.iter().map(|c| c.now_full).collect();
    if let Some(pairs) = pairs {
        let now: u64 = pairs.iter().map(|(now, _)| now).sum();
        let full: u64 = pairs.iter().map(|(_, full)| full).sum();
        return Some(((100.0 * now as f64 / full as f64).round() as u64).min(100));
    }
    let percents: Vec<u64> = charges.iter().filter_map(|c| c.percent).collect();
    let count = u64::try_from(percents.len()).ok().filter(|n| *n > 0)?;
    let sum: u64 = percents.iter().sum();
    Some((sum + count / 2) / count)
}

fn read(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|err| format!("cannot read {path}: {err}"))
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One reading's value; `previous` CPU counters give the CPU use since then.
pub fn sample(
    data_dir: &Path,
    power_supply: &Path,
    previous: Option<CpuTimes>,
) -> Result<(Value, CpuTimes), String> {
    let load = parse_load(&read("/proc/loadavg")?).ok_or("unreadable /proc/loadavg")?;
    let cpu = parse_cpu(&read("/proc/stat")?).ok_or("unreadable /proc/stat")?;
    let (mem_total, mem_available) =
        parse_mem(&read("/proc/meminfo")?).ok_or("unreadable /proc/meminfo")?;
    let disk = rustix::fs::statvfs(data_dir)
        .map_err(|err| format!("cannot read the disk use of {}: {err}", data_dir.display()))?;
    let disk_total = disk.f_blocks.saturating_mul(disk.f_frsize);
    let disk_free = disk.f_bavail.saturating_mul(disk.f_frsize);
    let disk_used = disk_total.saturating_sub(disk.f_bfree.saturating_mul(disk.f_frsize));
    let mem_used = mem_total.saturating_sub(mem_available);
    let mut value = Map::new();
    value.insert("load1".into(), json!(load[0]));
    value.insert("load5".into(), json!(load[1]));
    value.insert("load15".into(), json!(load[2]));
    if let Some(prev) = previous {
        let total = cpu.total.saturating_sub(prev.total);
        let idle = cpu.idle.saturating_sub(prev.idle);
        if total > 0 {
            #[allow(clippy::cast_precision_loss)]
            let busy = 100.0 * (total.saturating_sub(idle)) as f64 / total as f64;
            value.insert("cpu_percent".into(), json!(round(busy)));
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let percent = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            round(100.0 * part as f64 / whole as f64)
        }
    };
    value.insert("mem_total_bytes".into(), json!(mem_total));
    value.insert("mem_used_bytes".into(), json!(mem_used));
    value.insert(
        "mem_used_percent".into(),
        json!(percent(mem_used, mem_total)),
    );
    value.insert("disk_total_bytes".into(), json!(disk_total));
    value.insert("disk_used_bytes".into(), json!(disk_used));
    value.insert("disk_free_bytes".into(), json!(disk_free));
    value.insert(
        "disk_used_percent".into(),
        json!(percent(disk_used, disk_used + disk_free)),
    );
    if let Some(b) = battery(power_supply) {
        value.insert("battery_percent".into(), json!(b));
    }
    Ok((Value::Object(value), cpu))
}

/// Runs until stopped.
pub async fn run(mut ctx: Context) -> Result<Outcome, String> {
    let interval = Duration::from_secs(ctx.spec.interval_secs.unwrap_or(10));
    let data_dir = ctx.node.config.data_dir.clone();
    let power_supply = Path::new(POWER_SUPPLY);
    // CPU use needs two samples: take the first one a moment before the first reading.
    let mut previous = Some(sample(&data_dir, power_supply, None)?.1);
    ctx.running(None);
    let mut wait = interval.min(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = ctx.stopped() => return Ok(Outcome::Stopped),
        }
        wait = interval;
        let (value, cpu) = sample(&data_dir, power_supply, previous)?;
        previous = Some(cpu);
        let store = ctx.store.clone();
        let reading = hearth_stores::Reading::new(super::now_ms(), value);
        tokio::task::spawn_blocking(move || store.append(vec![reading]))
            .await
            .map_err(|err| err.to_string())?
            .map_err(|err| format!("cannot write: {err}"))?;
        ctx.wrote(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  4705 356 584 3699 23 23 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(
            parse_cpu(stat),
            Some(CpuTimes {
                idle: 3722,
                total: 4705 + 356 + 584 + 3699 + 23 + 23
            })
        );
        assert_eq!(
            parse_load("0.42 0.37 0.30 1/123 4567\n"),
            Some([0.42, 0.37, 0.30])
        );
        let meminfo = "MemTotal:       16318024 kB\nMemFree:  1 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(
            parse_mem(meminfo),
            Some((16_318_024 * 1024, 12_000_000 * 1024))
        );
        assert_eq!(parse_load("garbage"), None);
    }

    fn supply(root: &Path, name: &str, files: &[(&str, &str)]) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, text) in files {
            std::fs::write(dir.join(file), format!("{text}\n")).unwrap();
        }
    }

    #[test]
    fn reads_batteries_from_a_power_supply_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // No such directory, or no battery in it: no reading.
        assert_eq!(battery(&root.join("missing")), None);
        supply(root, "AC", &[("type", "Mains"), ("online", "1")]);
        assert_eq!(battery(root), None);
        // A wireless mouse's battery is not the device's.
        supply(
            root,
            "hidpp_battery_0",
            &[("type", "Battery"), ("scope", "Device"), ("capacity", "15")],
        );
        assert_eq!(battery(root), None);
        // One battery with only a capacity.
        supply(root, "BAT0", &[("type", "Battery"), ("capacity", "81")]);
        assert_eq!(battery(root), Some(81));
        // An empty bay is skipped.
        supply(
            root,
            "BAT2",
            &[("type", "Battery"), ("present", "0"), ("capacity", "0")],
        );
        assert_eq!(battery(root), Some(81));
        // Two batteries, one without energy figures: the mean of the capacities.
        supply(
            root,
            "BAT1",
            &[
                ("type", "Battery"),
                ("capacity", "40"),
                ("energy_now", "9000000"),
                ("energy_full", "45000000"),
            ],
        );
        assert_eq!(battery(root), Some(61));
        // Both with energy figures: weighted by them (30 + 9 Wh of 50 + 45 Wh).
        supply(
            root,
            "BAT0",
            &[("energy_now", "30000000"), ("energy_full", "50000000")],
        );
        assert_eq!(battery(root), Some(41));
        // Charge figures (µAh) serve as well; an unreadable capacity is ignored.
        let tmp = tempfile::tempdir().unwrap();
        supply(
            tmp.path(),
            "battery",
            &[
                ("type", "Battery"),
                ("capacity", "n/a"),
                ("charge_now", "2500000"),
                ("charge_full", "3000000"),
            ],
        );
        assert_eq!(battery(tmp.path()), Some(83));
        // A capacity over 100 (a miscalibrated gauge) reads as 100.
        let tmp = tempfile::tempdir().unwrap();
        supply(
            tmp.path(),
            "BAT0",
            &[("type", "Battery"), ("capacity", "104")],
        );
        assert_eq!(battery(tmp.path()), Some(100));
    }
}
