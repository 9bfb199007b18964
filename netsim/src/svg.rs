//! Plain SVG plots, written by hand: line charts (CDFs, time series), grouped bars, and
//! means with a shaded confidence band (sweeps). Axis ticks fall on round values (1, 2
//! or 5 × 10ⁿ, [`nice_ticks`]); the legend sits to the right of the plot area, outside
//! it, so it never covers data. Numbers are printed with fixed precision so that the same
//! data gives the same bytes.

use std::fmt::Write as _;

const H: f64 = 420.0;
const LEFT: f64 = 80.0;
/// Width of the plot area.
const PW: f64 = 470.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// Height of the plot area.
const PH: f64 = H - TOP - BOTTOM;
const COLOURS: [&str; 8] = [
    "#1b6ca8", "#d1495b", "#2e933c", "#edae49", "#6a4c93", "#00798c", "#8d6a9f", "#444444",
];

/// Dash patterns of the lines of a [`bands`] chart, in turn (the first solid).
const DASHES: [&str; 4] = ["none", "7 4", "2 3", "10 3 2 3"];

/// The dash pattern of line `i` of a [`bands`] chart: in turn, shifted by one each time
/// the colours come round again, so that the first 32 lines all differ in colour or
/// dashes.
fn dash(i: usize) -> &'static str {
    DASHES
        .get((i + i / COLOURS.len()) % DASHES.len())
        .copied()
        .unwrap_or("none")
}

/// The height of a chart whose legend has `rows` names: the legend runs below the plot
/// area rather than out of the picture.
fn height(rows: usize) -> f64 {
    H.max(TOP + 20.0 + 18.0 * rows as f64)
}

/// Are all of a point's coordinates numbers (not NaN or infinite)?
fn finite(values: &[f64]) -> bool {
    values.iter().all(|v| v.is_finite())
}

/// The "nice number" near `x` (> 0): 1, 2, 5 or 10 × 10ⁿ. Rounded to the nearest when
/// `round`, else the smallest not below `x`.
pub fn nice_number(x: f64, round: bool) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 1.0;
    }
    let exp = x.log10().floor();
    let base = 10f64.powf(exp);
    // A hair of tolerance, so that 0.1000000000000001 counts as 1 × 10⁻¹.
    let f = x / base * (1.0 - 1e-9);
    let nice = if round {
        if f < 1.5 {
            1.0
        } else if f < 3.0 {
            2.0
        } else if f < 7.0 {
            5.0
        } else {
            10.0
        }
    } else if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * base
}

/// Ticks at round values covering `[lo, hi]`: about `target` of them, a step of 1, 2 or
/// 5 × 10ⁿ, the first at or below `lo` and the last at or above `hi` (the axis spans
/// them). A degenerate range is widened first.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    // Within ±1e307, so that the range itself is a number.
    const LIMIT: f64 = 1e307;
    let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() {
        (lo.min(hi).max(-LIMIT), lo.max(hi).min(LIMIT))
    } else {
        (0.0, 1.0)
    };
    // A range too narrow for its magnitude (a billionth) is as good as one value: its
    // ticks would need more digits than a label shows.
    if hi - lo <= 1e-9 * hi.abs().max(lo.abs()) {
        let pad = if hi == 0.0 { 1.0 } else { hi.abs() / 2.0 };
        lo -= pad;
        hi += pad;
        if lo < 0.0 && hi - pad >= 0.0 {
            lo = 0.0;
        }
    }
    let step = tick_step(lo, hi, target);
    let first = (lo / step + 1e-9).floor();
    let last = (hi / step - 1e-9).ceil();
    let mut ticks = Vec::new();
    let mut k = first;
    while k <= last && ticks.len() < 100 {
        // Multiplying an integer by the step keeps 0.1 + 0.2 noise out of the labels.
        let v = k * step;
        ticks.push(if v == 0.0 { 0.0 } else { v });
        k += 1.0;
    }
    ticks
}

fn tick_step(lo: f64, hi: f64, target: usize) -> f64 {
    let range = nice_number(hi - lo, false);
    nice_number(range / (target.max(2) - 1) as f64, true)
}

/// A tick's label, with as many decimals as the step between ticks needs.
pub fn tick_label(v: f64, step: f64) -> String {
    if v != 0.0 && (step < 1e-6 || v.abs() >= 1e12) && step > 0.0 && v.is_finite() {
        // Tiny steps or huge values: scientific notation, with as many digits as the
        // step needs beside the value's own (2e-12, 1.5e-12, 3e15).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let digits = (v.abs().log10().floor() - step.log10().floor()).clamp(0.0, 15.0) as usize;
        return format!("{v:.digits$e}");
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let decimals = if step > 0.0 && step < 1.0 {
        (-step.log10().floor()).clamp(0.0, 9.0) as usize
    } else {
        0
    };
    let text = format!("{v:.decimals$}");
    if text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        "0".to_owned()
    } else {
        text
    }
}

/// A bar's value: three significant digits or so (at least the integer part).
fn value_label(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".to_owned()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The unit to show `max_bytes` in: (bytes per unit, its name), B, KB, MB or GB
/// (powers of 1000).
pub fn bytes_unit(max_bytes: f64) -> (f64, &'static str) {
    if max_bytes >= 1e9 {
        (1e9, "GB")
    } else if max_bytes >= 1e6 {
        (1e6, "MB")
    } else if max_bytes >= 1e3 {
        (1e3, "KB")
    } else {
        (1.0, "bytes")
    }
}

/// The unit to show a duration of at most `max_ms` milliseconds in: (ms per unit, its
/// name), ms, s, min or h.
pub fn time_unit(max_ms: f64) -> (f64, &'static str) {
    if max_ms >= 2.0 * 3_600_000.0 {
        (3_600_000.0, "h")
    } else if max_ms >= 2.0 * 60_000.0 {
        (60_000.0, "min")
    } else if max_ms >= 10_000.0 {
        (1000.0, "s")
    } else {
        (1.0, "ms")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn colour(i: usize) -> &'static str {
    COLOURS.get(i % COLOURS.len()).copied().unwrap_or("#000000")
}

/// Width of the legend column for these names (about 7 px a character).
fn legend_width(names: &[&str]) -> f64 {
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    (50.0 + 7.0 * longest as f64).max(120.0)
}

fn header(title: &str, x_label: &str, y_label: &str, width: f64, rows: usize) -> String {
    let mut s = String::new();
    let h = height(rows);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{h}" viewBox="0 0 {width:.0} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r##"<rect width="{width:.0}" height="{h}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + PW / 2.0,
        H - 15.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        TOP + PH / 2.0,
        TOP + PH / 2.0,
        escape(y_label)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{PW:.1}" height="{PH:.1}" fill="none" stroke="#888888"/>"##
    );
    let _ = writeln!(
        s,
        r#"<clipPath id="plot"><rect x="{LEFT}" y="{TOP}" width="{PW:.1}" height="{PH:.1}"/></clipPath>"#
    );
    s
}

/// The legend, in a column to the right of the plot area: a swatch per name, or with
/// `dashed` a short line in the series' dash pattern.
fn legend(s: &mut String, names: &[&str], dashed: bool) {
    for (i, name) in names.iter().enumerate() {
        let y = TOP + 10.0 + 18.0 * i as f64;
        let x = LEFT + PW + 12.0;
        if dashed {
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2.5" stroke-dasharray="{}"/><text x="{:.1}" y="{y:.1}">{}</text>"#,
                y - 4.0,
                x + 22.0,
                y - 4.0,
                colour(i),
                dash(i),
                x + 28.0,
                escape(name)
            );
        } else {
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
}

fn no_data(s: &mut String) {
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no data</text>"#,
        LEFT + PW / 2.0,
        TOP + PH / 2.0
    );
    s.push_str("</svg>\n");
}

/// A linear axis from the first tick to the last.
struct Axis {
    ticks: Vec<f64>,
    lo: f64,
    hi: f64,
}

impl Axis {
    fn new(lo: f64, hi: f64, target: usize) -> Self {
        let ticks = nice_ticks(lo, hi, target);
        let lo = ticks.first().copied().unwrap_or(0.0);
        let mut hi = ticks.last().copied().unwrap_or(1.0);
        if hi <= lo {
            hi = lo + 1.0;
        }
        Self { ticks, lo, hi }
    }

    fn step(&self) -> f64 {
        match (self.ticks.first(), self.ticks.get(1)) {
            (Some(a), Some(b)) => b - a,
            _ => 1.0,
        }
    }

    /// Position along an axis of `len` pixels, from 0.
    fn at(&self, v: f64, len: f64) -> f64 {
        (v - self.lo) / (self.hi - self.lo) * len
    }
}

fn y_grid(s: &mut String, y: &Axis) {
    let step = y.step();
    for &v in &y.ticks {
        let py = TOP + PH - y.at(v, PH);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eeeeee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + PW,
            LEFT - 6.0,
            py + 4.0,
            tick_label(v, step)
        );
    }
}

fn x_tick(s: &mut String, px: f64, text: &str) {
    let _ = writeln!(
        s,
        r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eeeeee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
        TOP + PH,
        TOP + PH + 16.0,
        escape(text)
    );
}

/// A line chart of several series of (x, y) points; `log_x` puts x on a log scale
/// (ticks at powers of ten). The axis labels should name their units.
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
    let mut s = header(
        title,
        x_label,
        y_label,
        LEFT + PW + legend_width(&names),
        names.len(),
    );
    // A point that is not a number has no place on the chart.
    let series: Vec<(&String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, p)| {
            (
                n,
                p.iter()
                    .copied()
                    .filter(|(x, y)| finite(&[*x, *y]))
                    .collect(),
            )
        })
        .collect();
    let points: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if points.is_empty() {
        no_data(&mut s);
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
    let y = Axis::new(0.0, y1, 5);
    let x_axis = if log_x {
        x0 = x0.floor();
        x1 = x1.ceil();
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        #[allow(clippy::cast_possible_truncation)]
        let ticks: Vec<f64> = ((x0 as i32)..=(x1 as i32)).map(f64::from).collect();
        Axis {
            ticks,
            lo: x0,
            hi: x1,
        }
    } else {
        Axis::new(x0.min(0.0), x1, 6)
    };
    let x_step = x_axis.step();
    for &v in &x_axis.ticks {
        let text = if log_x {
            let value = 10f64.powf(v);
            tick_label(value, value)
        } else {
            tick_label(v, x_step)
        };
        x_tick(&mut s, LEFT + x_axis.at(v, PW), &text);
    }
    y_grid(&mut s, &y);
    let px = |x: f64| LEFT + x_axis.at(fx(x), PW);
    let py = |v: f64| TOP + PH - y.at(v, PH);
    for (i, (_, pts)) in series.iter().enumerate() {
        if pts.is_empty() {
            continue;
        }
        let mut d = String::new();
        for (k, (x, v)) in pts.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1}",
                if k == 0 { "M" } else { " L" },
                px(*x),
                py(*v)
            );
        }
        let _ = writeln!(
            s,
            r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.8" clip-path="url(#plot)"/>"#,
            colour(i)
        );
    }
    legend(&mut s, &names, false);
    s.push_str("</svg>\n");
    s
}

/// Grouped bars: one group per entry of `groups`, one bar per series in each, each bar
/// labelled with its value. The y label should name the unit.
pub fn bars(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
) -> String {
    let names: Vec<&str> = series.iter().map(|(n, _)| n.as_str()).collect();
    let mut s = header(
        title,
        "",
        y_label,
        LEFT + PW + legend_width(&names),
        names.len(),
    );
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    // Room above the tallest bar for its label.
    let y = Axis::new(0.0, if top > 0.0 { top * 1.08 } else { 1.0 }, 5);
    y_grid(&mut s, &y);
    let n = groups.len().max(1) as f64;
    let group_w = PW / n;
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
            TOP + PH + 16.0,
            escape(name)
        );
        for (i, (_, values)) in series.iter().enumerate() {
            let v = values
                .get(g)
                .copied()
                .filter(|v| v.is_finite())
                .unwrap_or(0.0);
            let h = y.at(v, PH);
            let x = gx + group_w * 0.1 + bar_w * i as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="{font}">{}</text>"#,
                TOP + PH - h,
                bar_w * 0.95,
                colour(i),
                x + bar_w / 2.0,
                TOP + PH - h - 3.0,
                value_label(v)
            );
        }
    }
    legend(&mut s, &names, false);
    s.push_str("</svg>\n");
    s
}

/// One line of a [`bands`] chart: points (x, mean, low, high) of the band.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    /// The legend's name for it.
    pub name: String,
    /// (x, mean, band low, band high), in order of x.
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// Means against a parameter, one line per series with markers, each over a shaded band
/// (a confidence interval). With `categories`, x is the index of a category and the
/// ticks are their names. The axis labels should name their units.
pub fn bands(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Band],
    categories: Option<&[String]>,
) -> String {
    let names: Vec<&str> = series.iter().map(|b| b.name.as_str()).collect();
    let mut s = header(
        title,
        x_label,
        y_label,
        LEFT + PW + legend_width(&names),
        names.len(),
    );
    // A point that is not a number has no place on the chart.
    let series: Vec<Band> = series
        .iter()
        .map(|b| Band {
            name: b.name.clone(),
            points: b
                .points
                .iter()
                .copied()
                .filter(|&(x, m, lo, hi)| finite(&[x, m, lo, hi]))
                .collect(),
        })
        .collect();
    let points: Vec<(f64, f64, f64, f64)> = series
        .iter()
        .flat_map(|b| b.points.iter().copied())
        .collect();
    if points.is_empty() {
        no_data(&mut s);
        return s;
    }
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (0.0f64, f64::NEG_INFINITY);
    for &(x, m, lo, hi) in &points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(lo.min(m));
        y1 = y1.max(hi.max(m));
    }
    let y = Axis::new(y0, y1, 6);
    let x_axis = match categories {
        Some(names) => {
            // Half a slot of margin either side of the first and last category.
            let count = names.len().max(1) as f64;
            Axis {
                ticks: (0..names.len()).map(|i| i as f64).collect(),
                lo: -0.5,
                hi: count - 0.5,
            }
        }
        None => Axis::new(x0, x1, 6),
    };
    let x_step = x_axis.step();
    for (i, &v) in x_axis.ticks.iter().enumerate() {
        let text = match categories {
            Some(names) => names.get(i).cloned().unwrap_or_default(),
            None => tick_label(v, x_step),
        };
        x_tick(&mut s, LEFT + x_axis.at(v, PW), &text);
    }
    y_grid(&mut s, &y);
    let px = |v: f64| LEFT + x_axis.at(v, PW);
    let py = |v: f64| TOP + PH - y.at(v, PH);
    for (i, band) in series.iter().enumerate() {
        if band.points.is_empty() {
            continue;
        }
        let mut area = String::new();
        for (k, &(x, _, _, hi)) in band.points.iter().enumerate() {
            let _ = write!(
                area,
                "{}{:.1},{:.1}",
                if k == 0 { "M" } else { " L" },
                px(x),
                py(hi)
            );
        }
        for &(x, _, lo, _) in band.points.iter().rev() {
            let _ = write!(area, " L{:.1},{:.1}", px(x), py(lo));
        }
        let _ = writeln!(
            s,
            r#"<path d="{area} Z" fill="{}" fill-opacity="0.18" stroke="none" clip-path="url(#plot)"/>"#,
            colour(i)
        );
        let mut line = String::new();
        for (k, &(x, m, _, _)) in band.points.iter().enumerate() {
            let _ = write!(
                line,
                "{}{:.1},{:.1}",
                if k == 0 { "M" } else { " L" },
                px(x),
                py(m)
            );
        }
        // Dashes differ from line to line, so that lines lying on each other all show.
        let _ = writeln!(
            s,
            r#"<path d="{line}" fill="none" stroke="{}" stroke-width="1.8" stroke-dasharray="{}" clip-path="url(#plot)"/>"#,
            colour(i),
            dash(i)
        );
        for &(x, m, _, _) in &band.points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(x),
                py(m),
                colour(i)
            );
        }
    }
    legend(&mut s, &names, true);
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_number(0.93, false), 1.0);
        assert_eq!(nice_number(7.0, false), 10.0);
        assert_eq!(nice_number(2.5, true), 2.0);
        assert_eq!(nice_number(3.2, true), 5.0);
        assert_eq!(nice_number(0.012, true), 0.01);
        assert_eq!(nice_number(1500.0, false), 2000.0);
        assert_eq!(nice_number(0.0, true), 1.0);
        assert_eq!(nice_number(f64::NAN, true), 1.0);
    }

    #[test]
    fn ticks_fall_on_round_values_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 7.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(
            nice_ticks(0.0, 0.93, 6),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(
            nice_ticks(0.0, 100.0, 6),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(
            nice_ticks(13.0, 87.0, 5),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(nice_ticks(-3.0, 3.0, 5), vec![-4.0, -2.0, 0.0, 2.0, 4.0]);
        assert_eq!(
            nice_ticks(2.0, 12.0, 6),
            vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
        );
        assert_eq!(
            nice_ticks(1234.0, 56789.0, 5),
            vec![0.0, 20000.0, 40000.0, 60000.0]
        );
        for (lo, hi) in [
            (0.0, 0.0317),
            (5.0, 5.0),
            (0.0, 1e9),
            (-7.5, -0.2),
            (3.3, 3.4),
        ] {
            let ticks = nice_ticks(lo, hi, 6);
            assert!(
                ticks.len() >= 2 && ticks.len() <= 12,
                "{lo}..{hi}: {ticks:?}"
            );
            let slack = 1e-9 * hi.abs().max(lo.abs()).max(1.0);
            assert!(
                ticks[0] <= lo + slack && *ticks.last().unwrap() >= hi - slack,
                "{lo}..{hi}: {ticks:?}"
            );
            let step = ticks[1] - ticks[0];
            let mantissa = step / 10f64.powf(step.log10().floor());
            assert!(
                [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6),
                "{lo}..{hi}: step {step}"
            );
        }
    }

    #[test]
    fn labels_have_the_decimals_the_step_needs() {
        assert_eq!(tick_label(0.6000000000000001, 0.2), "0.6");
        assert_eq!(tick_label(0.05, 0.01), "0.05");
        assert_eq!(tick_label(20000.0, 20000.0), "20000");
        assert_eq!(tick_label(-0.0, 0.5), "0");
        assert_eq!(tick_label(2.5, 0.5), "2.5");
    }

    #[test]
    fn units_follow_the_magnitude() {
        assert_eq!(bytes_unit(999.0), (1.0, "bytes"));
        assert_eq!(bytes_unit(150_882.0), (1e3, "KB"));
        assert_eq!(bytes_unit(50.3e6), (1e6, "MB"));
        assert_eq!(time_unit(250.0), (1.0, "ms"));
        assert_eq!(time_unit(12_000.0), (1000.0, "s"));
        assert_eq!(time_unit(4.0 * 3_600_000.0), (3_600_000.0, "h"));
    }

    #[test]
    fn tiny_huge_and_degenerate_ranges_get_distinct_labels() {
        for (lo, hi) in [
            (1e-12, 3e-12),
            (-3e-12, -1e-12),
            (0.0, 4e-15),
            (1e14, 3e14),
            (0.0, 1e300),
            (-f64::MAX, f64::MAX),
            (1_000.0, 1_000.000_000_1),
            (-2.5, -2.5),
            (0.0, 0.0),
        ] {
            let ticks = nice_ticks(lo, hi, 6);
            assert!(
                ticks.len() >= 2 && ticks.len() <= 12,
                "{lo}..{hi}: {ticks:?}"
            );
            assert!(ticks.iter().all(|t| t.is_finite()), "{lo}..{hi}: {ticks:?}");
            assert!(
                ticks.windows(2).all(|w| w[0] < w[1]),
                "{lo}..{hi}: {ticks:?}"
            );
            let step = ticks[1] - ticks[0];
            let labels: Vec<String> = ticks.iter().map(|t| tick_label(*t, step)).collect();
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(unique, labels, "{lo}..{hi}: labels repeat");
            assert!(
                labels.iter().all(|l| l.len() <= 12),
                "{lo}..{hi}: {labels:?}"
            );
        }
        assert_eq!(tick_label(2e-12, 1e-12), "2e-12");
        assert_eq!(tick_label(1.5e-12, 5e-13), "1.5e-12");
        assert_eq!(tick_label(3e15, 1e15), "3e15");
        assert_eq!(tick_label(0.0, 1e-12), "0");
    }

    #[test]
    fn points_that_are_not_numbers_are_left_out() {
        let svg = bands(
            "t",
            "x",
            "y",
            &[Band {
                name: "a".to_owned(),
                points: vec![
                    (0.0, 1.0, 0.5, 1.5),
                    (1.0, f64::NAN, f64::NAN, f64::NAN),
                    (f64::INFINITY, 2.0, 1.0, 3.0),
                    (2.0, 2.0, 1.0, 3.0),
                ],
            }],
            None,
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 2);
        let svg = lines(
            "t",
            "x",
            "y",
            &[("a".to_owned(), vec![(0.0, 1.0), (1.0, f64::NAN)])],
            false,
        );
        assert!(!svg.contains("NaN"), "{svg}");
        let svg = bars(
            "t",
            "y",
            &["g".to_owned()],
            &[("a".to_owned(), vec![f64::NAN])],
        );
        assert!(!svg.contains("NaN"), "{svg}");
    }

    #[test]
    fn a_long_legend_makes_the_chart_taller_and_lines_stay_apart() {
        let series: Vec<Band> = (0..40)
            .map(|i| Band {
                name: format!("s{i}"),
                points: vec![(0.0, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0)],
            })
            .collect();
        let svg = bands("t", "x", "y", &series, None);
        let last_y = TOP + 10.0 + 18.0 * 39.0;
        let h = height(40);
        assert!(h > last_y + 4.0, "{h} {last_y}");
        assert!(svg.contains(&format!(r#"height="{h}""#)), "{svg}");
        assert_eq!(height(3), H);
        let styles: Vec<(&str, &str)> = (0..32).map(|i| (colour(i), dash(i))).collect();
        let mut unique = styles.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 32, "two of the first 32 lines look the same");
    }

    #[test]
    fn the_legend_is_outside_the_plot_area() {
        let svg = bands(
            "t",
            "x",
            "y",
            &[Band {
                name: "data-to-sealed-cloud, links.broadband.loss=0.05".to_owned(),
                points: vec![(0.0, 1.0, 0.5, 1.5), (1.0, 2.0, 1.0, 3.0)],
            }],
            None,
        );
        let x = LEFT + PW + 12.0;
        assert!(svg.contains(&format!(r#"<line x1="{x:.1}""#)));
        let width: f64 = svg
            .split("width=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(width >= x + 18.0 + 7.0 * 45.0, "{width}");
    }
}
