//! The producer-window check per event (`engine::producer`): the cost idempotence adds to
//! each event of a `PRODUCER_BATCH` (target: at most 50 ns). Memory per producer is measured
//! by `engine/tests/producer_memory.rs`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::producer::{Producers, Sequence, Verdict};

/// A zone's producers as `engine::producer` keeps them, with `n` producers at sequence
/// `high` each.
fn producers(n: u64, high: u64) -> Producers {
    let mut p = Producers::default();
    for id in 1..=n {
        for seq in 1..=high {
            let s = Sequence {
                producer: id * 7_919,
                epoch: 1,
                seq,
            };
            assert_eq!(p.check(s, 64), Verdict::New);
            p.record(s, seq);
        }
    }
    p
}

fn window(c: &mut Criterion) {
    let mut g = c.benchmark_group("producer window");
    g.throughput(Throughput::Elements(1));
    // Powers of two, so the bench's own round-robin over the producers is a mask, not a
    // division (which would cost as much as the check).
    for n in [1u64, 8, 64] {
        let mask = n as usize - 1;
        // The path of a new event: check, then record (the zone applies it in between).
        let mut p = producers(n, 200);
        let mut next = vec![201u64; n as usize];
        let mut k = 0usize;
        g.bench_function(
            format!("check + record a new sequence, {n} producers"),
            |b| {
                b.iter(|| {
                    k = (k + 1) & mask;
                    let s = Sequence {
                        producer: (k as u64 + 1) * 7_919,
                        epoch: 1,
                        seq: next[k],
                    };
                    next[k] += 1;
                    let v = p.check(s, 64);
                    if v == Verdict::New {
                        p.record(s, s.seq);
                    }
                    v
                })
            },
        );
        // A resend: check finds the bit set.
        let p = producers(n, 200);
        let mut k = 0u64;
        g.bench_function(format!("check a duplicate, {n} producers"), |b| {
            b.iter(|| {
                k = (k + 1) & mask as u64;
                let s = Sequence {
                    producer: (k + 1) * 7_919,
                    epoch: 1,
                    seq: 150 + (k & 31),
                };
                std::hint::black_box(p.check(std::hint::black_box(s), 64))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, window);
criterion_main!(benches);
