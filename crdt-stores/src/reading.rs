//! Timeseries readings and their binary form.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest value of one reading, as JSON text.
pub const MAX_READING_BYTES: usize = 64 * 1024;

/// One timestamped record of a timeseries store. Cloning is cheap: the value is shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Milliseconds since the Unix epoch.
    pub ts: u64,
    /// The record's value: any JSON.
    pub value: Arc<Value>,
}

impl Reading {
    /// A reading at `ts` with `value`.
    pub fn new(ts: u64, value: Value) -> Self {
        Self {
            ts,
            value: Arc::new(value),
        }
    }

    /// `varint(ts) || JSON`, the form kept inside chunk documents and chunk indexes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let json = self.value.to_string();
        let mut out = Vec::with_capacity(json.len() + 10);
        put_varint(&mut out, self.ts);
        out.extend_from_slice(json.as_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (ts, rest) = get_varint(bytes)?;
        let value = serde_json::from_slice(rest).ok()?;
        Some(Self::new(ts, value))
    }

    /// The value at a dotted path (`a.b.c`; digits index arrays); the value itself for
    /// an empty path.
    pub fn field(&self, path: &str) -> Option<&Value> {
        if path.is_empty() {
            return Some(&self.value);
        }
        let mut current: &Value = &self.value;
        for part in path.split('.') {
            current = match current {
                Value::Object(map) => map.get(part)?,
                Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(current)
    }

    /// The number at `path`, if there is one.
    pub fn number(&self, path: &str) -> Option<f64> {
        match self.field(path)? {
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

pub(crate) fn get_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f).checked_shl(7 * u32::try_from(i).ok()?)?;
        if byte & 0x80 == 0 {
            return Some((value, bytes.get(i + 1..)?));
        }
    }
    None
}

/// A chunk's readings in one record: `varint(count) { varint(len) reading }*`.
pub(crate) fn encode_many(readings: &[Reading]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = readings.iter().map(Reading::encode).collect();
    encode_encoded(encoded.iter().map(Vec::as_slice), encoded.len())
}

/// [`encode_many`] of `count` readings already encoded.
pub(crate) fn encode_encoded<'a>(encoded: impl Iterator<Item = &'a [u8]>, count: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * 32);
    put_varint(&mut out, count as u64);
    for reading in encoded {
        put_varint(&mut out, reading.len() as u64);
        out.extend_from_slice(reading);
    }
    out
}

pub(crate) fn decode_many(bytes: &[u8]) -> Option<Vec<Reading>> {
    let (count, mut rest) = get_varint(bytes)?;
    let mut readings = Vec::with_capacity(usize::try_from(count).ok()?.min(1 << 20));
    for _ in 0..count {
        let (len, tail) = get_varint(rest)?;
        let len = usize::try_from(len).ok()?;
        let (one, tail) = (tail.get(..len)?, tail.get(len..)?);
        readings.push(Reading::decode(one)?);
        rest = tail;
    }
    rest.is_empty().then_some(readings)
}
