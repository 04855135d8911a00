//! Every fuzz target of fuzz/harness.rs, bounded, in the test command:
//! each seed (fuzz/corpus/TARGET/) and each input that once made a target
//! fail (fuzz/regressions/TARGET/), then `STOOK_FUZZ_SECS` seconds (4 by
//! default) of random mutations of them. Coverage-guided fuzzing of the
//! same targets, for longer, is `scripts/fuzz.sh` (libFuzzer).
//!
//! A failing input is saved under target/fuzz-failures/ and named in the
//! failure; once fixed it belongs in fuzz/regressions/TARGET/.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One input longer than this is taken for a hang.
const HANG: Duration = Duration::from_secs(60);

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut all = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            all.push((p, data));
        }
    }
    all.sort();
    all
}

/// xorshift64*: enough randomness for mutations, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\xff",
    b"\xc3",
    b"\xef\xbb\xbf",
    b"\x00",
    b"\\u0000",
    b"\\ud800",
    b"[[",
    b"=",
    b"[model]",
    b"\"\"\"",
    b"ARROW1",
    b"PAR1",
    b"\xff\xff\xff\xff",
];

/// One to four random edits of `input`, now and then spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len() + 1);
        match rng.below(8) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            2 => {
                let s = INTERESTING[rng.below(INTERESTING.len())];
                d.splice(at..at, s.iter().copied());
            }
            3 if !d.is_empty() => {
                let a = rng.below(d.len());
                let n = 1 + rng.below((d.len() - a).min(16));
                d.drain(a..a + n);
            }
            4 if !d.is_empty() => {
                let a = rng.below(d.len());
                let n = 1 + rng.below((d.len() - a).min(64));
                let copy = d[a..a + n].to_vec();
                d.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let a = rng.below(other.len());
                let n = 1 + rng.below((other.len() - a).min(256));
                d.splice(at..at, other[a..a + n].iter().copied());
            }
            6 => d.truncate(at),
            _ => {
                // A byte that holds a length or count: set to an extreme.
                if !d.is_empty() {
                    let i = rng.below(d.len());
                    d[i] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)];
                }
            }
        }
    }
    d
}

fn run(name: &str) {
    let target = harness::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap();
    let inputs = inputs(name);
    assert!(!inputs.is_empty(), "no seed in fuzz/corpus/{name}/");
    let secs: f64 = std::env::var("STOOK_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let seed: u64 = std::env::var("STOOK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = Rng(seed ^ harness_hash(name.as_bytes()) | 1);
    let check = |data: &[u8], from: &str| {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| target(data));
        let slow = started.elapsed() > HANG;
        if outcome.is_err() || slow {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
            std::fs::create_dir_all(&dir).unwrap();
            let saved = dir.join(format!("{name}-{:016x}", harness_hash(data)));
            std::fs::write(&saved, data).unwrap();
            panic!(
                "fuzz target {name} {} on an input ({from}), saved as {}",
                if slow {
                    "took over a minute"
                } else {
                    "panicked"
                },
                saved.display()
            );
        }
    };
    for (path, data) in &inputs {
        check(data, &path.display().to_string());
    }
    let (start, mut runs) = (Instant::now(), 0u64);
    while start.elapsed().as_secs_f64() < secs {
        let a = &inputs[rng.below(inputs.len())].1;
        let b = &inputs[rng.below(inputs.len())].1;
        let data = mutate(&mut rng, a, b);
        check(&data, &format!("mutation {runs}, seed {seed}"));
        runs += 1;
    }
    eprintln!(
        "fuzz {name}: {} inputs, then {runs} mutations in {:.1} s, no failure",
        inputs.len(),
        start.elapsed().as_secs_f64()
    );
}

fn harness_hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// A test per target, and `HERE`, their names.
macro_rules! targets {
    ($($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                run(stringify!($name));
            }
        )*
        const HERE: &[&str] = &[$(stringify!($name)),*];
    };
}

targets!(jsonl, requests, gzip, zstd, parquet, arrow, manifest, config);

#[test]
fn every_target_is_run_here() {
    let all: Vec<&str> = harness::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(all, HERE);
}
