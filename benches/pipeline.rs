//! `cargo bench --bench pipeline`: the echo pipeline against a plain
//! serde_json loop, measured in the same run (the same as
//! `stook bench pipeline`). Pass `-- --rows N` to change the size.

use clap::Parser;

// The binary's benchmarks (`stook bench …`); only the pipeline's runs here.
#[allow(dead_code, unused_imports)]
#[path = "../src/bench/mod.rs"]
mod bench;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    bench: bench::PipelineBench,
}

fn main() {
    // `cargo bench` appends `--bench`; it means nothing here.
    let argv: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let args = Args::parse_from(argv);
    if let Err(e) = bench::pipeline(&args.bench) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
