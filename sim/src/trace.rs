//! The trace file format (`.eqt`): a header, then time-ordered records, then an end record
//! with a count and a checksum. Written and read as a stream; `sim/TRACE.md` specifies it
//! byte by byte.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};

use anyhow::{bail, ensure, Context as _};
use protocol::msg::{event_kind, WireEvent};

/// First bytes of every trace file.
pub const MAGIC: [u8; 8] = *b"EQTRACE\n";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Longest metadata text in the header, bytes.
pub const META_LEN_MAX: usize = 64 * 1024;
/// Most distinct zones one trace may define.
pub const ZONES_MAX: usize = 1 << 20;

const TAG_ZONE: u8 = 0x01;
const TAG_QUOTE: u8 = 0x10;
const TAG_EVENT: u8 = 0x20;
const TAG_SHARED: u8 = 0x01;
const TAG_END: u8 = 0xFF;

/// Which client token a request goes out with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// The premium tier (shed last).
    Premium = 0,
    /// The shared tier (shed first under overload).
    Shared = 1,
}

impl Tier {
    /// Both tiers, premium first.
    pub const ALL: [Tier; 2] = [Tier::Premium, Tier::Shared];

    /// `premium` or `shared`.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Premium => "premium",
            Tier::Shared => "shared",
        }
    }
}

/// What a record asks the node to do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// Price a trip starting in `zone`.
    Quote {
        /// H3 cell of the pickup.
        zone: u64,
        /// Trip distance, metres.
        distance_m: u32,
        /// Trip duration, seconds.
        duration_s: u32,
    },
    /// Apply one event (sent in a batch with its neighbours in time).
    Event(WireEvent),
}

impl Op {
    /// The zone the operation is about.
    pub fn zone(&self) -> u64 {
        match self {
            Op::Quote { zone, .. } => *zone,
            Op::Event(e) => e.zone,
        }
    }
}

/// One timed request of a trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record {
    /// When it is due, microseconds from the start of the trace.
    pub at_us: u64,
    /// Which token sends it.
    pub tier: Tier,
    /// The request.
    pub op: Op,
}

/// FNV-1a, 64 bits: the trace checksum (detects truncation and corruption, not tampering).
#[derive(Clone, Copy, Debug)]
struct Fnv(u64);

impl Fnv {
    const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Writes a trace as a stream. Records must come in time order.
#[derive(Debug)]
pub struct TraceWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    sum: Fnv,
    zones: HashMap<u64, u64>,
    last_at_us: u64,
    last_event_id: u64,
    records: u64,
}

impl<W: Write> TraceWriter<W> {
    /// Writes the header. `meta` is free text for people (where the trace came from).
    pub fn new(out: W, resolution: u8, meta: &str) -> anyhow::Result<Self> {
        ensure!(
            meta.len() <= META_LEN_MAX,
            "trace metadata is {} bytes; at most {META_LEN_MAX}",
            meta.len()
        );
        let mut w = Self {
            out,
            buf: Vec::with_capacity(64 * 1024),
            sum: Fnv::new(),
            zones: HashMap::new(),
            last_at_us: 0,
            last_event_id: 0,
            records: 0,
        };
        w.buf.extend_from_slice(&MAGIC);
        w.buf.extend_from_slice(&VERSION.to_le_bytes());
        w.buf.push(resolution);
        w.buf.push(0);
        w.buf.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        w.buf.extend_from_slice(meta.as_bytes());
        Ok(w)
    }

    /// Appends one record.
    pub fn write(&mut self, r: &Record) -> anyhow::Result<()> {
        ensure!(
            r.at_us >= self.last_at_us,
            "trace records must be in time order ({} µs after {} µs)",
            r.at_us,
            self.last_at_us
        );
        let zone = r.op.zone();
        let index = match self.zones.get(&zone) {
            Some(i) => *i,
            None => {
                ensure!(
                    self.zones.len() < ZONES_MAX,
                    "a trace holds at most {ZONES_MAX} zones"
                );
                let i = self.zones.len() as u64;
                self.zones.insert(zone, i);
                self.buf.push(TAG_ZONE);
                self.buf.extend_from_slice(&zone.to_le_bytes());
                i
            }
        };
        let shared = if r.tier == Tier::Shared {
            TAG_SHARED
        } else {
            0
        };
        let dt = r.at_us - self.last_at_us;
        self.last_at_us = r.at_us;
        match r.op {
            Op::Quote {
                distance_m,
                duration_s,
                ..
            } => {
                self.buf.push(TAG_QUOTE | shared);
                put_varint(&mut self.buf, dt);
                put_varint(&mut self.buf, index);
                put_varint(&mut self.buf, u64::from(distance_m));
                put_varint(&mut self.buf, u64::from(duration_s));
            }
            Op::Event(e) => {
                self.buf.push(TAG_EVENT | shared);
                put_varint(&mut self.buf, dt);
                self.buf.push(e.kind);
                put_varint(&mut self.buf, index);
                let delta = e.id.wrapping_sub(self.last_event_id) as i64;
                put_varint(&mut self.buf, zigzag(delta));
                self.last_event_id = e.id;
                put_varint(&mut self.buf, e.driver);
            }
        }
        self.records += 1;
        if self.buf.len() >= 48 * 1024 {
            self.flush_buf()?;
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        self.sum.update(&self.buf);
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Writes the end record and flushes; returns the writer.
    pub fn finish(mut self) -> anyhow::Result<W> {
        self.flush_buf()?;
        // The checksum covers every byte before the count, the end tag included.
        self.sum.update(&[TAG_END]);
        let mut end = vec![TAG_END];
        put_varint(&mut end, self.records);
        end.extend_from_slice(&self.sum.0.to_le_bytes());
        self.out.write_all(&end)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The header of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceHeader {
    /// Format version.
    pub version: u16,
    /// H3 resolution of the zones in it.
    pub resolution: u8,
    /// Free text: where the trace came from.
    pub meta: String,
}

/// Reads a trace as a stream of records; validates everything (an `Err` item ends it).
#[derive(Debug)]
pub struct TraceReader<R: BufRead> {
    input: R,
    header: TraceHeader,
    sum: Fnv,
    zones: Vec<u64>,
    at_us: u64,
    last_event_id: u64,
    records: u64,
    done: bool,
}

impl<R: BufRead> TraceReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> anyhow::Result<Self> {
        let mut head = [0u8; 16];
        input
            .read_exact(&mut head)
            .context("reading the trace header")?;
        ensure!(
            head[..8] == MAGIC,
            "not an Equilibrium trace (bad magic bytes)"
        );
        let version = u16::from_le_bytes([head[8], head[9]]);
        ensure!(
            version == VERSION,
            "trace format version {version}; this build reads version {VERSION}"
        );
        let resolution = head[10];
        ensure!(
            resolution <= 15,
            "trace resolution {resolution} is not 0..=15"
        );
        let meta_len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
        ensure!(
            meta_len <= META_LEN_MAX,
            "trace metadata of {meta_len} bytes exceeds {META_LEN_MAX}"
        );
        let mut meta = vec![0u8; meta_len];
        input
            .read_exact(&mut meta)
            .context("reading the trace metadata")?;
        let mut sum = Fnv::new();
        sum.update(&head);
        sum.update(&meta);
        let meta = String::from_utf8(meta).context("trace metadata is not UTF-8")?;
        Ok(Self {
            input,
            header: TraceHeader {
                version,
                resolution,
                meta,
            },
            sum,
            zones: Vec::new(),
            at_us: 0,
            last_event_id: 0,
            records: 0,
            done: false,
        })
    }

    /// The header.
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    fn byte(&mut self) -> anyhow::Result<u8> {
        let mut b = [0u8; 1];
        self.input
            .read_exact(&mut b)
            .context("trace ends without its end record (truncated?)")?;
        self.sum.update(&b);
        Ok(b[0])
    }

    fn varint(&mut self) -> anyhow::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            ensure!(
                shift < 63 || part <= 1,
                "varint overflows 64 bits at record {}",
                self.records
            );
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("varint longer than 10 bytes at record {}", self.records)
    }

    fn u32_field(&mut self, what: &str) -> anyhow::Result<u32> {
        let v = self.varint()?;
        u32::try_from(v).with_context(|| format!("{what} {v} does not fit 32 bits"))
    }

    fn zone(&mut self) -> anyhow::Result<u64> {
        let i = self.varint()?;
        self.zones
            .get(i as usize)
            .copied()
            .with_context(|| format!("record {} names undefined zone index {i}", self.records))
    }

    fn next_record(&mut self) -> anyhow::Result<Option<Record>> {
        loop {
            let tag = self.byte()?;
            match tag {
                TAG_ZONE => {
                    let mut z = [0u8; 8];
                    self.input
                        .read_exact(&mut z)
                        .context("trace ends inside a zone definition")?;
                    self.sum.update(&z);
                    ensure!(self.zones.len() < ZONES_MAX, "more than {ZONES_MAX} zones");
                    self.zones.push(u64::from_le_bytes(z));
                }
                TAG_END => {
                    let expected = self.sum.0;
                    let count = self.varint()?;
                    let mut s = [0u8; 8];
                    self.input
                        .read_exact(&mut s)
                        .context("trace ends inside its end record")?;
                    ensure!(
                        count == self.records,
                        "end record counts {count} records; the trace holds {}",
                        self.records
                    );
                    ensure!(
                        u64::from_le_bytes(s) == expected,
                        "trace checksum mismatch (corrupted)"
                    );
                    return Ok(None);
                }
                t if t & !TAG_SHARED == TAG_QUOTE || t & !TAG_SHARED == TAG_EVENT => {
                    let tier = if t & TAG_SHARED != 0 {
                        Tier::Shared
                    } else {
                        Tier::Premium
                    };
                    let dt = self.varint()?;
                    self.at_us = self.at_us.checked_add(dt).context("trace time overflows")?;
                    let op = if t & !TAG_SHARED == TAG_QUOTE {
                        let zone = self.zone()?;
                        let distance_m = self.u32_field("distance_m")?;
                        let duration_s = self.u32_field("duration_s")?;
                        Op::Quote {
                            zone,
                            distance_m,
                            duration_s,
                        }
                    } else {
                        let kind = self.byte()?;
                        ensure!(
                            (event_kind::DRIVER_AVAILABLE..=event_kind::TRIP_ACCEPTED)
                                .contains(&kind),
                            "record {} has unknown event kind {kind}",
                            self.records
                        );
                        let zone = self.zone()?;
                        let delta = unzigzag(self.varint()?);
                        let id = self.last_event_id.wrapping_add(delta as u64);
                        self.last_event_id = id;
                        let driver = self.varint()?;
                        Op::Event(WireEvent {
                            id,
                            zone,
                            driver,
                            kind,
                        })
                    };
                    self.records += 1;
                    return Ok(Some(Record {
                        at_us: self.at_us,
                        tier,
                        op,
                    }));
                }
                other => bail!(
                    "unknown record tag {other:#04x} after record {}",
                    self.records
                ),
            }
        }
    }
}

impl<R: BufRead> Iterator for TraceReader<R> {
    type Item = anyhow::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Writes records to a file; returns how many.
pub fn write_file(
    path: &std::path::Path,
    resolution: u8,
    meta: &str,
    records: impl IntoIterator<Item = Record>,
) -> anyhow::Result<u64> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = TraceWriter::new(io::BufWriter::new(f), resolution, meta)?;
    for r in records {
        w.write(&r)?;
    }
    let n = w.records();
    w.finish()?;
    Ok(n)
}

/// Opens a trace file for streaming.
pub fn open_file(
    path: &std::path::Path,
) -> anyhow::Result<TraceReader<io::BufReader<std::fs::File>>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    TraceReader::new(io::BufReader::new(f)).with_context(|| format!("in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record {
                at_us: 0,
                tier: Tier::Premium,
                op: Op::Event(WireEvent {
                    id: 10,
                    zone: 0x881f1d4899fffff,
                    driver: 7,
                    kind: event_kind::DRIVER_AVAILABLE,
                }),
            },
            Record {
                at_us: 1_500,
                tier: Tier::Shared,
                op: Op::Quote {
                    zone: 0x881f1d4899fffff,
                    distance_m: 4_200,
                    duration_s: 600,
                },
            },
            Record {
                at_us: 1_500,
                tier: Tier::Shared,
                op: Op::Event(WireEvent {
                    id: 3,
                    zone: 0x881f1d489bfffff,
                    driver: 0,
                    kind: event_kind::RIDER_DEMAND,
                }),
            },
        ]
    }

    fn encode(records: &[Record]) -> Vec<u8> {
        let mut w = TraceWriter::new(Vec::new(), 8, "test").expect("header");
        for r in records {
            w.write(r).expect("write");
        }
        w.finish().expect("finish")
    }

    #[test]
    fn records_survive_a_round_trip() {
        let bytes = encode(&sample());
        let r = TraceReader::new(&bytes[..]).expect("header");
        assert_eq!(r.header().meta, "test");
        assert_eq!(r.header().resolution, 8);
        let back: Vec<Record> = r.collect::<anyhow::Result<_>>().expect("records");
        assert_eq!(back, sample());
    }

    #[test]
    fn truncated_or_corrupted_traces_are_refused() {
        let bytes = encode(&sample());
        let header_len = 16 + "test".len();
        for cut in header_len..bytes.len() {
            let r = TraceReader::new(&bytes[..cut]).expect("header");
            assert!(
                r.collect::<anyhow::Result<Vec<_>>>().is_err(),
                "cut at {cut}"
            );
        }
        let mut bad = bytes.clone();
        let at = bytes.len() - 12;
        bad[at] ^= 0x40;
        let r = TraceReader::new(&bad[..]).expect("header");
        assert!(r.collect::<anyhow::Result<Vec<_>>>().is_err());
        assert!(TraceReader::new(&b"not a trace at all"[..]).is_err());
    }

    #[test]
    fn the_example_in_trace_md_is_what_the_writer_writes() {
        let bytes = encode(&[Record {
            at_us: 1_500,
            tier: Tier::Premium,
            op: Op::Quote {
                zone: 0x881f1d4899fffff,
                distance_m: 4_200,
                duration_s: 600,
            },
        }]);
        let body = &bytes[16 + 4..];
        assert_eq!(
            &body[..16],
            &[
                0x01, 0xff, 0xff, 0x9f, 0x89, 0xd4, 0xf1, 0x81, 0x08, 0x10, 0xdc, 0x0b, 0x00, 0xe8,
                0x20, 0xd8
            ]
        );
        assert_eq!(body[16], 0x04);
        assert_eq!(body[17], TAG_END);
    }

    #[test]
    fn out_of_order_records_are_refused_by_the_writer() {
        let mut s = sample();
        s.swap(0, 1);
        let mut w = TraceWriter::new(Vec::new(), 8, "").expect("header");
        w.write(&s[0]).expect("first");
        assert!(w.write(&s[1]).is_err());
    }
}
