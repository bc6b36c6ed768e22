//! How `sluice-worker run` shows progress: on a terminal, one live line rewritten in place (with a
//! bar over the input to drain for `availableNow`/`once`); in a pipe or a log file, one plain line
//! per trigger. Log lines (tracing) and console-sink tables are unaffected.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sluice_worker::progress::StreamingQueryProgress;

/// Progress output for one run.
pub enum Display {
    /// stderr is a terminal: a live bar or spinner line.
    Live {
        bar: ProgressBar,
        total: Option<u64>,
    },
    /// Not a terminal: plain lines.
    Lines,
}

impl Display {
    /// Chooses by whether stderr is a terminal. `drain_total` is the input a bounded trigger will
    /// drain (files or rows), when known: then a bar is drawn.
    pub fn new(drain_total: Option<u64>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::Lines;
        }
        let bar = match drain_total {
            Some(total) => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template("{bar:20} {pos}/{len} to drain | {wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("█▉▊▋▌▍▎▏ "),
                );
                bar
            }
            None => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar
            }
        };
        bar.set_message("waiting for the first batch");
        bar.tick();
        Self::Live {
            bar,
            total: drain_total,
        }
    }

    /// Shows one trigger's progress.
    pub fn update(&self, progress: &StreamingQueryProgress) {
        match self {
            Self::Lines => eprintln!("{}", progress.line()),
            Self::Live { bar, total } => {
                if let Some(total) = total {
                    let backlog: u64 = progress.sources.iter().map(|s| s.backlog).sum();
                    bar.set_position(total.saturating_sub(backlog));
                }
                bar.set_message(progress.line());
            }
        }
    }

    /// Prints a line above the live line (or plainly).
    pub fn println(&self, line: &str) {
        match self {
            Self::Lines => eprintln!("{line}"),
            Self::Live { bar, .. } => bar.println(line),
        }
    }

    /// Leaves the last live line on screen.
    pub fn finish(&self) {
        if let Self::Live { bar, .. } = self {
            bar.finish();
        }
    }
}
