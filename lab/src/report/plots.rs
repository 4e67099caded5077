//! SVG plots of a run (plotters' SVG backend): the TTFT distribution of every cell, wire
//! and application bytes per token, wire bytes per token by layer, and the
//! token-arrival timeline of one prompt.

use crate::anatomy::Layer;
use crate::metrics::{CellResult, Run, metric};
use anyhow::{Result, anyhow};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Line colours by the cell's position: the ten of matplotlib's `tab10`, then their ten
/// lighter partners (`tab20`), so that up to 20 cells (`topologies/wt-stacks.yaml` has
/// 18) each have a colour of their own.
const PALETTE: [RGBColor; 20] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(174, 199, 232),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(255, 152, 150),
    RGBColor(197, 176, 213),
    RGBColor(196, 156, 148),
    RGBColor(247, 182, 210),
    RGBColor(199, 199, 199),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
];

fn label(c: &CellResult) -> String {
    format!("{}@{}", c.cell.name, c.cell.profile)
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// Draws the legend of `chart`'s labelled series at `pos`.
fn legend<'a, 'b: 'a>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    pos: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(pos)
        .draw()
        .map_err(err)
}

/// A line's label, the position of its cell in the run, and its points.
type Series = (String, usize, Vec<(f64, f64)>);

/// A chart of lines, one per named series, with a legend in the lower right. Each
/// series carries the position of its cell in the run, which picks its colour, so a
/// cell has the same colour in every plot even when another plot leaves a cell out.
fn line_chart(
    caption: &str,
    (x_desc, y_desc): (&str, &str),
    (x_max, y_max): (f64, f64),
    series: Vec<Series>,
) -> Result<String> {
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (name, i, pts) in series {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(err)?;
    drop(chart);
    drop(root);
    Ok(svg)
}

/// TTFT cumulative distribution, one line per cell.
pub fn ttft(run: &Run) -> Result<String> {
    let series: Vec<Series> = run
        .cells
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let mut v: Vec<f64> = c.records.iter().filter_map(|r| r.ttft_ms).collect();
            v.sort_by(f64::total_cmp);
            let n = v.len() as f64;
            let mut pts = vec![(0.0, 0.0)];
            for (k, x) in v.iter().enumerate() {
                pts.push((*x, k as f64 / n));
                pts.push((*x, (k + 1) as f64 / n));
            }
            (!v.is_empty()).then(|| (label(c), i, pts))
        })
        .collect();
    let max = series
        .iter()
        .flat_map(|(_, _, p)| p.last().map(|p| p.0))
        .fold(1.0, f64::max);
    line_chart(
        &format!(
            "{}: time to first token, cumulative distribution (CDF) per cell",
            run.name
        ),
        (
            "TTFT (ms): from sending the prompt to its first token",
            "share of prompts with TTFT <= x",
        ),
        (max * 1.05, 1.0),
        series,
    )
}

/// A bar chart's frame: `names` along x (one bar slot each, and `spare` empty slots on
/// the right for a legend), bytes per token up to `max` along y.
fn bar_frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: String,
    names: &[String],
    spare: usize,
    y_desc: &str,
    max: f64,
) -> Result<ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>> {
    root.fill(&WHITE).map_err(err)?;
    let n = names.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(60)
        // Head room above the tallest bar for its value and the legend.
        .build_cartesian_2d(-0.5..(n + spare) as f64 - 0.5, 0.0..max * 1.3)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + spare)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    Ok(chart)
}

/// Writes each bar's value above it: `(x of the bar's centre, height)`.
fn values<'a, 'b>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    bars: &[(f64, f64)],
) -> Result<()> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let style = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(bars.iter().map(|&(x, v)| {
            Text::new(
                if v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                },
                (x, v),
                style.clone(),
            )
        }))
        .map_err(err)?;
    Ok(())
}

/// One series of a bar chart: in each slot, a bar from `.0` to `.1` up the y axis,
/// between `x.0` and `x.1` off the slot's centre.
struct Bars {
    label: String,
    color: RGBColor,
    x: (f64, f64),
    bars: Vec<(f64, f64)>,
}

/// A bar chart's picture: its size, caption, a slot per name (and `spare` empty slots
/// for the legend), and its y axis up to `max`.
struct BarChart<'a> {
    size: (u32, u32),
    caption: String,
    names: &'a [String],
    spare: usize,
    y_desc: &'a str,
    max: f64,
}

/// A bar chart as an SVG: the series drawn in order, a value written at each of
/// `values_at` (`(x, height)`), the legend upper right.
fn bar_chart(c: BarChart, series: Vec<Bars>, values_at: &[(f64, f64)]) -> Result<String> {
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, c.size).into_drawing_area();
    let mut chart = bar_frame(&root, c.caption, c.names, c.spare, c.y_desc, c.max)?;
    for s in series {
        let color = s.color;
        chart
            .draw_series(s.bars.iter().enumerate().map(|(i, &(lo, hi))| {
                Rectangle::new(
                    [(i as f64 + s.x.0, lo), (i as f64 + s.x.1, hi)],
                    color.filled(),
                )
            }))
            .map_err(err)?
            .label(s.label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    values(&mut chart, values_at)?;
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(err)?;
    drop(chart);
    drop(root);
    Ok(svg)
}

/// Wire and application bytes per token, two bars per cell.
pub fn bytes_per_token(run: &Run) -> Result<String> {
    let rows: Vec<(String, f64, f64)> = run
        .cells
        .iter()
        .map(|c| {
            let ap = c.cell.name.clone();
            let p = &c.cell.profile;
            (
                label(c),
                metric(run, &ap, p, "wire_bytes_per_token").unwrap_or(0.0),
                metric(run, &ap, p, "bytes_per_token").unwrap_or(0.0),
            )
        })
        .collect();
    let max = rows.iter().map(|r| r.1.max(r.2)).fold(1.0, f64::max);
    let n = rows.len().max(1);
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let series = vec![
        Bars {
            label: "wire (L2, both directions)".into(),
            color: PALETTE[0],
            x: (-0.4, -0.02),
            bars: rows.iter().map(|r| (0.0, r.1)).collect(),
        },
        Bars {
            label: "application".into(),
            color: PALETTE[1],
            x: (0.02, 0.4),
            bars: rows.iter().map(|r| (0.0, r.2)).collect(),
        },
    ];
    let labels: Vec<(f64, f64)> = rows
        .iter()
        .enumerate()
        .flat_map(|(i, r)| [(i as f64 - 0.21, r.1), (i as f64 + 0.21, r.2)])
        .collect();
    let chart = BarChart {
        size: (140 + 110 * n as u32, 560),
        caption: format!("{}: bytes per token", run.name),
        names: &names,
        spare: 0,
        y_desc: "bytes per token",
        max,
    };
    bar_chart(chart, series, &labels)
}

/// The anatomy plot's colour for each layer, in [`Layer::ALL`]'s order.
const LAYER_COLORS: [RGBColor; 13] = [
    RGBColor(127, 127, 127),
    RGBColor(174, 199, 232),
    RGBColor(31, 119, 180),
    RGBColor(255, 187, 120),
    RGBColor(188, 189, 34),
    RGBColor(214, 39, 40),
    RGBColor(255, 152, 150),
    RGBColor(148, 103, 189),
    RGBColor(197, 176, 213),
    RGBColor(44, 160, 44),
    RGBColor(140, 86, 75),
    RGBColor(0, 0, 0),
    RGBColor(227, 119, 194),
];

/// Wire bytes per token of every cell, stacked by layer (both directions, at the
/// client's interface): the anatomy table as a picture.
pub fn anatomy(run: &Run) -> Result<String> {
    let rows: Vec<(String, Vec<f64>)> = run
        .cells
        .iter()
        .filter_map(|c| {
            let a = c.anatomy.as_ref()?;
            let t = crate::metrics::tokens(c);
            (t > 0).then(|| {
                let l = a.client.up.layers.plus(&a.client.down.layers);
                (
                    label(c),
                    Layer::ALL
                        .iter()
                        .map(|&x| l.get(x) as f64 / t as f64)
                        .collect(),
                )
            })
        })
        .collect();
    let max = rows
        .iter()
        .map(|r| r.1.iter().sum::<f64>())
        .fold(1.0, f64::max);
    let n = rows.len().max(1);
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let series = Layer::ALL
        .iter()
        .enumerate()
        .filter(|&(k, _)| rows.iter().any(|r| r.1[k] != 0.0))
        .map(|(k, layer)| Bars {
            label: layer.heading().to_string(),
            color: LAYER_COLORS[k],
            x: (-0.35, 0.35),
            bars: rows
                .iter()
                .map(|r| {
                    let below: f64 = r.1[..k].iter().sum();
                    (below, below + r.1[k])
                })
                .collect(),
        })
        .collect();
    let totals: Vec<(f64, f64)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (i as f64, r.1.iter().sum()))
        .collect();
    let chart = BarChart {
        size: (260 + 140 * n as u32, 600),
        caption: format!("{}: wire bytes per token by layer", run.name),
        names: &names,
        spare: 2,
        y_desc: "bytes per token (both directions, L2)",
        max,
    };
    bar_chart(chart, series, &totals)
}

/// When each token of prompt `index` arrived, one line per cell.
pub fn timeline(run: &Run, index: usize) -> Result<String> {
    let series: Vec<Series> = run
        .cells
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let r = c
                .records
                .iter()
                .find(|r| r.index == index && r.error.is_none())?;
            let pts = r
                .token_ms
                .iter()
                .enumerate()
                .map(|(k, t)| (*t, (k + 1) as f64))
                .collect();
            Some((label(c), i, pts))
        })
        .collect();
    let prompt = run
        .cells
        .iter()
        .flat_map(|c| c.records.iter())
        .find(|r| r.index == index)
        .map(|r| r.prompt.clone())
        .unwrap_or_default();
    let tmax = series
        .iter()
        .flat_map(|(_, _, p)| p.last().map(|p| p.0))
        .fold(1.0, f64::max);
    let nmax = series.iter().map(|(_, _, p)| p.len()).max().unwrap_or(1) as f64;
    line_chart(
        &format!(
            "{}: token arrivals, prompt {} ({prompt})",
            run.name,
            index + 1
        ),
        ("time since the request (ms)", "tokens received"),
        (tmax * 1.05, nmax),
        series,
    )
}

/// A chart against the load level (log scale: levels go 100, 1000, 10000), one line per
/// named series, points marked.
/// A line of a level chart: its label, its cell (which picks the colour), whether it is
/// drawn dashed (a second figure of the same cell, such as p99 beside p50), its points.
type LevelSeries = (String, usize, bool, Vec<(f64, f64)>);

fn level_chart(
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    series: Vec<LevelSeries>,
) -> Result<String> {
    let xs = series.iter().flat_map(|(_, _, _, p)| p.iter().map(|p| p.0));
    let (lo, hi) = xs
        .clone()
        .fold((f64::MAX, 1.0f64), |(l, h), x| (l.min(x), h.max(x)));
    // A tick at every level, so that each point's level can be read (a log axis's own
    // ticks fall on powers of ten only: 50,000 beside 100,000 had none).
    let mut ticks: Vec<f64> = xs.collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let (lo, hi) = ((lo.min(hi) / 2.0).max(0.5), hi * 2.0);
    let y_max = series
        .iter()
        .flat_map(|(_, _, _, p)| p.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale().with_key_points(ticks), 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(8)
        .x_label_formatter(&|x| {
            if *x >= 10.0 {
                format!("{x:.0}")
            } else {
                lab_clients::load::fmt_rate((x * 10.0).round() / 10.0)
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    for (name, i, dashed, pts) in series {
        let color = PALETTE[i % PALETTE.len()];
        let drawn = if dashed {
            chart.draw_series(DashedLineSeries::new(
                pts.clone(),
                6,
                4,
                color.stroke_width(2),
            ))
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
        };
        drawn.map_err(err)?.label(name).legend(move |(x, y)| {
            if dashed {
                PathElement::new(vec![(x, y), (x + 7, y)], color.stroke_width(2))
            } else {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            }
        });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    drop(chart);
    drop(root);
    Ok(svg)
}

/// A figure of a load level, if it has one.
type LevelFigure<'a> = &'a dyn Fn(&crate::metrics::load::LevelResult) -> Option<f64>;

/// Series of a load run, one per cell and `what` (a label and a figure of a level): a
/// colour per cell, the second and later figures dashed.
fn load_series(run: &Run, what: &[(&str, LevelFigure)]) -> Vec<LevelSeries> {
    let mut out = Vec::new();
    for (i, c) in run.cells.iter().enumerate() {
        let Some(l) = &c.load else { continue };
        for (k, (name, f)) in what.iter().enumerate() {
            let mut pts: Vec<(f64, f64)> = l
                .levels
                .iter()
                .filter_map(|x| Some((level_x(&x.summary), f(x)?)))
                .collect();
            // An open loop's search runs its rates out of order.
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !pts.is_empty() {
                out.push((format!("{} {name}", label(c)), i, k > 0, pts));
            }
        }
    }
    out
}

/// Where a level sits on the x axis: its streams, or an open loop's rate.
fn level_x(s: &lab_clients::load::LevelSummary) -> f64 {
    match &s.open {
        Some(o) => o.rate.unwrap_or(1.0),
        None => f64::from(s.level),
    }
}

/// The x axis of a load test's charts.
fn level_axis(run: &Run) -> &'static str {
    if is_open(run) {
        "requests per second (the open loop's rate; log scale)"
    } else {
        "concurrent streams (the level; log scale)"
    }
}

fn is_open(run: &Run) -> bool {
    run.cells
        .iter()
        .filter_map(|c| c.load.as_ref())
        .flat_map(|l| &l.levels)
        .any(|x| x.summary.open.is_some())
}

/// Goodput (good requests per second) and request throughput against an open loop's
/// rate, per cell.
pub fn load_goodput(run: &Run) -> Result<String> {
    let series = load_series(
        run,
        &[
            ("goodput", &|l| Some(l.summary.slo?.goodput_per_s)),
            ("throughput", &|l| Some(l.summary.requests_per_s)),
        ],
    );
    level_chart(
        &format!("{}: goodput against the offered rate", run.name),
        level_axis(run),
        "requests/s: good under the SLOs (solid), completed (dashed)",
        series,
    )
}

/// TTFT p50 and p99 against the level, per cell of a load test.
pub fn load_ttft(run: &Run) -> Result<String> {
    let series = load_series(
        run,
        &[
            ("p50", &|l| l.summary.ttft_ms.p50),
            ("p99", &|l| l.summary.ttft_ms.p99),
        ],
    );
    level_chart(
        &format!("{}: time to first token against the load", run.name),
        level_axis(run),
        "TTFT (ms), p50 (solid) and p99 (dashed) of the level's streams",
        series,
    )
}

/// The server's mean RSS over each level's hold, per cell of a load test.
pub fn load_rss(run: &Run) -> Result<String> {
    let series = load_series(
        run,
        &[("RSS", &|l| {
            l.server.as_ref().map(|r| r.rss_kib_mean / 1024.0)
        })],
    );
    level_chart(
        &format!("{}: server memory against the load", run.name),
        level_axis(run),
        "server RSS (MiB), mean over the hold",
        series,
    )
}

/// The plots, by file name; `prompt` picks the timeline's prompt (0 = the first). The
/// anatomy plot is there when some cell has an anatomy. A load test has its own two:
/// TTFT p50/p99 and server RSS against the level (an open loop's rate), and an open
/// loop a third: goodput and throughput against the rate. The RSS plot is left out
/// when no level has the server's samples (levels that end by cycles have no hold to
/// sample over): it would be an empty chart.
pub fn all(run: &Run, prompt: usize) -> Result<Vec<(&'static str, String)>> {
    if run.cells.iter().any(|c| c.load.is_some()) {
        let mut v = vec![("load_ttft.svg", load_ttft(run)?)];
        let sampled = run
            .cells
            .iter()
            .filter_map(|c| c.load.as_ref())
            .flat_map(|l| &l.levels)
            .any(|x| x.server.is_some());
        if sampled {
            v.push(("load_rss.svg", load_rss(run)?));
        }
        if is_open(run) {
            v.push(("load_goodput.svg", load_goodput(run)?));
        }
        return Ok(v);
    }
    let mut v = vec![
        ("ttft.svg", ttft(run)?),
        ("bytes_per_token.svg", bytes_per_token(run)?),
        ("timeline.svg", timeline(run, prompt)?),
    ];
    if run.cells.iter().any(|c| c.anatomy.is_some()) {
        v.push(("anatomy.svg", anatomy(run)?));
    }
    Ok(v)
}
