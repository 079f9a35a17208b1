//! `make bench` entry point: runs the benchmarks and writes bench/RESULTS.md.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match pg_shapes_bench::parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            if e.is_empty() {
                print!("{}", pg_shapes_bench::USAGE);
                return;
            }
            eprintln!("error: {e}\n{}", pg_shapes_bench::USAGE);
            std::process::exit(2);
        }
    };
    let machine = pg_shapes_bench::util::machine_info();
    let t = Instant::now();
    let report = pg_shapes_bench::run(&opts);
    let text = pg_shapes_bench::render(&opts, &report, &machine, t.elapsed().as_secs_f64());
    if let Some(dir) = opts.out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&opts.out, &text) {
        eprintln!("error: cannot write {}: {e}", opts.out.display());
        std::process::exit(1);
    }
    println!("\n{}", report.table());
    println!("results written to {}", opts.out.display());
}
