//! Progress bars on stderr, only ever created when stderr is a terminal.

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::reporter::Reporter;

pub struct BarReporter {
    multi: MultiProgress,
    bar: Mutex<Option<ProgressBar>>,
    items: Mutex<HashMap<u64, ProgressBar>>,
    total: Mutex<Option<ProgressBar>>,
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
        .expect("the template is valid")
        .progress_chars("=> ")
}

impl BarReporter {
    pub fn new() -> Self {
        BarReporter {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bar: Mutex::new(None),
            items: Mutex::new(HashMap::new()),
            total: Mutex::new(None),
        }
    }

    /// The bar of item `id`, while it runs (a clone shares the bar).
    fn item(&self, id: u64) -> Option<ProgressBar> {
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }
}

impl Reporter for BarReporter {
    fn start(&self, what: &str, total: Option<u64>) {
        let bar = self.multi.add(match total {
            Some(total) => ProgressBar::new(total).with_style(bytes_style()),
            None => ProgressBar::new_spinner(),
        });
        bar.set_message(what.to_string());
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
    }

    fn advance(&self, delta: u64) {
        if let Some(bar) = &*self.bar.lock().unwrap_or_else(|e| e.into_inner()) {
            bar.inc(delta);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
        }
    }

    fn item_start(&self, id: u64, label: &str, total: Option<u64>) {
        let bar = self.multi.add(match total {
            Some(total) => ProgressBar::new(total).with_style(bytes_style()),
            None => ProgressBar::new_spinner(),
        });
        bar.set_message(label.to_string());
        let mut overall = self.total.lock().unwrap_or_else(|e| e.into_inner());
        let overall = overall.get_or_insert_with(|| {
            let bar = self
                .multi
                .add(ProgressBar::new(0).with_style(bytes_style()));
            bar.set_message("total");
            bar
        });
        overall.inc_length(total.unwrap_or(0));
        self.items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, bar);
    }

    fn item_length(&self, id: u64, total: u64) {
        if let Some(bar) = self.item(id) {
            if bar.length().is_none() {
                bar.set_style(bytes_style());
                bar.set_length(total);
                if let Some(overall) = &*self.total.lock().unwrap_or_else(|e| e.into_inner()) {
                    overall.inc_length(total);
                }
            }
        }
    }

    fn item_advance(&self, id: u64, delta: u64) {
        if let Some(bar) = self.item(id) {
            bar.inc(delta);
        }
        if let Some(bar) = &*self.total.lock().unwrap_or_else(|e| e.into_inner()) {
            bar.inc(delta);
        }
    }

    fn item_finish(&self, id: u64) {
        if let Some(bar) = self
            .items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            bar.finish_and_clear();
        }
    }
}
