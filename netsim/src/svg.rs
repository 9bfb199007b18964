//! Plain SVG plots, written by hand: line charts (CDFs, time series) and grouped bars.
//! Numbers are printed with fixed precision so that the same data gives the same bytes.

use std::fmt::Write as _;

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 8] = [
    "#1b6ca8", "#d1495b", "#2e933c", "#edae49", "#6a4c93", "#00798c", "#8d6a9f", "#444444",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn colour(i: usize) -> &'static str {
    COLOURS.get(i % COLOURS.len()).copied().unwrap_or("#000000")
}

fn header(title: &str, x_label: &str, y_label: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 15.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        TOP + (H - TOP - BOTTOM) / 2.0,
        TOP + (H - TOP - BOTTOM) / 2.0,
        escape(y_label)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#888888"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    s
}

fn label(v: f64) -> String {
    if v == 0.0 {
        "0".to_owned()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn legend(s: &mut String, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        let y = TOP + 10.0 + 18.0 * i as f64;
        let x = W - RIGHT + 12.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            y - 10.0,
            colour(i),
            x + 18.0,
            y,
            escape(name)
        );
    }
}

/// A line chart of several series of (x, y) points; `log_x` puts x on a log scale.
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    let mut s = header(title, x_label, y_label);
    let points: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if points.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no data</text>"#,
            LEFT + (W - LEFT - RIGHT) / 2.0,
            TOP + (H - TOP - BOTTOM) / 2.0
        );
        s.push_str("</svg>\n");
        return s;
    }
    let fx = |x: f64| if log_x { x.max(0.01).log10() } else { x };
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut y1 = 0.0f64;
    for (x, y) in &points {
        x0 = x0.min(fx(*x));
        x1 = x1.max(fx(*x));
        y1 = y1.max(*y);
    }
    if log_x {
        x0 = x0.floor();
        x1 = x1.ceil();
    } else {
        x0 = x0.min(0.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + (fx(x) - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + ph - y / y1 * ph;
    // Axes ticks.
    if log_x {
        #[allow(clippy::cast_possible_truncation)]
        for e in (x0 as i32)..=(x1 as i32) {
            let x = LEFT + (f64::from(e) - x0) / (x1 - x0) * pw;
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eeeeee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                label(10f64.powi(e))
            );
        }
    } else {
        for k in 0..=5 {
            let v = x0 + (x1 - x0) * f64::from(k) / 5.0;
            let x = LEFT + pw * f64::from(k) / 5.0;
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eeeeee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                label(v)
            );
        }
    }
    for k in 0..=4 {
        let v = y1 * f64::from(k) / 4.0;
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eeeeee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            label(v)
        );
    }
    for (i, (_, pts)) in series.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let mut d = String::new();
        for (k, (x, y)) in pts.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if k == 0 { "M" } else { " L" },
                px(*x),
                py(*y)
            );
        }
        let _ = writeln!(
            s,
            r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.8"/>"#,
            colour(i)
        );
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
    legend(&mut s, &names);
    s.push_str("</svg>\n");
    s
}

/// Grouped bars: one group per entry of `groups`, one bar per series in each.
pub fn bars(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let mut s = header(title, "", y_label);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let mut y1 = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max);
    if y1 <= 0.0 {
        y1 = 1.0;
    }
    y1 *= 1.1;
    for k in 0..=4 {
        let v = y1 * f64::from(k) / 4.0;
        let y = TOP + ph - v / y1 * ph;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eeeeee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            label(v)
        );
    }
    let n = groups.len().max(1) as f64;
    let group_w = pw / n;
    let bar_w = group_w * 0.8 / series.len().max(1) as f64;
    // Value labels no wider than a bar (about five characters of half an em each), so
    // that the labels of neighbouring bars of one height do not run together.
    let font = (bar_w / 2.5).clamp(6.0, 10.0).floor();
    for (g, name) in groups.iter().enumerate() {
        let gx = LEFT + group_w * g as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            TOP + ph + 16.0,
            escape(name)
        );
        for (i, (_, values)) in series.iter().enumerate() {
            let v = values.get(g).copied().unwrap_or(0.0);
            let h = v / y1 * ph;
            let x = gx + group_w * 0.1 + bar_w * i as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="{font}">{}</text>"#,
                TOP + ph - h,
                bar_w * 0.95,
                colour(i),
                x + bar_w / 2.0,
                TOP + ph - h - 3.0,
                label(v)
            );
        }
    }
    let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
    legend(&mut s, &names);
    s.push_str("</svg>\n");
    s
}
