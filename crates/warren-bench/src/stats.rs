//! Latency summaries: sort, then nearest-rank percentiles. No stats crate.

use std::time::Duration;

/// A summary of one series, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for an empty series.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        Some(Self {
            n,
            min: ms[0],
            mean: ms.iter().sum::<f64>() / n as f64,
            p50: percentile(&ms, 0.50),
            p99: percentile(&ms, 0.99),
            max: ms[n - 1],
        })
    }
}

/// Nearest-rank percentile of an ascending, non-empty slice: the smallest
/// value with at least `q` of the samples at or below it.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of an empty series");
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to 3 decimals for JSON output (microsecond resolution in ms).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// JSON number rounded to 3 decimals, or null for a missing figure.
pub fn json_num(x: Option<f64>) -> serde_json::Value {
    match x {
        Some(v) if v.is_finite() => serde_json::Value::from(round3(v)),
        _ => serde_json::Value::Null,
    }
}

/// Serializes `fields` as one JSON object, keeping their order (serde_json's
/// own map sorts keys unless a workspace-wide feature is switched on).
pub fn json_object(fields: &[(String, serde_json::Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// One row of a results table.
pub struct Row<'a> {
    pub runtime: &'a str,
    pub what: &'a str,
    pub summary: Option<Summary>,
    /// Shown instead of figures when there is no summary.
    pub note: Option<&'a str>,
}

pub fn print_table(rows: &[Row<'_>]) {
    println!(
        "{:<8} {:<11} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "runtime", "measure", "n", "min ms", "mean ms", "p50 ms", "p99 ms", "max ms"
    );
    for row in rows {
        match row.summary {
            Some(s) => println!(
                "{:<8} {:<11} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                row.runtime, row.what, s.n, s.min, s.mean, s.p50, s.p99, s.max
            ),
            None => println!(
                "{:<8} {:<11} {:>6}   {}",
                row.runtime,
                row.what,
                "-",
                row.note.unwrap_or("no data")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        // 200 samples: p99 is the 198th value.
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), 198.0);
    }

    #[test]
    fn summary_sorts_and_averages() {
        let d = [3, 1, 2].map(Duration::from_millis);
        let s = Summary::of(&d).expect("non-empty");
        assert_eq!(s.n, 3);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 3.0);
        assert_eq!(s.p50, 2.0);
        assert!((s.mean - 2.0).abs() < 1e-9);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn json_object_keeps_order() {
        let s = json_object(&[
            ("runs".into(), serde_json::json!(3)),
            ("b\"x".into(), serde_json::Value::Null),
            ("a".into(), serde_json::json!("q")),
        ]);
        assert_eq!(s, r#"{"runs":3,"b\"x":null,"a":"q"}"#);
        let v: serde_json::Value = serde_json::from_str(&s).expect("valid JSON");
        assert_eq!(v["a"], "q");
    }

    #[test]
    fn json_rounding() {
        assert_eq!(json_num(Some(1.23456)), serde_json::json!(1.235));
        assert_eq!(json_num(None), serde_json::Value::Null);
        assert_eq!(json_num(Some(f64::NAN)), serde_json::Value::Null);
    }
}
