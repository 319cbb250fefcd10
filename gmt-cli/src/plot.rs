//! The end-of-run plot (SVG, `plotters`): training and evaluation loss per step, and the
//! fraction of gradient entries kept in each decoder layer.

use std::ops::Range;
use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::types::{RangedCoordf64, RangedCoordu64};
use plotters::prelude::*;

use crate::metrics::StepMetrics;

/// A chart of values per optimizer step (`0..steps` by `y`), its mesh drawn.
pub fn per_step_chart<'a, DB: DrawingBackend + 'a>(
    area: &'a DrawingArea<DB, Shift>,
    caption: &str,
    steps: u64,
    y: Range<f64>,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordu64, RangedCoordf64>>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0u64..steps, y)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(chart)
}

/// Draws `metrics` into an SVG file at `path`.
pub fn plot_run(metrics: &[StepMetrics], path: &Path) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw {}: {e}", path.display());
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(600);

    let steps = metrics.last().map_or(1, |m| m.step.max(1));
    let losses = metrics
        .iter()
        .map(|m| m.loss)
        .chain(metrics.iter().filter_map(|m| m.eval_loss));
    let (lo, hi) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo * 0.95, hi * 1.05)
    } else {
        (0.0, 1.0)
    };
    let mut chart = per_step_chart(&left, "loss", steps, lo..hi).map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            metrics.iter().map(|m| (m.step, m.loss)),
            &BLUE,
        ))
        .map_err(|e| err(&e))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    let eval: Vec<(u64, f64)> = metrics
        .iter()
        .filter_map(|m| m.eval_loss.map(|l| (m.step, l)))
        .collect();
    chart
        .draw_series(LineSeries::new(eval.clone(), &RED))
        .map_err(|e| err(&e))?
        .label("eval")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_series(eval.iter().map(|&p| Circle::new(p, 3, RED.filled())))
        .map_err(|e| err(&e))?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;

    // Mean over the run of each layer's kept fraction.
    let layers = metrics.first().map_or(0, |m| m.layer_kept.len());
    let mean: Vec<(usize, f64)> = (0..layers)
        .map(|l| {
            let sum: f64 = metrics.iter().filter_map(|m| m.layer_kept.get(l)).sum();
            (l, sum / metrics.len().max(1) as f64)
        })
        .collect();
    let last: Vec<(usize, f64)> = metrics
        .last()
        .map(|m| m.layer_kept.iter().copied().enumerate().collect())
        .unwrap_or_default();
    let mut chart = ChartBuilder::on(&right)
        .caption("kept fraction per layer", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0usize..layers.max(1), 0.0..1.05f64)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("layer")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(mean, &BLUE))
        .map_err(|e| err(&e))?
        .label("mean over run")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(last, &GREEN))
        .map_err(|e| err(&e))?
        .label("last step")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
