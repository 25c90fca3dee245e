//! What a run leaves behind besides stdout: the machine it ran on, and the JSON and
//! HTML reports in the output folder.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::report::{RunReport, TargetMedians};
use super::scenario::Scenario;
use super::thresholds::{Thresholds, Violation};

/// What the machine is, for the report.
#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    /// CPUs this process may use.
    pub nproc: usize,
    /// CPU model.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Probes this machine.
    pub(crate) fn probe() -> Machine {
        let (cpu_model, kernel) = super::procfs::machine();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            kernel,
        }
    }

    /// One line for reports.
    pub(crate) fn line(&self) -> String {
        format!("{} × {}, Linux {}", self.nproc, self.cpu_model, self.kernel)
    }
}

/// The JSON report.
#[derive(Debug, Serialize)]
pub(crate) struct JsonReport<'a> {
    /// The tool's name.
    pub tool: &'static str,
    /// The tool's version.
    pub version: &'static str,
    /// The command line.
    pub command: Vec<String>,
    /// When it ran (RFC 3339, UTC).
    pub date: String,
    /// The machine.
    pub machine: &'a Machine,
    /// The scenario.
    pub scenario: &'a Scenario,
    /// The limits set.
    pub thresholds: &'a Thresholds,
    /// Every limit held and every run was done.
    pub passed: bool,
    /// The limits broken.
    pub violations: &'a [Violation],
    /// Medians per target.
    pub medians: &'a [TargetMedians],
    /// The side-by-side table.
    pub comparison_markdown: String,
    /// Every run.
    pub runs: &'a [RunReport],
}

/// Writes report.json and report.html into `dir`.
pub(crate) fn write_reports(
    dir: &Path,
    json: &JsonReport<'_>,
    html_page: &str,
) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let jp = dir.join("report.json");
    let text = serde_json::to_string_pretty(json).map_err(|e| e.to_string())?;
    std::fs::write(&jp, text).map_err(|e| format!("{}: {e}", jp.display()))?;
    let hp = dir.join("report.html");
    std::fs::write(&hp, html_page).map_err(|e| format!("{}: {e}", hp.display()))?;
    Ok((jp, hp))
}
