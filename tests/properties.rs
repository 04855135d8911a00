//! Property tests: over random batch sizes, budgets, actor counts, modes,
//! per-batch costs and row counts, the output is the reference output and
//! the store never exceeds its budget. And the row parser, fed anything,
//! never panics.

mod common;

use common::*;
use proptest::prelude::*;
use stook::config::Compute;
use stook_actors::rows::{parse_row, FieldKind, FieldSpec, RequestSchema};

fn reference(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            let text = format!("row {i} {} é ✓", "word ".repeat(i % 17));
            serde_json::json!({"id": i, "digest": format!("{:016x}", fnv1a(&text))})
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn output_and_budget_hold_for_any_setting(
        rows in 1usize..400,
        size in 1usize..64,
        actors in 1usize..5,
        tasks in any::<bool>(),
        order in any::<bool>(),
        budget_batches in 1u64..6,
        batch_us in 0u64..1500,
        lag in prop_oneof![Just(1.0f64), 2.0f64..8.0],
    ) {
        let dir = tempdir();
        let input = write_rows(dir.path(), "in.jsonl", rows);
        let out = dir.path().join("o");
        let compute = if tasks { Compute::Tasks } else { Compute::Actors };
        let budget = budget_batches * (8192 + 400 * size as u64);
        let opts = format!("row_us = {}\noutput_bytes = 0\nlag_factor = {lag}", batch_us / size as u64);
        let mut c = with_batching(synthetic_config(&input, &out, &opts), size, compute, actors, budget);
        c.output.preserve_order = order;
        c.checkpoint.shard_rows = 50;
        let window = c.batch.window() as u64;
        let r = run(c).unwrap();
        prop_assert!(r.peak_store_bytes <= budget, "peak {} > {}", r.peak_store_bytes, budget);
        if order {
            // The reorder buffer never holds more than the window allows:
            // at most `window` batches are unfinished, the oldest included
            // (delivered, waiting in the Sink's mailbox).
            prop_assert!(r.peak_store_holders["reorder"].objects <= window, "{:?}", r.peak_store_holders);
        }
        prop_assert_eq!(r.leaked_store_objects, 0);
        let expected = reference(rows);
        let mut got: Vec<serde_json::Value> = String::from_utf8(output_bytes(&out)).unwrap()
            .lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if !order {
            got.sort_by_key(|v| v["_row"].as_u64());
            for (i, v) in got.iter_mut().enumerate() {
                prop_assert_eq!(v["_row"].as_u64(), Some(i as u64));
                v.as_object_mut().unwrap().remove("_row");
            }
        }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn the_row_parser_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_row(&bytes, &schema());
    }

    #[test]
    fn the_row_parser_never_panics_on_json_like_text(text in r#"[{}\[\]":,a-z0-9\\u \t.eE+-]{0,200}"#) {
        if let Ok(row) = parse_row(text.as_bytes(), &schema()) {
            // What it accepts is one JSON object.
            let v: serde_json::Value = serde_json::from_str(row.raw).unwrap();
            prop_assert!(v.is_object());
        }
    }
}

fn schema() -> RequestSchema {
    RequestSchema {
        fields: vec![
            FieldSpec {
                name: "a".into(),
                kind: FieldKind::String,
                required: false,
            },
            FieldSpec {
                name: "b".into(),
                kind: FieldKind::Json,
                required: false,
            },
        ],
        keep_raw: true,
        ..RequestSchema::default()
    }
}
