//! What a computation sees: the host side of the `hearth:compute` world. Every call
//! is checked against the job's grants; a call the capability does not allow stops
//! the run, and the job is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hearth_protocol::capability::{Access, Actions, Grant, ModuleHash, Resource, TimeRange};
use hearth_protocol::time::UnixMillis;
use hearth_stores::query::{self, Aggregate, Selection};
use hearth_stores::{Kind, Reading, Stores};
use serde_json::Value;
use wasmtime::component::{Resource as Handle, ResourceTable};
use wasmtime::{StoreLimits, StoreLimitsBuilder};

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "computation",
    imports: { default: trappable },
    with: {
        "hearth:compute/stores.cursor": Cursor,
    },
});

use hearth::compute::gateway::Format as WitFormat;
use hearth::compute::log::Level;
use hearth::compute::stores::{AggregateOp, Reading as WitReading, Window};

/// Most readings one `next` call returns.
const MAX_BATCH: u32 = 1024;
/// Most open cursors per run.
const MAX_CURSORS: usize = 64;
/// Most log lines kept per run; the rest are counted.
const MAX_LOG_LINES: u32 = 1000;
/// Longest log line kept.
const MAX_LOG_LINE: usize = 2000;
/// Most readings one run may append.
const MAX_APPENDS: u64 = 100_000;
/// Longest store name, field name or key a host call takes.
const MAX_NAME: usize = 128;
/// Most fields one read may name.
const MAX_FIELDS: usize = 64;
/// Under an aggregate-only grant, sums, means, extremes, medians and deviations over
/// fewer readings than this come back as none: a window around one reading must not
/// reveal its value.
pub(crate) const MIN_GROUP: u64 = 5;

/// `Err` (for the computation, not a refusal: nothing of it is echoed) when a name is
/// longer than [`MAX_NAME`] or there are too many fields.
fn names_ok<'a>(names: impl IntoIterator<Item = &'a str>, fields: usize) -> Result<(), String> {
    if fields > MAX_FIELDS {
        return Err(format!("a read names at most {MAX_FIELDS} fields"));
    }
    if names.into_iter().any(|n| n.len() > MAX_NAME) {
        return Err(format!(
            "store names, fields and keys are at most {MAX_NAME} bytes"
        ));
    }
    Ok(())
}

/// An open cursor: it reads its window a chunk window of the store at a time (a page),
/// and holds one page at most; the page's size counts against the run's memory limit
/// ([`RunLimits`]).
#[derive(Debug)]
#[allow(unreachable_pub)] // named by the generated bindings
pub struct Cursor {
    handle: Arc<hearth_stores::Store>,
    store: String,
    fields: Option<BTreeSet<String>>,
    /// Where the next page starts, and where the window ends (exclusive).
    next: u64,
    end: u64,
    /// The readings of the page still to hand out, and what the page holds.
    page: std::vec::IntoIter<Reading>,
    page_bytes: usize,
}

/// About what `value` holds in memory, in bytes.
fn value_size(value: &Value) -> usize {
    const NODE: usize = std::mem::size_of::<Value>();
    match value {
        Value::String(s) => NODE + s.len(),
        Value::Array(items) => NODE + items.iter().map(value_size).sum::<usize>(),
        Value::Object(map) => {
            NODE + map
                .iter()
                .map(|(k, v)| NODE + k.len() + value_size(v))
                .sum::<usize>()
        }
        _ => NODE,
    }
}

/// About what a page of `readings` holds in memory, in bytes.
fn page_size(readings: &[Reading]) -> usize {
    readings
        .iter()
        .map(|r| std::mem::size_of::<Reading>() + value_size(&r.value))
        .sum()
}

/// Where the page of a store with chunk windows of `window` ms that starts at `start`
/// ends: at the end of `start`'s chunk window, or `end`.
fn page_end(start: u64, window: u64, end: u64) -> u64 {
    let window = window.max(1);
    start
        .saturating_sub(start % window)
        .saturating_add(window)
        .min(end)
}

/// The numbers at `path` of a store's readings in `[next, end)` (a one for every
/// reading when `path` is `None`), read a chunk window at a time; each page counts
/// against the run's memory limit while it is read. A store error or the limit ends
/// the numbers early; [`Pages::finish`] says which.
struct Pages<'a> {
    handle: &'a hearth_stores::Store,
    limits: &'a mut RunLimits,
    path: Option<&'a str>,
    next: u64,
    end: u64,
    page: std::vec::IntoIter<f64>,
    failed: Option<Ended>,
}

/// Why [`Pages`] ended early.
enum Ended {
    /// The store could not be read: an error for the computation.
    Store(String),
    /// The run's memory limit: the run stops.
    Limit(wasmtime::Error),
}

impl<'a> Pages<'a> {
    fn new(
        handle: &'a hearth_stores::Store,
        limits: &'a mut RunLimits,
        path: Option<&'a str>,
        next: u64,
        end: u64,
    ) -> Self {
        Self {
            handle,
            limits,
            path,
            next,
            end,
            page: Vec::new().into_iter(),
            failed: None,
        }
    }

    /// `Err` (the run stops) when the memory limit ended the numbers, `Ok(Err)` (an
    /// error for the computation) when the store could not be read.
    fn finish(self) -> wasmtime::Result<Result<(), String>> {
        match self.failed {
            None => Ok(Ok(())),
            Some(Ended::Store(message)) => Ok(Err(message)),
            Some(Ended::Limit(err)) => Err(err),
        }
    }
}

impl Iterator for Pages<'_> {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        loop {
            if let Some(number) = self.page.next() {
                return Some(number);
            }
            if self.failed.is_some() {
                return None;
            }
            let start = self.handle.next_chunk(self.next, self.end)?;
            let page_end = page_end(start, self.handle.meta().window_ms, self.end);
            self.next = page_end;
            let readings = match self.handle.read(Selection::Range(start, page_end), None) {
                Ok(readings) => readings,
                Err(err) => {
                    self.failed = Some(Ended::Store(err.to_string()));
                    return None;
                }
            };
            let size = page_size(&readings);
            if let Err(err) = self.limits.hold(size) {
                self.failed = Some(Ended::Limit(err));
                return None;
            }
            let numbers: Vec<f64> = match self.path {
                None => readings.iter().map(|_| 1.0).collect(),
                Some(path) => readings.iter().filter_map(|r| r.number(path)).collect(),
            };
            drop(readings);
            self.limits.release(size);
            self.page = numbers.into_iter();
        }
    }
}

/// A run that would hold more memory than its limit: its linear memory and what the
/// node holds for it (the pages of its cursors) together.
#[derive(Debug)]
pub(crate) struct HostMemory {
    /// What it would hold, in bytes.
    pub(crate) asked: usize,
    /// The limit, in bytes.
    pub(crate) limit: usize,
}

impl std::fmt::Display for HostMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "needed more memory than the limit of {} MiB (its memory and the readings the \
             node holds for its reads would be {} MiB)",
            self.limit / (1024 * 1024),
            self.asked.div_ceil(1024 * 1024)
        )
    }
}

impl std::error::Error for HostMemory {}

/// A run's memory limit, over its linear memories and what the node holds for its
/// reads together.
pub(crate) struct RunLimits {
    inner: StoreLimits,
    limit: usize,
    /// Bytes of the run's linear memories.
    wasm: usize,
    /// Bytes the node holds for the run's reads.
    host: usize,
}

impl RunLimits {
    fn new(limit: usize) -> Self {
        Self {
            inner: StoreLimitsBuilder::new()
                .memory_size(limit)
                .instances(16)
                .tables(16)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            limit,
            wasm: 0,
            host: 0,
        }
    }

    /// Takes `bytes` more for the node's side of the run, or fails the run.
    fn hold(&mut self, bytes: usize) -> wasmtime::Result<()> {
        let asked = self.wasm.saturating_add(self.host).saturating_add(bytes);
        if asked > self.limit {
            return Err(wasmtime::Error::new(HostMemory {
                asked,
                limit: self.limit,
            }));
        }
        self.host += bytes;
        Ok(())
    }

    /// Gives back `bytes` of the node's side.
    fn release(&mut self, bytes: usize) {
        self.host = self.host.saturating_sub(bytes);
    }
}

impl wasmtime::ResourceLimiter for RunLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grown = desired.saturating_sub(current);
        let asked = self.wasm.saturating_add(self.host).saturating_add(grown);
        // Every linear memory of the run together, and what the node holds for it.
        if asked > self.limit {
            return Err(wasmtime::Error::new(HostMemory {
                asked,
                limit: self.limit,
            }));
        }
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        if allowed {
            self.wasm = self.wasm.saturating_add(grown);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // A table element is a pointer: tables count against the limit too.
        let grown = desired
            .saturating_sub(current)
            .saturating_mul(std::mem::size_of::<usize>());
        let asked = self.wasm.saturating_add(self.host).saturating_add(grown);
        if asked > self.limit {
            return Err(wasmtime::Error::new(HostMemory {
                asked,
                limit: self.limit,
            }));
        }
        let allowed = self.inner.table_growing(current, desired, maximum)?;
        if allowed {
            self.wasm = self.wasm.saturating_add(grown);
        }
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// What one store saw of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReadStats {
    /// Readings, keys or documents handed to the computation (or aggregated).
    pub records: u64,
    /// Bytes of JSON handed to the computation.
    pub bytes: u64,
    /// The store's digest at its first read.
    pub digest: [u8; 32],
}

/// Writes a run may make, for a continuous app's derived stores.
pub(crate) trait DerivedStores: Send + Sync {
    /// The timeseries store `name`, made if missing.
    fn derived(&self, name: &str) -> Result<Arc<hearth_stores::Store>, String>;
}

/// The state of one run.
pub(crate) struct HostState {
    pub(crate) limits: RunLimits,
    table: ResourceTable,
    stores: Arc<Stores>,
    permit: Permit,
    derived: Option<Arc<dyn DerivedStores>>,
    /// Per store, what was read.
    pub(crate) reads: BTreeMap<String, ReadStats>,
    /// Per store, readings appended.
    pub(crate) appended: BTreeMap<String, u64>,
    /// Set when a call was refused: the run stops and the job is refused.
    pub(crate) refused: Option<String>,
    /// Bodies marked for export, sent only if the run succeeds.
    pub(crate) exports: Vec<crate::export::Pending>,
    /// The gateway that will send them (on a device of a mesh).
    gateway: Option<Arc<crate::export::Gateway>>,
    log_lines: u32,
    cursors: usize,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("job", &self.permit.job)
            .field("reads", &self.reads)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

/// Everything a run is allowed, from the verified chain.
#[derive(Debug, Clone)]
pub(crate) struct Permit {
    pub grants: Vec<Grant>,
    pub module_hash: ModuleHash,
    pub device: String,
    pub run_number: u64,
    pub job: String,
    /// The export grants of every link of the chain.
    pub exports: Arc<crate::export::ChainExports>,
}

impl Permit {
    /// Is `access`, made by this module on this device in this run, granted? If not,
    /// why not, in a sentence.
    pub(crate) fn check(&self, access: Access<'_>) -> Result<(), String> {
        let access = Access {
            module_hash: Some(self.module_hash),
            device: Some(&self.device),
            run_number: self.run_number,
            ..access
        };
        if self.grants.iter().any(|g| g.allows(&access)) {
            Ok(())
        } else {
            Err(explain(&self.grants, &access))
        }
    }
}

impl HostState {
    pub(crate) fn new(
        permit: Permit,
        stores: Arc<Stores>,
        memory_bytes: usize,
        derived: Option<Arc<dyn DerivedStores>>,
        gateway: Option<Arc<crate::export::Gateway>>,
    ) -> Self {
        Self {
            exports: Vec::new(),
            gateway,
            limits: RunLimits::new(memory_bytes),
            table: ResourceTable::new(),
            stores,
            permit,
            derived,
            reads: BTreeMap::new(),
            appended: BTreeMap::new(),
            refused: None,
            log_lines: 0,
            cursors: 0,
        }
    }

    /// The asked window narrowed to the time range a grant for `action` on `store`
    /// allows, or `None` (all time) when neither limits it. An empty range (nothing
    /// left) reads nothing.
    fn narrow(&self, store: &str, action: Actions, window: &Window) -> Option<TimeRange> {
        let resource = Resource::Store(store.to_owned());
        let granted = self
            .permit
            .grants
            .iter()
            .filter(|g| applies(g, &resource, action))
            .find_map(|g| g.caveats.time_range);
        let start = window.start.unwrap_or(0);
        let end = window.end.unwrap_or(u64::MAX);
        match granted {
            None if window.start.is_none() && window.end.is_none() => None,
            None => Some(TimeRange {
                start: UnixMillis(start),
                end: UnixMillis(end),
            }),
            Some(range) => Some(TimeRange {
                start: UnixMillis(start.max(range.start.0)),
                end: UnixMillis(end.min(range.end.0)),
            }),
        }
    }

    /// Checks one access; on refusal remembers why and returns the trap that stops
    /// the run.
    fn check(&mut self, access: Access<'_>) -> wasmtime::Result<()> {
        self.permit.check(access).map_err(|reason| {
            self.refused = Some(reason.clone());
            wasmtime::Error::msg(reason)
        })
    }

    /// The store `name` of `kind`, recording its digest at first use; `Err` with a
    /// message for the computation when it is not here or of another kind.
    fn open(&mut self, name: &str, kind: Kind) -> Result<Arc<hearth_stores::Store>, String> {
        let store = self
            .stores
            .get(name)
            .map_err(|_| format!("there is no store {name:?} on this device"))?;
        if store.meta().kind != kind {
            return Err(format!(
                "store {name:?} is a {} store, not {}",
                store.meta().kind.as_str(),
                kind.as_str()
            ));
        }
        if !self.reads.contains_key(name)
            && self.reads.len() >= hearth_protocol::compute::MAX_RECEIPT_STORES
        {
            return Err(format!(
                "a run may read at most {} stores",
                hearth_protocol::compute::MAX_RECEIPT_STORES
            ));
        }
        self.reads
            .entry(name.to_owned())
            .or_insert_with(|| ReadStats {
                digest: store.digest(),
                ..ReadStats::default()
            });
        Ok(store)
    }

    fn count(&mut self, store: &str, records: u64, bytes: u64) {
        let stats = self.reads.entry(store.to_owned()).or_default();
        stats.records += records;
        stats.bytes += bytes;
    }
}

/// Does `grant` name `resource` (a concrete store) and `action`, caveats aside?
fn applies(grant: &Grant, resource: &Resource, action: Actions) -> bool {
    grant.actions.contains(action) && resource.within(&grant.resource)
}

/// Why no grant allows `access`, in a sentence.
fn explain(grants: &[Grant], access: &Access<'_>) -> String {
    let what = match access.resource {
        Resource::Store(name) => format!("store {name:?}"),
        other => other.to_string(),
    };
    let verb = access.action.names().join("/");
    let on_resource: Vec<&Grant> = grants
        .iter()
        .filter(|g| applies(g, access.resource, access.action))
        .collect();
    if on_resource.is_empty() {
        return format!("the capability does not grant {verb} on {what}");
    }
    let mut why = Vec::new();
    for g in on_resource {
        let c = &g.caveats;
        if c.aggregate_only && !access.aggregate {
            why.push("only aggregates are granted, not readings".to_owned());
        }
        if let (Some(allowed), Some(asked)) = (&c.fields, access.fields)
            && !asked.is_subset(allowed)
        {
            let extra: Vec<&String> = asked.difference(allowed).collect();
            why.push(format!(
                "fields {extra:?} are outside the granted {:?}",
                allowed.iter().collect::<Vec<_>>()
            ));
        }
        if c.fields.is_some() && access.fields.is_none() {
            why.push("the grant limits fields, so the read must name them".to_owned());
        }
        if let (Some(devices), Some(device)) = (&c.devices, access.device)
            && !devices.contains(device)
        {
            why.push(format!("it may not run on device {device:?}"));
        }
        if c.module_hash.is_some() && c.module_hash != access.module_hash {
            why.push("the grant is for another module".to_owned());
        }
        if let Some(max) = c.max_runs
            && access.run_number > max
        {
            why.push(format!("its {max} granted runs are used up"));
        }
        if let Some(max) = c.max_result_bytes
            && access.result_bytes > max
        {
            why.push(format!(
                "the result is {} bytes, more than the granted {max}",
                access.result_bytes
            ));
        }
    }
    if why.is_empty() {
        why.push("outside the granted time range".to_owned());
    }
    why.dedup();
    format!("{verb} on {what} refused: {}", why.join("; "))
}

fn window_selection(range: Option<TimeRange>) -> Selection {
    match range {
        None => Selection::All,
        Some(r) if r.end.0 == u64::MAX => Selection::Since(r.start.0),
        Some(r) => Selection::Range(r.start.0, r.end.0),
    }
}

/// `value` keeping only the top-level `fields`.
fn project(value: &Value, fields: Option<&BTreeSet<String>>) -> Value {
    match (fields, value) {
        (None, v) => v.clone(),
        (Some(fields), Value::Object(map)) => Value::Object(
            map.iter()
                .filter(|(k, _)| fields.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        // A scalar reading has no fields to keep.
        (Some(_), _) => Value::Null,
    }
}

fn top_field(path: &str) -> String {
    path.split('.').next().unwrap_or(path).to_owned()
}

impl hearth::compute::stores::Host for HostState {
    fn read(
        &mut self,
        store: String,
        fields: Option<Vec<String>>,
        window: Window,
    ) -> wasmtime::Result<Result<Handle<Cursor>, String>> {
        let names = fields.iter().flatten().map(String::as_str);
        if let Err(message) = names_ok(
            names.chain([store.as_str()]),
            fields.as_ref().map_or(0, Vec::len),
        ) {
            return Ok(Err(message));
        }
        let fields: Option<BTreeSet<String>> = fields.map(|f| f.into_iter().collect());
        let range = self.narrow(&store, Actions::READ, &window);
        let resource = Resource::Store(store.clone());
        self.check(Access {
            fields: fields.as_ref(),
            time_range: range,
            ..Access::new(&resource, Actions::READ)
        })?;
        if self.cursors >= MAX_CURSORS {
            return Ok(Err(format!("more than {MAX_CURSORS} cursors are open")));
        }
        let handle = match self.open(&store, Kind::Timeseries) {
            Ok(s) => s,
            Err(message) => return Ok(Err(message)),
        };
        let (next, end) = window_selection(range).bounds();
        let cursor = Cursor {
            handle,
            store,
            fields,
            next,
            end,
            page: Vec::new().into_iter(),
            page_bytes: 0,
        };
        self.cursors += 1;
        Ok(Ok(self.table.push(cursor)?))
    }

    fn aggregate(
        &mut self,
        store: String,
        op: AggregateOp,
        field: Option<String>,
        window: Window,
    ) -> wasmtime::Result<Result<Option<f64>, String>> {
        if let Err(message) = names_ok([store.as_str()].into_iter().chain(field.as_deref()), 1) {
            return Ok(Err(message));
        }
        let range = self.narrow(&store, Actions::READ, &window);
        let fields: Option<BTreeSet<String>> = match &field {
            Some(path) => Some([top_field(path)].into_iter().collect()),
            None if op == AggregateOp::Count => Some(BTreeSet::new()),
            None => None,
        };
        let resource = Resource::Store(store.clone());
        let access = Access {
            fields: fields.as_ref(),
            time_range: range,
            aggregate: true,
            ..Access::new(&resource, Actions::READ)
        };
        // Granted only as an aggregate: small groups are withheld.
        let aggregate_only = self
            .permit
            .check(Access {
                aggregate: false,
                ..access.clone()
            })
            .is_err();
        self.check(access)?;
        let handle = match self.open(&store, Kind::Timeseries) {
            Ok(s) => s,
            Err(message) => return Ok(Err(message)),
        };
        let withheld = aggregate_only && op != AggregateOp::Count;
        let op = match op {
            AggregateOp::Count => Aggregate::Count,
            AggregateOp::Sum => Aggregate::Sum,
            AggregateOp::Min => Aggregate::Min,
            AggregateOp::Max => Aggregate::Max,
            AggregateOp::Mean => Aggregate::Mean,
            AggregateOp::Median => Aggregate::Median,
            AggregateOp::Sd => Aggregate::Sd,
        };
        // A chunk window at a time, each page counted against the run's memory limit
        // while it is read.
        let (start, end) = window_selection(range).bounds();
        let mut ones = Pages::new(&handle, &mut self.limits, None, start, end);
        let counted = ones.by_ref().count() as u64;
        if let Err(message) = ones.finish()? {
            return Ok(Err(message));
        }
        if withheld && counted < MIN_GROUP {
            return Ok(Ok(None));
        }
        let path = match (op, field.as_deref()) {
            (Aggregate::Count, None) => None,
            (_, field) => Some(field.unwrap_or("")),
        };
        // A median holds every number at once.
        let held = if op == Aggregate::Median {
            usize::try_from(counted)
                .unwrap_or(usize::MAX)
                .saturating_mul(std::mem::size_of::<f64>())
        } else {
            0
        };
        self.limits.hold(held)?;
        let mut numbers = Pages::new(&handle, &mut self.limits, path, start, end);
        let result = query::aggregate_numbers(op, numbers.by_ref());
        let finished = numbers.finish();
        self.limits.release(held);
        if let Err(message) = finished? {
            return Ok(Err(message));
        }
        // Aggregates hand over one number; the readings behind it count as read.
        self.count(&store, counted, 8);
        Ok(Ok(result))
    }

    fn span(
        &mut self,
        store: String,
        window: Window,
    ) -> wasmtime::Result<Result<Option<(u64, u64)>, String>> {
        if let Err(message) = names_ok([store.as_str()], 0) {
            return Ok(Err(message));
        }
        let range = self.narrow(&store, Actions::READ, &window);
        let resource = Resource::Store(store.clone());
        let no_fields = BTreeSet::new();
        self.check(Access {
            fields: Some(&no_fields),
            time_range: range,
            aggregate: true,
            ..Access::new(&resource, Actions::READ)
        })?;
        let handle = match self.open(&store, Kind::Timeseries) {
            Ok(s) => s,
            Err(message) => return Ok(Err(message)),
        };
        // Read from the store's index, and at most the chunks at the window's ends.
        let (start, end) = window_selection(range).bounds();
        let result = handle.span(start, end);
        match result {
            Ok(span) => {
                self.count(&store, 2, 16);
                Ok(Ok(span))
            }
            Err(err) => Ok(Err(err.to_string())),
        }
    }

    fn kv_get(
        &mut self,
        store: String,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, String>> {
        if let Err(message) = names_ok([store.as_str(), key.as_str()], 1) {
            return Ok(Err(message));
        }
        let resource = Resource::Store(store.clone());
        let fields: BTreeSet<String> = [key.clone()].into_iter().collect();
        self.check(Access {
            fields: Some(&fields),
            ..Access::new(&resource, Actions::READ)
        })?;
        let handle = match self.open(&store, Kind::Kv) {
            Ok(s) => s,
            Err(message) => return Ok(Err(message)),
        };
        match handle.get(&key) {
            Ok(value) => {
                let text = value.map(|v| v.to_string());
                let bytes = text.as_ref().map_or(0, String::len) as u64;
                self.count(&store, 1, bytes);
                Ok(Ok(text))
            }
            Err(err) => Ok(Err(err.to_string())),
        }
    }

    fn kv_keys(&mut self, store: String) -> wasmtime::Result<Result<Vec<String>, String>> {
        if let Err(message) = names_ok([store.as_str()], 0) {
            return Ok(Err(message));
        }
        let resource = Resource::Store(store.clone());
        self.check(Access::new(&resource, Actions::READ))?;
        let handle = match self.open(&store, Kind::Kv) {
            Ok(s) => s,
            Err(message) => return Ok(Err(message)),
        };
        match handle.keys() {
            Ok(keys) => {
                let bytes = keys.iter().map(String::len).sum::<usize>() as u64;
                self.count(&store, keys.len() as u64, bytes);
                Ok(Ok(keys))
            }
            Err(err) => Ok(Err(err.to_string())),
        }
    }

    fn doc_read(&mut self, store: String) -> wasmtime::Result<Result<String, String>> {
        if let Err(message) = names_ok([store.as_str()], 0) {
            return Ok(Err(message));
        }
        let resource = Resource::Store(store.clone());
        self.check(Access::new(&resource, Actions::READ))?;
        let handle = match self.open(&store, Kind::Doc) {
            Ok(s) => s,
            Err(message) => return Ok(Err(message)),
        };
        let mut doc = serde_json::Map::new();
        let keys = match handle.keys() {
            Ok(keys) => keys,
            Err(err) => return Ok(Err(err.to_string())),
        };
        for key in keys {
            match handle.get(&key) {
                Ok(Some(value)) => {
                    doc.insert(key, value);
                }
                Ok(None) => {}
                Err(err) => return Ok(Err(err.to_string())),
            }
        }
        let text = Value::Object(doc).to_string();
        self.count(&store, 1, text.len() as u64);
        Ok(Ok(text))
    }
}

impl hearth::compute::stores::HostCursor for HostState {
    fn next(
        &mut self,
        cursor: Handle<Cursor>,
        max: u32,
    ) -> wasmtime::Result<Result<Vec<WitReading>, String>> {
        let take = max.clamp(1, MAX_BATCH) as usize;
        let mut batch = Vec::with_capacity(take);
        let mut bytes = 0u64;
        loop {
            let open = self.table.get_mut(&cursor)?;
            for reading in open.page.by_ref().take(take - batch.len()) {
                let value = project(&reading.value, open.fields.as_ref()).to_string();
                bytes += value.len() as u64 + 8;
                batch.push(WitReading {
                    ts: reading.ts,
                    value,
                });
            }
            if batch.len() == take {
                break;
            }
            // The next page: the rest of the next chunk window that holds readings.
            let Some(start) = open.handle.next_chunk(open.next, open.end) else {
                break;
            };
            let page_end = page_end(start, open.handle.meta().window_ms, open.end);
            let readings = open.handle.read(Selection::Range(start, page_end), None);
            open.next = page_end;
            let released = std::mem::take(&mut open.page_bytes);
            open.page = Vec::new().into_iter();
            self.limits.release(released);
            let readings = match readings {
                Ok(readings) => readings,
                Err(err) => return Ok(Err(err.to_string())),
            };
            let size = page_size(&readings);
            self.limits.hold(size)?;
            let open = self.table.get_mut(&cursor)?;
            open.page = readings.into_iter();
            open.page_bytes = size;
        }
        let store = self.table.get(&cursor)?.store.clone();
        self.count(&store, batch.len() as u64, bytes);
        Ok(Ok(batch))
    }

    fn drop(&mut self, cursor: Handle<Cursor>) -> wasmtime::Result<()> {
        let closed = self.table.delete(cursor)?;
        self.limits.release(closed.page_bytes);
        self.cursors = self.cursors.saturating_sub(1);
        Ok(())
    }
}

impl hearth::compute::output::Host for HostState {
    fn append(
        &mut self,
        store: String,
        ts: u64,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        if let Err(message) = names_ok([store.as_str()], 0) {
            return Ok(Err(message));
        }
        let resource = Resource::Store(store.clone());
        self.check(Access::new(&resource, Actions::WRITE))?;
        let Some(derived) = self.derived.clone() else {
            return Ok(Err(
                "only a continuous app writes derived stores; deploy it with `hearth app deploy`"
                    .into(),
            ));
        };
        let appended = self.appended.entry(store.clone()).or_default();
        if *appended >= MAX_APPENDS {
            return Ok(Err(format!("more than {MAX_APPENDS} appends in one run")));
        }
        let value: Value = match serde_json::from_str(&value) {
            Ok(v) => v,
            Err(err) => return Ok(Err(format!("the value is not JSON: {err}"))),
        };
        let target = match derived.derived(&store) {
            Ok(s) => s,
            Err(message) => return Ok(Err(message)),
        };
        match target.append(vec![Reading::new(ts, value)]) {
            Ok(()) => {
                *self.appended.entry(store).or_default() += 1;
                Ok(Ok(()))
            }
            Err(err) => Ok(Err(err.to_string())),
        }
    }
}

impl hearth::compute::gateway::Host for HostState {
    fn send(
        &mut self,
        destination: String,
        format: WitFormat,
        body: String,
    ) -> wasmtime::Result<Result<(), String>> {
        // Consent first: a destination no grant names stops the run.
        let resource = Resource::Export(destination.clone());
        self.check(Access::new(&resource, Actions::EXPORT))?;
        let shown = crate::compute::cut(&destination, 200).to_owned();
        let Some(terms) = self.permit.exports.terms(&destination) else {
            let reason = format!(
                "export to {shown} refused: no export grant of every link of the capability \
                 names it (a destination is matched exactly, or by a prefix ending in `*` \
                 that names the host and the `/` of the path)"
            );
            self.refused = Some(reason.clone());
            return Err(wasmtime::Error::msg(reason));
        };
        let Some(gateway) = self.gateway.clone() else {
            return Ok(Err("this device has no export gateway".into()));
        };
        if self.exports.len() >= crate::export::MAX_EXPORTS_PER_RUN {
            return Ok(Err(format!(
                "a run makes at most {} exports",
                crate::export::MAX_EXPORTS_PER_RUN
            )));
        }
        let max = self
            .permit
            .grants
            .iter()
            .filter(|g| applies(g, &resource, Actions::EXPORT))
            .map(|g| g.caveats.max_result_bytes.unwrap_or(u64::MAX))
            // As with review and the daily limits, the strictest grant holds.
            .min()
            .unwrap_or(0)
            .min(crate::export::MAX_EXPORT_BYTES as u64);
        if body.len() as u64 > max {
            return Ok(Err(format!(
                "the export to {shown} is {} bytes; at most {max} may be sent",
                body.len()
            )));
        }
        let format = match format {
            WitFormat::Json => {
                if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&body) {
                    return Ok(Err(format!(
                        "the export to {shown} was declared JSON but is not: {err}"
                    )));
                }
                crate::export::outbox::Format::Json
            }
            WitFormat::Text => {
                // What the owner reads before releasing it must be what it is: no
                // control characters that could redraw a terminal.
                if body
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t')
                {
                    return Ok(Err(format!(
                        "the export to {shown} holds control characters; text may hold \
                         line feeds and tabs only"
                    )));
                }
                crate::export::outbox::Format::Text
            }
        };
        // A daily limit reached is the owner's consent running out: a refusal.
        if let Err(reason) = gateway.check_limits(&terms, &self.exports, body.len() as u64, &shown)
        {
            self.refused = Some(reason.clone());
            return Err(wasmtime::Error::msg(reason));
        }
        self.exports.push(crate::export::Pending {
            destination,
            format,
            body,
            terms,
        });
        Ok(Ok(()))
    }
}

impl hearth::compute::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return Ok(());
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let job = &self.permit.job;
        match level {
            Level::Debug => tracing::debug!(%job, "computation: {message}"),
            Level::Info => tracing::info!(%job, "computation: {message}"),
            Level::Warn => tracing::warn!(%job, "computation: {message}"),
            Level::Error => tracing::error!(%job, "computation: {message}"),
        }
        Ok(())
    }
}
