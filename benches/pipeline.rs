//! `cargo bench --bench pipeline`: the echo pipeline against a plain
//! serde_json loop, measured in the same run (the same as
//! `stook bench pipeline`). Pass `-- --rows N` to change the size.

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    bench: stook::bench::PipelineBench,
}

fn main() {
    // `cargo bench` appends `--bench`; it means nothing here.
    let argv: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let args = Args::parse_from(argv);
    if let Err(e) = stook::bench::pipeline(&args.bench) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
