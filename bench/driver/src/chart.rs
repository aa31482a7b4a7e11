//! A small hand-written SVG line chart (log-log): suite time vs N per variant.

use std::fmt::Write as _;

/// One line of the chart.
pub struct Series {
    pub label: String,
    pub color: &'static str,
    /// `stroke-dasharray` of the line (`None`: solid): one style per database.
    pub dash: Option<&'static str>,
    /// The points' shape: one per database too (a single N has no lines).
    pub marker: Marker,
    /// (N, seconds), in increasing N.
    pub points: Vec<(f64, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fmt_secs(s: f64) -> String {
    if s >= 10.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.1} s")
    } else if s >= 0.1 {
        format!("{s:.2} s")
    } else {
        format!("{:.0} ms", s * 1e3)
    }
}

/// The shape of a series' points.
#[derive(Clone, Copy)]
pub enum Marker {
    Circle,
    Square,
    Diamond,
    /// Hollow square (a second server of one backend).
    SquareOutline,
}

/// A marker of `size` (about its radius) centred on (x, y).
fn marker(m: Marker, x: f64, y: f64, size: f64, color: &str) -> String {
    match m {
        Marker::Circle => {
            format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="{size}" fill="{color}"/>"#)
        }
        Marker::Square => format!(
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
            x - size * 0.9,
            y - size * 0.9,
            size * 1.8,
            size * 1.8
        ),
        Marker::SquareOutline => format!(
            r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="white" stroke="{color}" stroke-width="1.5"/>"#,
            x - size * 0.8,
            y - size * 0.8,
            size * 1.6,
            size * 1.6
        ),
        Marker::Diamond => {
            let d = size * 1.25;
            format!(
                r#"<polygon points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="{color}"/>"#,
                x,
                y - d,
                x + d,
                y,
                x,
                y + d,
                x - d,
                y
            )
        }
    }
}

/// `text` cut after each ", " or "; " that is outside parentheses.
fn wrap_points(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b',' | b';' if depth <= 0 && bytes.get(i + 1) == Some(&b' ') => {
                parts.push(&text[start..i + 2]);
                start = i + 2;
            }
            _ => {}
        }
    }
    if start < text.len() {
        parts.push(&text[start..]);
    }
    parts
}

fn dash_attr(dash: Option<&str>) -> String {
    dash.map(|d| format!(r#" stroke-dasharray="{d}""#))
        .unwrap_or_default()
}

/// Renders the chart. `title` goes on top, `notes` (the machine, the method)
/// in small print under it.
pub fn render(title: &str, notes: &[String], series: &[Series]) -> String {
    // Wrap long notes at ", " or "; " outside parentheses, so that they fit
    // the width and "15.20 (fsync off, Unix socket)" stays on one line.
    let mut lines: Vec<String> = Vec::new();
    for note in notes {
        let mut line = String::new();
        for part in wrap_points(note) {
            if line.chars().count() + part.chars().count() > 140 && !line.is_empty() {
                lines.push(std::mem::take(&mut line));
                line.push_str("    ");
            }
            line.push_str(part);
        }
        lines.push(line);
    }
    let notes = &lines;
    let (w, h) = (920.0, 540.0);
    let top = 58.0 + 15.0 * notes.len() as f64;
    let (left, right, bottom) = (78.0, 250.0, 58.0);
    let (pw, ph) = (w - left - right, h - top - bottom);

    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|&(n, t)| n > 0.0 && t > 0.0)
        .collect();
    let (mut nmin, mut nmax, mut tmin, mut tmax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(n, t) in &pts {
        nmin = nmin.min(n);
        nmax = nmax.max(n);
        tmin = tmin.min(t);
        tmax = tmax.max(t);
    }
    if pts.is_empty() {
        (nmin, nmax, tmin, tmax) = (10.0, 1000.0, 0.1, 10.0);
    }
    let (x0, x1) = ((nmin / 1.35).log10(), (nmax * 1.35).log10());
    let (y0, y1) = (
        tmin.log10().floor(),
        tmax.log10().ceil().max(tmin.log10().floor() + 1.0),
    );
    let x = |n: f64| left + (n.log10() - x0) / (x1 - x0) * pw;
    let y = |t: f64| top + ph - (t.log10() - y0) / (y1 - y0) * ph;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="26" font-size="16" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for (i, note) in notes.iter().enumerate() {
        let _ = writeln!(
            svg,
            r##"<text x="{left}" y="{}" font-size="11" fill="#555">{}</text>"##,
            44.0 + 15.0 * i as f64,
            esc(note)
        );
    }
    // Horizontal grid: decades labelled, 2x and 5x faint.
    let mut decade = y0 as i32;
    while decade <= y1 as i32 {
        for (m, strong) in [(1.0, true), (2.0, false), (5.0, false)] {
            let t = m * 10f64.powi(decade);
            if t.log10() > y1 + 1e-9 {
                continue;
            }
            let yy = y(t);
            let (stroke, sw) = if strong {
                ("#bbb", 1.0)
            } else {
                ("#e6e6e6", 1.0)
            };
            let _ = writeln!(
                svg,
                r#"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{stroke}" stroke-width="{sw}"/>"#,
                left + pw
            );
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{}">{}</text>"##,
                left - 8.0,
                yy + 4.0,
                if strong { "#333" } else { "#999" },
                fmt_secs(t)
            );
        }
        decade += 1;
    }
    // Vertical grid at each N measured.
    let mut ns: Vec<f64> = pts.iter().map(|p| p.0).collect();
    ns.sort_by(f64::total_cmp);
    ns.dedup();
    for &n in &ns {
        let xx = x(n);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#e6e6e6"/>"##,
            top + ph
        );
        let _ = writeln!(
            svg,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{n}</text>"#,
            top + ph + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">N, tests per suite (log scale)</text>"#,
        left + pw / 2.0,
        h - 14.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">suite wall time, median (log scale)</text>"#,
        top + ph / 2.0
    );
    // Lines, points, value labels (a label that would overlap one already
    // placed at the same N goes below its point instead).
    let mut placed: Vec<(f64, f64)> = Vec::new();
    for s in series {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(n, t)| format!("{:.1},{:.1}", x(n), y(t)))
            .collect();
        if path.len() > 1 {
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.2"{}/>"#,
                path.join(" "),
                s.color,
                dash_attr(s.dash)
            );
        }
        for &(n, t) in &s.points {
            let _ = writeln!(svg, "{}", marker(s.marker, x(n), y(t), 4.0, s.color));
            // Above the point, else below, else further away.
            let lx = x(n) + 6.0;
            let free = |ly: f64| {
                !placed
                    .iter()
                    .any(|&(px, py)| (px - lx).abs() < 1.0 && (py - ly).abs() < 11.0)
            };
            let ly = [-6.0, 15.0, -17.0, 26.0, -28.0, 37.0]
                .into_iter()
                .map(|dy| y(t) + dy)
                .find(|&ly| free(ly))
                .unwrap_or(y(t) - 6.0);
            placed.push((lx, ly));
            let _ = writeln!(
                svg,
                r#"<text x="{lx:.1}" y="{ly:.1}" font-size="10" fill="{}">{}</text>"#,
                s.color,
                fmt_secs(t)
            );
        }
    }
    // Legend.
    let lx = left + pw + 18.0;
    for (i, s) in series.iter().enumerate() {
        let ly = top + 10.0 + 22.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{}" stroke-width="3"{}/>"#,
            lx + 22.0,
            s.color,
            dash_attr(s.dash)
        );
        let _ = writeln!(svg, "{}", marker(s.marker, lx + 11.0, ly, 3.5, s.color));
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 28.0,
            ly + 4.0,
            esc(&s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}
