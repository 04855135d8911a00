//! `stook bench stages`: the embedding backend's stages alone, one after
//! another, over the same texts: tokenizing, the model's forward (what the
//! model alone reaches), and printing results (the writer's share).

use std::path::PathBuf;

use stook::backends::embedding::{stage_times, StageTimes};
use stook::registry::BackendOptions;

/// Arguments of `stook bench stages`.
#[derive(Clone, Debug, clap::Args)]
pub struct StagesBench {
    /// A JSONL file with a "text" field per line.
    #[arg(long)]
    pub input: PathBuf,
    /// The sentence-transformers folder.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub model: PathBuf,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `f32`, `f16` or `bf16`.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Texts per batch (as `batch.size`).
    #[arg(long, default_value_t = 1024)]
    pub batch: usize,
    /// Rows per forward pass at most (default: the device's, as `stook run`).
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Tokens per forward pass at most (default: the device's, as `stook run`).
    #[arg(long)]
    pub micro_batch_tokens: Option<usize>,
    /// `packed` or `padded` (the encoder on GPUs and in half precision).
    #[arg(long, default_value = "packed")]
    pub attention: String,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the stage benchmark and prints its figures.
pub fn stages(args: &StagesBench) -> Result<(), Box<dyn std::error::Error>> {
    let texts: Vec<String> = std::fs::read_to_string(&args.input)
        .map_err(|e| format!("{}: {e}", args.input.display()))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| format!("{}:{}: {e}", args.input.display(), i + 1))?;
            v["text"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{}:{}: no \"text\" string", args.input.display(), i + 1))
        })
        .collect::<Result<_, String>>()?;
    let device = super::device_arg(&args.device)?;
    let mut table = toml::Table::new();
    table.insert("path".into(), args.model.display().to_string().into());
    table.insert("dtype".into(), args.dtype.clone().into());
    table.insert("attention".into(), args.attention.clone().into());
    if let Some(n) = args.micro_batch {
        table.insert("micro_batch".into(), (n as i64).into());
    }
    if let Some(n) = args.micro_batch_tokens {
        table.insert("micro_batch_tokens".into(), (n as i64).into());
    }
    let t = stage_times(&BackendOptions::new(table), &device, &texts, args.batch)?;
    if args.json {
        println!("{}", serde_json::to_string(&t)?);
    } else {
        let precision = format!("{}, {} attention", args.dtype, args.attention);
        print!("{}", render(&t, &args.device, &precision));
    }
    Ok(())
}

fn render(t: &StageTimes, device: &str, dtype: &str) -> String {
    let n = t.texts as f64;
    let total = t.tokenize + t.forward + t.format;
    let row = |name: &str, s: f64| {
        format!(
            "| {name} | {:.2} | {:.0} | {:.0}% |\n",
            s,
            n / s,
            100.0 * s / total
        )
    };
    format!(
        "{} texts on {device} ({dtype}), model loaded in {:.2} s\n\
         | stage | seconds | texts/s | share |\n| --- | ---: | ---: | ---: |\n{}{}{}{}",
        t.texts,
        t.load,
        row("tokenize", t.tokenize),
        row("forward (model alone, pre-tokenized)", t.forward),
        row("format results (all cores)", t.format),
        row("all three, one after another", total),
    )
}
