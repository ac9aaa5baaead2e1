//! Charts over 24 h / 7 d / 30 d, drawn as SVG on the server from the
//! database (so they survive restarts): requests submitted vs decided,
//! decision time p50 / p95, SLA breaches. Each series is one grouped index
//! range read returning at most (buckets × 17) rows; percentiles come from a
//! fixed histogram of decision times (so they are bucket upper bounds).
use std::fmt::Write;

use axum::{
    extract::{Query, State},
    response::Response,
};
use serde::{Deserialize, Serialize};

use super::{Session, failure, render, span};
use crate::{app::App, on_db};

const HOUR: i64 = 3600 * 1000;

/// Upper bounds (ms) of the decision-time histogram; one more bucket above.
const BOUNDS: [i64; 16] = [
    60_000,
    5 * 60_000,
    15 * 60_000,
    30 * 60_000,
    HOUR,
    2 * HOUR,
    4 * HOUR,
    8 * HOUR,
    12 * HOUR,
    24 * HOUR,
    48 * HOUR,
    72 * HOUR,
    120 * HOUR,
    168 * HOUR,
    336 * HOUR,
    720 * HOUR,
];

const HISTOGRAM: &str = "SELECT (decided_at - $1) / $2, \
     CAST(CASE WHEN decided_at - created_at <= 60000 THEN 0 \
          WHEN decided_at - created_at <= 300000 THEN 1 \
          WHEN decided_at - created_at <= 900000 THEN 2 \
          WHEN decided_at - created_at <= 1800000 THEN 3 \
          WHEN decided_at - created_at <= 3600000 THEN 4 \
          WHEN decided_at - created_at <= 7200000 THEN 5 \
          WHEN decided_at - created_at <= 14400000 THEN 6 \
          WHEN decided_at - created_at <= 28800000 THEN 7 \
          WHEN decided_at - created_at <= 43200000 THEN 8 \
          WHEN decided_at - created_at <= 86400000 THEN 9 \
          WHEN decided_at - created_at <= 172800000 THEN 10 \
          WHEN decided_at - created_at <= 259200000 THEN 11 \
          WHEN decided_at - created_at <= 432000000 THEN 12 \
          WHEN decided_at - created_at <= 604800000 THEN 13 \
          WHEN decided_at - created_at <= 1209600000 THEN 14 \
          WHEN decided_at - created_at <= 2592000000 THEN 15 \
          ELSE 16 END AS BIGINT), COUNT(*) \
     FROM requests WHERE decided_at >= $1 AND decided_at < $3 GROUP BY 1, 2";

#[derive(Deserialize, Default)]
pub struct ChartQuery {
    #[serde(default)]
    range: String,
}

#[derive(Serialize)]
struct Chart {
    id: &'static str,
    title: String,
    svg: String,
    labels: Vec<String>,
    series: Vec<(String, Vec<String>)>,
}

/// (buckets, bucket width) of a range name.
fn range(name: &str) -> (&'static str, i64, i64) {
    match name {
        "7d" => ("7d", 28, 6 * HOUR),
        "30d" => ("30d", 30, 24 * HOUR),
        _ => ("24h", 24, HOUR),
    }
}

async fn counts(
    app: &App,
    sql: &'static str,
    start: i64,
    width: i64,
    end: i64,
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let rows: Vec<(i64, i64)> = on_db!(&app.db, |p| sqlx::query_as(sql)
        .bind(start)
        .bind(width)
        .bind(end)
        .fetch_all(p)
        .await)?;
    let mut out = vec![0.0; n];
    for (b, c) in rows {
        if let Some(slot) = usize::try_from(b).ok().and_then(|b| out.get_mut(b)) {
            *slot += c as f64;
        }
    }
    Ok(out)
}

/// The bucket upper bound (ms) at quantile `q` of a histogram; None if empty.
fn quantile(hist: &[i64; 17], q: f64) -> Option<i64> {
    let total: i64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil().max(1.0) as i64;
    let mut seen = 0;
    for (i, c) in hist.iter().enumerate() {
        seen += c;
        if seen >= want {
            return Some(BOUNDS.get(i).copied().unwrap_or(2 * BOUNDS[15]));
        }
    }
    None
}

/// A line chart: one polyline per series, y from 0 to the largest value.
fn line_svg(id: &str, title: &str, labels: &[String], series: &[(&str, &str, &[f64])]) -> String {
    let (w, h, left, bottom, top, right) = (640.0, 220.0, 48.0, 28.0, 12.0, 12.0);
    let n = labels.len().max(2);
    let max = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let x = |i: usize| left + (w - left - right) * i as f64 / (n - 1) as f64;
    let y = |v: f64| top + (h - top - bottom) * (1.0 - v / max);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-labelledby="{id}-t" xmlns="http://www.w3.org/2000/svg"><title id="{id}-t">{}</title>"#,
        escape(title)
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let yy = y(v);
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#d0d0d0"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - right,
            left - 4.0,
            yy + 4.0,
            fmt_num(v)
        );
    }
    let step = (labels.len() / 6).max(1);
    for (i, l) in labels.iter().enumerate().step_by(step) {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
            x(i),
            h - 8.0,
            escape(l)
        );
    }
    for (name, colour, values) in series {
        let pts: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2.5" points="{}"><title>{}</title></polyline>"#,
            pts.join(" "),
            escape(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn fmt_num(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub async fn page(
    State(app): State<App>,
    session: Session,
    Query(q): Query<ChartQuery>,
) -> Response {
    let now = app.now_ms();
    let (name, n, width) = range(&q.range);
    // Buckets end at the next whole bucket boundary after now.
    let end = (now / width + 1) * width;
    let start = end - n * width;
    let nu = n as usize;
    let build = async {
        let submitted = counts(
            &app,
            "SELECT (created_at - $1) / $2, COUNT(*) FROM requests \
             WHERE created_at >= $1 AND created_at < $3 GROUP BY 1",
            start,
            width,
            end,
            nu,
        )
        .await?;
        let decided = counts(
            &app,
            "SELECT (decided_at - $1) / $2, COUNT(*) FROM requests \
             WHERE decided_at >= $1 AND decided_at < $3 GROUP BY 1",
            start,
            width,
            end,
            nu,
        )
        .await?;
        let breaches = counts(
            &app,
            "SELECT (breached_at - $1) / $2, COUNT(*) FROM requests \
             WHERE breached_at >= $1 AND breached_at < $3 GROUP BY 1",
            start,
            width,
            end,
            nu,
        )
        .await?;
        let rows: Vec<(i64, i64, i64)> = on_db!(&app.db, |p| sqlx::query_as(HISTOGRAM)
            .bind(start)
            .bind(width)
            .bind(end)
            .fetch_all(p)
            .await)?;
        let mut hist = vec![[0i64; 17]; nu];
        for (b, d, c) in rows {
            if let (Ok(b), Ok(d)) = (usize::try_from(b), usize::try_from(d))
                && b < nu
                && d < 17
            {
                hist[b][d] += c;
            }
        }
        anyhow::Ok((submitted, decided, breaches, hist))
    };
    let (submitted, decided, breaches, hist) = match build.await {
        Ok(v) => v,
        Err(e) => return failure(Some(&session), format!("{e:#}")),
    };
    let labels: Vec<String> = (0..nu)
        .map(|i| {
            let t = start + i as i64 * width;
            let dt = chrono::DateTime::from_timestamp_millis(t).unwrap_or_default();
            if width >= 24 * HOUR {
                dt.format("%m-%d").to_string()
            } else if name == "7d" {
                dt.format("%m-%d %H:00").to_string()
            } else {
                dt.format("%H:00").to_string()
            }
        })
        .collect();
    let hours = |q: f64| -> Vec<f64> {
        hist.iter()
            .map(|h| {
                quantile(h, q)
                    .map(|ms| ms as f64 / HOUR as f64)
                    .unwrap_or(0.0)
            })
            .collect()
    };
    let (p50, p95) = (hours(0.5), hours(0.95));
    let mut total = [0i64; 17];
    for h in &hist {
        for (t, c) in total.iter_mut().zip(h) {
            *t += c;
        }
    }
    let p50_all = quantile(&total, 0.5)
        .map(span)
        .unwrap_or_else(|| "–".into());
    let p95_all = quantile(&total, 0.95)
        .map(span)
        .unwrap_or_else(|| "–".into());
    let fmt = |v: &[f64]| v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>();
    let charts = vec![
        Chart {
            id: "flow",
            title: "Requests submitted and decided".into(),
            svg: line_svg(
                "flow",
                "Requests submitted (blue) and decided (orange) per bucket",
                &labels,
                &[
                    ("submitted", "#0b57a4", &submitted),
                    ("decided", "#b34700", &decided),
                ],
            ),
            labels: labels.clone(),
            series: vec![
                ("submitted".into(), fmt(&submitted)),
                ("decided".into(), fmt(&decided)),
            ],
        },
        Chart {
            id: "time",
            title: "Decision time p50 and p95 (hours, bucket upper bounds)".into(),
            svg: line_svg(
                "time",
                "Decision time in hours: p50 (blue) and p95 (orange)",
                &labels,
                &[("p50", "#0b57a4", &p50), ("p95", "#b34700", &p95)],
            ),
            labels: labels.clone(),
            series: vec![("p50 h".into(), fmt(&p50)), ("p95 h".into(), fmt(&p95))],
        },
        Chart {
            id: "breaches",
            title: "SLA breaches".into(),
            svg: line_svg(
                "breaches",
                "SLA breaches per bucket",
                &labels,
                &[("breaches", "#a4161a", &breaches)],
            ),
            labels: labels.clone(),
            series: vec![("breaches".into(), fmt(&breaches))],
        },
    ];
    render(
        "charts.html",
        Some(&session),
        "Charts",
        "charts",
        60,
        now,
        minijinja::context! {
            charts => charts,
            range => name,
            totals => minijinja::context! {
                submitted => submitted.iter().sum::<f64>() as i64,
                decided => decided.iter().sum::<f64>() as i64,
                breaches => breaches.iter().sum::<f64>() as i64,
                p50 => p50_all,
                p95 => p95_all,
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut h = [0i64; 17];
        assert_eq!(quantile(&h, 0.5), None);
        h[0] = 5; // <= 1 min
        h[4] = 4; // <= 1 h
        h[9] = 1; // <= 1 d
        assert_eq!(quantile(&h, 0.5), Some(60_000));
        assert_eq!(quantile(&h, 0.9), Some(HOUR));
        assert_eq!(quantile(&h, 0.95), Some(24 * HOUR));
    }

    #[test]
    fn svg_escapes_and_draws_every_series() {
        let labels = vec!["a<b".to_string(), "c".to_string()];
        let svg = line_svg(
            "x",
            "t&t",
            &labels,
            &[("s1", "#000", &[1.0, 2.0]), ("s2", "#111", &[0.0, 0.0])],
        );
        assert!(svg.contains("a&lt;b") && svg.contains("t&amp;t"));
        assert_eq!(svg.matches("<polyline").count(), 2);
    }
}
