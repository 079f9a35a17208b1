//! The benchmark code itself works: benchmarks 1 to 5 at `--tiny` sizes each
//! produce a measured row (not a failure) and RESULTS.md text with the table.
//! No speed is asserted: on a shared machine that would be noise (the full
//! run, `make bench`, reports the figures). Benchmarks 6 and 7 need nginx, wrk
//! and pgbench, which `make test` does not install; `make bench` runs them.

use pg_shapes_bench::report::Verdict;

#[test]
fn tiny_run_of_benchmarks_1_to_5_measures_every_row_and_renders_the_table() {
    let args: Vec<String> =
        ["--tiny", "--only", "1,2,3,4,5", "--out", "/dev/null"].iter().map(|s| s.to_string()).collect();
    let opts = pg_shapes_bench::parse_args(&args).expect("arguments parse");
    let report = pg_shapes_bench::run(&opts);

    let failed: Vec<_> = report.rows.iter().filter(|r| r.verdict == Verdict::Failed).collect();
    assert!(failed.is_empty(), "benchmarks failed: {failed:#?}");
    for prefix in ["1.", "2.", "3.", "4.", "5."] {
        assert!(report.rows.iter().any(|r| r.benchmark.starts_with(prefix)), "no row for benchmark {prefix}");
    }
    for r in &report.rows {
        assert!(r.ours.chars().any(|c| c.is_ascii_digit()), "row without a figure: {r:?}");
    }

    let text = pg_shapes_bench::render(&opts, &report, &["machine: test".to_string()], 1.0);
    assert!(text.contains("| benchmark | ours | limit (measured) |"), "no table in:\n{text}");
    assert!(text.contains("### Benchmark 3"), "no method text for benchmark 3 in:\n{text}");
}
