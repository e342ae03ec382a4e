//! Progress bars for loading and saving, drawn on stderr when it is a terminal only (never in
//! pipes or CI logs).

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use patch_checkpoint::{Progress, Stage};

/// A callback drawing one bar per stage, or `None` when stderr is not a terminal.
pub fn bar() -> Option<Progress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let current: Mutex<Option<(Stage, ProgressBar)>> = Mutex::new(None);
    Some(Progress::new(move |event| {
        let mut current = current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = !matches!(&*current, Some((stage, _)) if *stage == event.stage);
        if fresh {
            if let Some((_, old)) = current.take() {
                old.finish_and_clear();
            }
            let bar = ProgressBar::new(event.total);
            let label = match event.stage {
                Stage::Load => "loading",
                Stage::Save => "saving ",
            };
            if let Ok(style) = ProgressStyle::with_template(&format!(
                "{label} {{bar:40}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} {{eta}}"
            )) {
                bar.set_style(style);
            }
            *current = Some((event.stage, bar));
        }
        if let Some((_, bar)) = &*current {
            bar.set_length(event.total);
            bar.set_position(event.done);
            if event.done >= event.total {
                bar.finish_and_clear();
            }
        }
    }))
}
