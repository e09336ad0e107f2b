//! Times a query on a store in-process, through the same session `hawking sql` opens, with
//! optional DataFusion settings first — for trying layout and reader settings without a
//! rebuild of the binary.
//!
//! ```sh
//! cargo run --release -p hawking-query --example time_query -- DIR RUNS "SELECT …" \
//!     [datafusion.execution.parquet.pushdown_filters=false ...]
//! ```
//! Prints the result once, then the time of each run (after one warm-up run).

use std::path::PathBuf;
use std::time::Instant;

use hawking_query::{OutputFormat, QueryOptions, open_session, write_batches};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: time_query DIR RUNS SQL [key=value ...]");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[1]);
    let runs: usize = args[2].parse().unwrap_or(5);
    let sql = &args[3];
    let ctx = match open_session(&dir, &QueryOptions::default()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    for setting in &args[4..] {
        let Some((k, v)) = setting.split_once('=') else {
            eprintln!("settings are key=value: {setting}");
            std::process::exit(2);
        };
        if let Err(e) = ctx.sql(&format!("SET {k} = '{v}'")).await {
            eprintln!("{setting}: {e}");
            std::process::exit(2);
        }
    }
    let mut times = Vec::new();
    for run in 0..=runs {
        let t = Instant::now();
        let batches = match ctx.sql(sql).await {
            Ok(df) => df.collect().await,
            Err(e) => Err(e),
        };
        let batches = match batches {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
        let elapsed = t.elapsed().as_secs_f64();
        if run == 0 {
            let mut out = std::io::stdout();
            if let Err(e) = write_batches(&mut out, &batches, OutputFormat::Table) {
                eprintln!("{e}");
            }
        } else {
            times.push(elapsed);
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "best {:.3} s, median {:.3} s over {runs} runs: {}",
        times.first().copied().unwrap_or(0.0),
        times.get(times.len() / 2).copied().unwrap_or(0.0),
        times
            .iter()
            .map(|t| format!("{t:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}
