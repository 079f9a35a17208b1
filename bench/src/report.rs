//! The results table and `RESULTS.md`.

use std::fmt::Write as _;

/// Whether a row meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// No target for this row.
    NoTarget,
    /// The benchmark did not produce a number.
    Failed,
}

impl Verdict {
    pub fn from_bool(ok: bool) -> Verdict {
        if ok {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "yes",
            Verdict::Missed => "**no**",
            Verdict::NoTarget => "—",
            Verdict::Failed => "**failed**",
        }
    }
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    pub benchmark: String,
    pub ours: String,
    pub limit: String,
    pub ratio: String,
    pub target: String,
    pub verdict: Verdict,
    pub electric: String,
}

impl Row {
    /// A row for a benchmark that did not finish.
    pub fn failed(benchmark: &str, why: &str, target: &str, electric: &str) -> Row {
        Row {
            benchmark: benchmark.to_string(),
            ours: format!("failed: {}", why.lines().next().unwrap_or("").chars().take(200).collect::<String>()),
            limit: "—".into(),
            ratio: "—".into(),
            target: target.to_string(),
            verdict: Verdict::Failed,
            electric: electric.to_string(),
        }
    }
}

/// Everything a run found: table rows, and per benchmark the details of how it was measured.
#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// (benchmark number, text) — observations, raw counts, settings.
    pub notes: Vec<(u32, String)>,
}

impl Report {
    pub fn note(&mut self, bench: u32, text: impl Into<String>) {
        let text = text.into();
        crate::progress!("#{bench}: {text}");
        self.notes.push((bench, text));
    }

    /// The markdown table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        s.push_str("| benchmark | ours | limit (measured) | ratio | target | met? | Electric's published figure |\n");
        s.push_str("|---|---|---|---|---|---|---|\n");
        for r in &self.rows {
            let cells = [&r.benchmark, &r.ours, &r.limit, &r.ratio, &r.target, r.verdict.as_str(), &r.electric];
            let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|").replace('\n', " ")).collect();
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
        s
    }
}

/// Formats a number with thousands separators: 12345.6 → "12,346".
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A ratio as "0.42×".
pub fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "—".into()
    }
}

/// Milliseconds with sensible precision.
pub fn ms(d: f64) -> String {
    if d < 10.0 {
        format!("{d:.2} ms")
    } else if d < 100.0 {
        format!("{d:.1} ms")
    } else {
        format!("{d:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-12345.0), "-12,345");
    }

    #[test]
    fn table_escapes_pipes() {
        let mut r = Report::default();
        r.rows.push(Row::failed("x | y", "boom", "t", "e"));
        assert!(r.table().contains("x \\| y"));
    }
}
