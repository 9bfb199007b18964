//! What a run measured: raw records while it runs, a [`Summary`] after, and the files
//! written from both (JSON, CSV, SVG). Definitions are in `docs/netsim.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::svg;

/// What a message was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TrafficKind {
    /// Admission handshakes.
    Admission,
    /// Membership exchanges.
    Membership,
    /// Sync engine messages.
    Sync,
    /// Job requests and results.
    Job,
}

impl TrafficKind {
    fn as_str(self) -> &'static str {
        match self {
            TrafficKind::Admission => "admission",
            TrafficKind::Membership => "membership",
            TrafficKind::Sync => "sync",
            TrafficKind::Job => "job",
        }
    }
}

/// One write and when every device that should hold it held it.
#[derive(Debug, Clone, Serialize)]
pub struct ConvergenceRecord {
    /// The store.
    pub store: String,
    /// The writing device.
    pub origin: String,
    /// When it was written, µs.
    pub written_us: u64,
    /// When the last holder had it, µs.
    pub converged_us: Option<u64>,
}

/// One device powered on again (after a reboot or a crash), and when it had caught up:
/// every write it missed while down, and every write of its own that had not reached
/// the other holders, held by every holder.
#[derive(Debug, Clone, Serialize)]
pub struct RestartRecord {
    /// The device.
    pub device: String,
    /// When it was powered on, µs.
    pub powered_on_us: u64,
    /// Writes it had to receive or pass on.
    pub missed: usize,
    /// When the last of them was everywhere, µs.
    pub caught_up_us: Option<u64>,
}

/// One job.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// The job's name.
    pub job: String,
    /// The submitting device.
    pub from: String,
    /// Where it was sent to run.
    pub ran_on: Option<String>,
    /// When submitted, µs.
    pub submitted_us: u64,
    /// ok, unavailable (no holder reachable), timeout, or pending at the end.
    pub outcome: &'static str,
    /// Submission to result, µs.
    pub latency_us: Option<u64>,
    /// Records the job scanned where it ran.
    pub records_scanned: u64,
    /// Records its origin held that the executor lacked.
    pub records_missing: u64,
    /// Was a partition in force when it was submitted?
    pub during_partition: bool,
}

/// What the relays carried.
#[derive(Debug, Clone, Default)]
pub struct RelayRecord {
    /// Connections opened through a relay.
    pub connections: u64,
    /// Of those, made direct by a hole punch.
    pub punches: u64,
    /// Messages forwarded.
    pub messages: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Bytes forwarded by each relay node.
    pub by_relay: BTreeMap<u32, u64>,
}

/// Raw records of a run.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    bucket_us: u64,
    /// Every write that other devices had to receive.
    pub convergence: Vec<ConvergenceRecord>,
    /// Every job.
    pub jobs: Vec<JobRecord>,
    /// Every power-on after a reboot or a crash.
    pub restarts: Vec<RestartRecord>,
    /// Bytes per time bucket, then per link class.
    over_time: BTreeMap<u64, BTreeMap<String, u64>>,
    per_class: BTreeMap<String, (u64, u64)>,
    per_kind: BTreeMap<&'static str, (u64, u64)>,
    raw_left_origin: u64,
    raw_over_wan: u64,
    raw_to_cloud: u64,
    sealed_to_cloud: u64,
    /// Size of every Push message of plaintext store data sent, in order.
    pub pushes: Vec<u64>,
    /// What the relays carried.
    pub relay: RelayRecord,
    /// Messages dropped by a rule (datagram loss) or refused before admission.
    pub dropped: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Messages lost once and sent again (reliable transport).
    pub retransmitted: u64,
    /// Messages lost because their link went down.
    pub lost_on_cut: u64,
    /// Peers disconnected for misbehaving.
    pub misbehaved: u64,
    /// Sync messages dropped because the peer's window and the queue behind it were
    /// full (the sync engine's repair sends what they carried).
    pub sync_queue_full: u64,
    /// Store errors.
    pub local_errors: u64,
    /// Admissions (one per side per connection).
    pub admissions: u64,
    /// Refused admissions.
    pub refused: u64,
    /// Writes not yet everywhere at the scenario's end.
    pub unconverged_at_end: usize,
    /// Nodes whose membership lists every device of their household at the end.
    pub membership_complete: usize,
    /// Replicas compared after the drain.
    pub replicas_checked: usize,
    /// Replicas that differed from their origin after the drain.
    pub replicas_divergent: usize,
    /// Every device was online and no link was cut throughout the drain.
    pub convergence_expected: bool,
    /// Nodes.
    pub nodes: usize,
    /// Events handled.
    pub events: u64,
    /// The scenario's end, µs.
    pub end_us: u64,
}

impl Recorder {
    /// An empty recorder with time buckets of `bucket_us`.
    pub fn new(bucket_us: u64) -> Self {
        Self {
            bucket_us: bucket_us.max(1),
            ..Self::default()
        }
    }

    /// A message of `bytes` crossed a link of `class` at `now`.
    pub fn traffic(&mut self, now: u64, class: &str, kind: TrafficKind, bytes: u64) {
        // Looked up by the borrowed name first: a class is new only a few times a run.
        let bucket = now / self.bucket_us;
        let classes = self.over_time.entry(bucket).or_default();
        match classes.get_mut(class) {
            Some(sum) => *sum += bytes,
            None => {
                classes.insert(class.to_owned(), bytes);
            }
        }
        match self.per_class.get_mut(class) {
            Some(c) => {
                c.0 += 1;
                c.1 += bytes;
            }
            None => {
                self.per_class.insert(class.to_owned(), (1, bytes));
            }
        }
        let k = self.per_kind.entry(kind.as_str()).or_insert((0, 0));
        k.0 += 1;
        k.1 += bytes;
    }

    /// Bytes per (time bucket, link class), in that order.
    fn over_time(&self) -> impl Iterator<Item = (u64, &str, u64)> {
        self.over_time.iter().flat_map(|(bucket, classes)| {
            classes
                .iter()
                .map(move |(class, bytes)| (*bucket, class.as_str(), *bytes))
        })
    }

    /// A message of `bytes` went through the relay node `via`.
    pub fn relayed(&mut self, via: u32, bytes: u64) {
        self.relay.messages += 1;
        self.relay.bytes += bytes;
        *self.relay.by_relay.entry(via).or_insert(0) += bytes;
    }

    /// A message carrying store data was sent.
    pub fn raw(&mut self, from_origin: bool, wan: bool, to_cloud: bool, bytes: u64) {
        if from_origin {
            self.raw_left_origin += bytes;
        }
        if wan {
            self.raw_over_wan += bytes;
        }
        if to_cloud {
            self.raw_to_cloud += bytes;
        }
    }

    /// A message carrying store data as ciphertext (to or from a sealed holder) was
    /// sent; `bytes` include the sealing overhead.
    pub fn sealed(&mut self, to_cloud: bool, bytes: u64) {
        if to_cloud {
            self.sealed_to_cloud += bytes;
        }
    }
}

/// Count, mean and percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    /// Values.
    pub count: usize,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}

impl Stats {
    /// Statistics of `values`.
    pub fn of(values: &[f64]) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Self::default();
        }
        Self {
            count: v.len(),
            mean: r3(v.iter().sum::<f64>() / v.len() as f64),
            p50: r3(percentile(&v, 0.5)),
            p90: r3(percentile(&v, 0.9)),
            p99: r3(percentile(&v, 0.99)),
            max: r3(v.last().copied().unwrap_or(0.0)),
        }
    }
}

/// Job outcomes.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct JobSummary {
    /// Submitted.
    pub submitted: usize,
    /// Answered.
    pub ok: usize,
    /// Refused at once: no holder of the data reachable.
    pub unavailable: usize,
    /// Sent but not answered in time.
    pub timeout: usize,
    /// ok / submitted.
    pub availability: f64,
    /// Submitted while a partition was in force.
    pub submitted_during_partition: usize,
    /// Of those, answered.
    pub ok_during_partition: usize,
    /// Their availability.
    pub availability_during_partition: f64,
    /// Latency of answered jobs, ms.
    pub latency_ms: Stats,
    /// Mean records the executor lacked compared with the origin, per answered job.
    pub mean_records_missing: f64,
}

/// What the relays carried in a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RelaySummary {
    /// Connections opened through a relay (both ends behind NATs).
    pub connections: u64,
    /// Of those, made direct by a hole punch.
    pub punched: u64,
    /// Messages forwarded by relays.
    pub messages: u64,
    /// Bytes forwarded by relays (each message counted once, not per hop).
    pub bytes: u64,
    /// Bytes forwarded by the busiest relay node.
    pub busiest_relay_bytes: u64,
}

/// The summary of one run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Strategy.
    pub strategy: String,
    /// Seed.
    pub seed: u64,
    /// Nodes.
    pub nodes: usize,
    /// Simulated seconds (the drain not included).
    pub duration_s: f64,
    /// Events handled.
    pub events: u64,
    /// Writes that other devices had to receive.
    pub writes: usize,
    /// Of those, held by every holder by the end of the drain.
    pub writes_converged: usize,
    /// Of those, not yet everywhere at the scenario's end.
    pub writes_unconverged_at_end: usize,
    /// Convergence time of converged writes, ms.
    pub convergence_ms: Stats,
    /// Devices powered on again after a reboot or a crash.
    pub restarts: usize,
    /// Of those, the ones that had missed writes (or not passed on their own) and
    /// caught up by the end of the drain.
    pub restarts_caught_up: usize,
    /// Of those that missed writes, still catching up at the end of the drain.
    pub restarts_not_caught_up: usize,
    /// Power-on to caught up, of the restarts that had something to catch up, ms.
    pub restart_catch_up_ms: Stats,
    /// Bytes per link class (a message counts on every class it crosses).
    pub bytes_by_class: BTreeMap<String, u64>,
    /// Messages per link class.
    pub messages_by_class: BTreeMap<String, u64>,
    /// Bytes per protocol, counted per link crossed.
    pub bytes_by_kind: BTreeMap<String, u64>,
    /// Bytes of store data sent by the device that wrote it.
    pub raw_bytes_left_origin: u64,
    /// Bytes of store data sent over a path that leaves a home LAN.
    pub raw_bytes_over_internet: u64,
    /// Bytes of store data received by cloud devices.
    pub raw_bytes_to_cloud: u64,
    /// Bytes of store data received by cloud devices as ciphertext (sealed holding),
    /// the sealing overhead included.
    pub sealed_bytes_to_cloud: u64,
    /// Jobs.
    pub jobs: JobSummary,
    /// What the relays carried.
    pub relay: RelaySummary,
    /// Messages dropped (loss, or before admission).
    pub messages_dropped: u64,
    /// Messages duplicated.
    pub messages_duplicated: u64,
    /// Messages lost once and sent again (reliable transport).
    pub messages_retransmitted: u64,
    /// Messages lost because their link went down.
    pub messages_lost_on_cut: u64,
    /// Admissions.
    pub admissions: u64,
    /// Refused admissions.
    pub admissions_refused: u64,
    /// Peers disconnected for misbehaving.
    pub misbehaved: u64,
    /// Sync messages dropped because the peer's window and the queue behind it were
    /// full (the sync engine's repair sends what they carried).
    pub sync_queue_full: u64,
    /// Store errors.
    pub local_errors: u64,
    /// Nodes whose membership lists every device of their household at the end.
    pub membership_complete: usize,
    /// Replicas compared with their origin after the drain.
    pub replicas_checked: usize,
    /// Of those, different.
    pub replicas_divergent: usize,
    /// Every device was online and no link was cut throughout the drain, so every
    /// write must have converged and every replica must equal its origin's.
    pub convergence_expected: bool,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Summary {
    /// Summarises a run.
    pub fn of(scenario: &str, strategy: &str, seed: u64, r: &Recorder) -> Self {
        let conv: Vec<f64> = r
            .convergence
            .iter()
            .filter_map(|c| c.converged_us.map(|t| ms(t - c.written_us)))
            .collect();
        let missed: Vec<&RestartRecord> = r.restarts.iter().filter(|x| x.missed > 0).collect();
        let catch_up: Vec<f64> = missed
            .iter()
            .filter_map(|x| x.caught_up_us.map(|t| ms(t - x.powered_on_us)))
            .collect();
        let ok: Vec<&JobRecord> = r.jobs.iter().filter(|j| j.outcome == "ok").collect();
        let lat: Vec<f64> = ok.iter().filter_map(|j| j.latency_us.map(ms)).collect();
        let during: Vec<&JobRecord> = r.jobs.iter().filter(|j| j.during_partition).collect();
        let ok_during = during.iter().filter(|j| j.outcome == "ok").count();
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { r3(a as f64 / b as f64) };
        Self {
            scenario: scenario.to_owned(),
            strategy: strategy.to_owned(),
            seed,
            nodes: r.nodes,
            duration_s: r3(r.end_us as f64 / 1e6),
            events: r.events,
            writes: r.convergence.len(),
            writes_converged: conv.len(),
            writes_unconverged_at_end: r.unconverged_at_end,
            convergence_ms: Stats::of(&conv),
            restarts: r.restarts.len(),
            restarts_caught_up: catch_up.len(),
            restarts_not_caught_up: missed.len() - catch_up.len(),
            restart_catch_up_ms: Stats::of(&catch_up),
            bytes_by_class: r.per_class.iter().map(|(k, v)| (k.clone(), v.1)).collect(),
            messages_by_class: r.per_class.iter().map(|(k, v)| (k.clone(), v.0)).collect(),
            bytes_by_kind: r
                .per_kind
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.1))
                .collect(),
            raw_bytes_left_origin: r.raw_left_origin,
            raw_bytes_over_internet: r.raw_over_wan,
            raw_bytes_to_cloud: r.raw_to_cloud,
            sealed_bytes_to_cloud: r.sealed_to_cloud,
            jobs: JobSummary {
                submitted: r.jobs.len(),
                ok: ok.len(),
                unavailable: r.jobs.iter().filter(|j| j.outcome == "unavailable").count(),
                timeout: r.jobs.iter().filter(|j| j.outcome == "timeout").count(),
                availability: ratio(ok.len(), r.jobs.len()),
                submitted_during_partition: during.len(),
                ok_during_partition: ok_during,
                availability_during_partition: ratio(ok_during, during.len()),
                latency_ms: Stats::of(&lat),
                mean_records_missing: if ok.is_empty() {
                    0.0
                } else {
                    r3(ok.iter().map(|j| j.records_missing as f64).sum::<f64>() / ok.len() as f64)
                },
            },
            relay: RelaySummary {
                connections: r.relay.connections,
                punched: r.relay.punches,
                messages: r.relay.messages,
                bytes: r.relay.bytes,
                busiest_relay_bytes: r.relay.by_relay.values().copied().max().unwrap_or(0),
            },
            messages_dropped: r.dropped,
            messages_duplicated: r.duplicated,
            messages_retransmitted: r.retransmitted,
            messages_lost_on_cut: r.lost_on_cut,
            admissions: r.admissions,
            admissions_refused: r.refused,
            misbehaved: r.misbehaved,
            sync_queue_full: r.sync_queue_full,
            local_errors: r.local_errors,
            membership_complete: r.membership_complete,
            replicas_checked: r.replicas_checked,
            replicas_divergent: r.replicas_divergent,
            convergence_expected: r.convergence_expected,
        }
    }

    /// Why the run failed, if it did: when convergence was expected (see
    /// [`Summary::convergence_expected`]), a write that never reached every device
    /// holding its store, or a replica that differs from its origin's after the drain.
    /// Without it (a partition, an offline window or a power-off during the drain)
    /// replicas may legitimately lag, and nothing is checked.
    pub fn failure(&self) -> Option<String> {
        if !self.convergence_expected {
            return None;
        }
        let mut reasons = Vec::new();
        if self.writes_converged < self.writes {
            reasons.push(format!(
                "{} of {} writes never reached every device that holds their store",
                self.writes - self.writes_converged,
                self.writes
            ));
        }
        if self.replicas_divergent > 0 {
            reasons.push(format!(
                "{} of {} replicas differ from their origin's after the drain",
                self.replicas_divergent, self.replicas_checked
            ));
        }
        if reasons.is_empty() {
            return None;
        }
        Some(format!(
            "under {}, {}, although every device was online and no link was cut during the drain",
            self.strategy,
            reasons.join(", and ")
        ))
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(name), text)
}

fn json<T: Serialize>(value: &T) -> std::io::Result<String> {
    let mut text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    text.push('\n');
    Ok(text)
}

/// The empirical CDF of `values` as plot points (x, per cent ≤ x).
fn cdf(values: &[f64]) -> Vec<(f64, f64)> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    // At most ~400 points: enough for a smooth curve, small files.
    let step = (v.len() / 400).max(1);
    let mut points: Vec<(f64, f64)> = v
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || i + 1 == v.len())
        .map(|(i, x)| (*x, (i + 1) as f64 / n * 100.0))
        .collect();
    points.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    points
}

fn convergence_values(r: &Recorder) -> Vec<f64> {
    r.convergence
        .iter()
        .filter_map(|c| c.converged_us.map(|t| ms(t - c.written_us)))
        .collect()
}

fn latency_values(r: &Recorder) -> Vec<f64> {
    r.jobs.iter().filter_map(|j| j.latency_us.map(ms)).collect()
}

/// The groups of the store-data charts: raw data three ways, then ciphertext to the
/// cloud.
fn raw_groups() -> [String; 4] {
    [
        "left origin".to_owned(),
        "over internet".to_owned(),
        "to cloud".to_owned(),
        "sealed to cloud".to_owned(),
    ]
}

/// The unit to show the store data charts of these summaries in.
fn raw_unit(summaries: &[&Summary]) -> (f64, &'static str) {
    let top = summaries
        .iter()
        .flat_map(|s| {
            [
                s.raw_bytes_left_origin,
                s.raw_bytes_over_internet,
                s.raw_bytes_to_cloud,
                s.sealed_bytes_to_cloud,
            ]
        })
        .max()
        .unwrap_or(0);
    svg::bytes_unit(top as f64)
}

/// A summary's values for [`raw_groups`], in units of `unit` bytes.
fn raw_values(s: &Summary, unit: f64) -> Vec<f64> {
    [
        s.raw_bytes_left_origin,
        s.raw_bytes_over_internet,
        s.raw_bytes_to_cloud,
        s.sealed_bytes_to_cloud,
    ]
    .iter()
    .map(|&b| b as f64 / unit)
    .collect()
}

/// Writes one run's files into `dir`: summary.json, the CSVs and the plots.
pub fn write_run(dir: &Path, summary: &Summary, r: &Recorder) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write(dir, "summary.json", &json(summary)?)?;

    let mut csv = String::from("store,origin,written_ms,convergence_ms\n");
    for c in &r.convergence {
        let conv = c
            .converged_us
            .map_or_else(String::new, |t| format!("{:.3}", ms(t - c.written_us)));
        let _ = writeln!(
            csv,
            "{},{},{:.3},{}",
            c.store,
            c.origin,
            ms(c.written_us),
            conv
        );
    }
    write(dir, "convergence.csv", &csv)?;

    let mut csv = String::from("device,powered_on_ms,missed,catch_up_ms\n");
    for x in &r.restarts {
        let took = x
            .caught_up_us
            .map_or_else(String::new, |t| format!("{:.3}", ms(t - x.powered_on_us)));
        let _ = writeln!(
            csv,
            "{},{:.3},{},{took}",
            x.device,
            ms(x.powered_on_us),
            x.missed
        );
    }
    write(dir, "restarts.csv", &csv)?;

    let mut csv = String::from(
        "job,from,ran_on,submitted_ms,outcome,latency_ms,records_scanned,records_missing,during_partition\n",
    );
    for j in &r.jobs {
        let _ = writeln!(
            csv,
            "{},{},{},{:.3},{},{},{},{},{}",
            j.job,
            j.from,
            j.ran_on.as_deref().unwrap_or(""),
            ms(j.submitted_us),
            j.outcome,
            j.latency_us
                .map_or_else(String::new, |l| format!("{:.3}", ms(l))),
            j.records_scanned,
            j.records_missing,
            j.during_partition
        );
    }
    write(dir, "jobs.csv", &csv)?;

    let mut csv = String::from("bucket_start_s,class,bytes\n");
    for (bucket, class, bytes) in r.over_time() {
        let _ = writeln!(csv, "{},{class},{bytes}", ms(bucket * r.bucket_us) / 1000.0);
    }
    write(dir, "bytes_over_time.csv", &csv)?;

    let mut csv = String::from("class,messages,bytes\n");
    for (class, (m, b)) in &r.per_class {
        let _ = writeln!(csv, "{class},{m},{b}");
    }
    write(dir, "bytes_by_class.csv", &csv)?;

    let title = format!(
        "{} ({}, seed {})",
        summary.scenario, summary.strategy, summary.seed
    );
    write(
        dir,
        "convergence_cdf.svg",
        &svg::lines(
            &format!("Convergence time: {title}"),
            "convergence time (ms, log scale)",
            "writes converged (%)",
            &[("writes".to_owned(), cdf(&convergence_values(r)))],
            true,
        ),
    )?;
    write(
        dir,
        "job_latency_cdf.svg",
        &svg::lines(
            &format!("Job latency: {title}"),
            "job latency (ms, log scale)",
            "answered jobs (%)",
            &[("jobs".to_owned(), cdf(&latency_values(r)))],
            true,
        ),
    )?;
    let top = r.over_time().map(|(_, _, b)| b).max().unwrap_or(0) as f64;
    let (per_unit, unit) = svg::bytes_unit(top);
    let (bucket_per_unit, bucket_unit) = svg::time_unit(ms(r.bucket_us));
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (bucket, class, bytes) in r.over_time() {
        series.entry(class.to_owned()).or_default().push((
            ms(bucket * r.bucket_us) / 3_600_000.0,
            bytes as f64 / per_unit,
        ));
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = series.into_iter().collect();
    write(
        dir,
        "bytes_over_time.svg",
        &svg::lines(
            &format!("Bytes per link class over time: {title}"),
            "time (h)",
            &format!(
                "{unit} per {} {bucket_unit}",
                svg::tick_label(ms(r.bucket_us) / bucket_per_unit, 0.01)
                    .trim_end_matches('0')
                    .trim_end_matches('.')
            ),
            &series,
            false,
        ),
    )?;
    write(
        dir,
        "raw_bytes.svg",
        &svg::bars(
            &format!("Store data moved: {title}"),
            &format!("store data ({})", raw_unit(&[summary]).1),
            &raw_groups(),
            &[(
                summary.strategy.clone(),
                raw_values(summary, raw_unit(&[summary]).0),
            )],
        ),
    )?;
    write(
        dir,
        "availability.svg",
        &svg::bars(
            &format!("Availability of job results: {title}"),
            "jobs answered (%)",
            &["all jobs".to_owned(), "during partitions".to_owned()],
            &[(
                summary.strategy.clone(),
                vec![
                    summary.jobs.availability * 100.0,
                    summary.jobs.availability_during_partition * 100.0,
                ],
            )],
        ),
    )?;
    Ok(())
}

/// Writes the comparison of several runs of one scenario into `dir`.
pub fn write_compare(dir: &Path, runs: &[(Summary, Recorder)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let summaries: Vec<&Summary> = runs.iter().map(|(s, _)| s).collect();
    write(dir, "summary.json", &json(&summaries)?)?;
    let mut csv = String::from(
        "strategy,raw_bytes_left_origin,raw_bytes_over_internet,raw_bytes_to_cloud,convergence_p50_ms,convergence_p99_ms,job_latency_p50_ms,job_latency_p90_ms,job_latency_p99_ms,availability,availability_during_partition,total_bytes,sealed_bytes_to_cloud\n",
    );
    for s in &summaries {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.strategy,
            s.raw_bytes_left_origin,
            s.raw_bytes_over_internet,
            s.raw_bytes_to_cloud,
            s.convergence_ms.p50,
            s.convergence_ms.p99,
            s.jobs.latency_ms.p50,
            s.jobs.latency_ms.p90,
            s.jobs.latency_ms.p99,
            s.jobs.availability,
            s.jobs.availability_during_partition,
            s.bytes_by_class.values().sum::<u64>(),
            s.sealed_bytes_to_cloud
        );
    }
    write(dir, "compare.csv", &csv)?;
    let scenario = summaries.first().map_or("", |s| s.scenario.as_str());
    let seed = summaries.first().map_or(0, |s| s.seed);
    let title = format!("{scenario} (seed {seed})");
    let names: Vec<String> = summaries.iter().map(|s| s.strategy.clone()).collect();
    write(
        dir,
        "compare_raw_bytes.svg",
        &svg::bars(
            &format!("Store data moved: {title}"),
            &format!("store data ({})", raw_unit(&summaries).1),
            &raw_groups(),
            &summaries
                .iter()
                .map(|s| (s.strategy.clone(), raw_values(s, raw_unit(&summaries).0)))
                .collect::<Vec<_>>(),
        ),
    )?;
    write(
        dir,
        "compare_availability.svg",
        &svg::bars(
            &format!("Availability of job results: {title}"),
            "jobs answered (%)",
            &["all jobs".to_owned(), "during partitions".to_owned()],
            &summaries
                .iter()
                .map(|s| {
                    (
                        s.strategy.clone(),
                        vec![
                            s.jobs.availability * 100.0,
                            s.jobs.availability_during_partition * 100.0,
                        ],
                    )
                })
                .collect::<Vec<_>>(),
        ),
    )?;
    write(
        dir,
        "compare_job_latency_cdf.svg",
        &svg::lines(
            &format!("Job latency: {title}"),
            "job latency (ms, log scale)",
            "answered jobs (%)",
            &runs
                .iter()
                .map(|(s, r)| (s.strategy.clone(), cdf(&latency_values(r))))
                .collect::<Vec<_>>(),
            true,
        ),
    )?;
    write(
        dir,
        "compare_convergence_cdf.svg",
        &svg::lines(
            &format!("Convergence time: {title}"),
            "convergence time (ms, log scale)",
            "writes converged (%)",
            &runs
                .iter()
                .map(|(s, r)| (s.strategy.clone(), cdf(&convergence_values(r))))
                .collect::<Vec<_>>(),
            true,
        ),
    )?;
    let classes: Vec<String> = summaries
        .iter()
        .flat_map(|s| s.bytes_by_class.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let top = summaries
        .iter()
        .flat_map(|s| s.bytes_by_class.values().copied())
        .max()
        .unwrap_or(0) as f64;
    let (per_unit, unit) = svg::bytes_unit(top);
    write(
        dir,
        "compare_bytes_by_class.svg",
        &svg::bars(
            &format!("Bytes per link class: {title}"),
            &format!("bytes ({unit})"),
            &classes,
            &summaries
                .iter()
                .map(|s| {
                    (
                        s.strategy.clone(),
                        classes
                            .iter()
                            .map(|c| {
                                s.bytes_by_class.get(c).copied().unwrap_or(0) as f64 / per_unit
                            })
                            .collect(),
                    )
                })
                .collect::<Vec<_>>(),
        ),
    )?;
    let _ = names;
    Ok(())
}
