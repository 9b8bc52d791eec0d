//! `watch_config`: reload when the configuration file or a `descriptor_config` file changes,
//! through the `notify` crate (inotify, kqueue, FSEvents, ...; its polling watcher when the
//! platform's cannot be set up) and its debouncer.
//!
//! What is watched: the config file's directory (not the file: editors replace it, and a
//! Kubernetes ConfigMap swaps its `..data` symlink), the directory of the file a symlinked
//! config points to, and `descriptor_config` (a directory recursively, a file through its
//! directory). The set follows the running configuration (a reload may change
//! `descriptor_config`).
//!
//! An event that names one of the configuration's paths (or a `..`-prefixed ConfigMap entry)
//! makes the watcher read the files again; it reloads only if their content differs from what it
//! last read, so touching a file, or writing some other file in the same directory (a log),
//! reloads nothing. A file caught mid-replacement (unreadable) is read again a little later.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_mini::notify::{self, RecursiveMode};
use notify_debouncer_mini::{DebounceEventResult, Debouncer};
use tokio::sync::mpsc;

use crate::state::AppState;

/// Events closer together than this are one change.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Interval of the polling fallback.
const POLL: Duration = Duration::from_millis(500);
/// How often the watched set is compared with the running configuration's.
const RESYNC: Duration = Duration::from_secs(1);

/// What the configuration consists of on disk, as last read.
#[derive(Debug, PartialEq, Eq)]
struct Contents {
    config: Option<Vec<u8>>,
    descriptors: Option<Result<Vec<(String, String)>, String>>,
}

/// The paths of the running configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Targets {
    config: PathBuf,
    /// The file a symlinked config resolves to.
    config_target: Option<PathBuf>,
    descriptors: Option<PathBuf>,
    /// Directory -> recursive.
    watch: BTreeMap<PathBuf, bool>,
}

impl Targets {
    fn of(state: &AppState, config: &Path) -> Self {
        let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
        let rt = state.runtime();
        let descriptors = state
            .source
            .descriptor_path(&rt.loaded)
            .map(|p| std::path::absolute(&p).unwrap_or(p));
        let config_target = std::fs::canonicalize(&config).ok().filter(|t| *t != config);
        let mut watch = BTreeMap::new();
        let mut add = |dir: &Path, recursive: bool| {
            let r = watch.entry(dir.to_path_buf()).or_insert(recursive);
            *r |= recursive;
        };
        for f in [Some(&config), config_target.as_ref()]
            .into_iter()
            .flatten()
        {
            if let Some(dir) = f.parent() {
                add(dir, false);
            }
        }
        if let Some(d) = &descriptors {
            if d.is_dir() {
                add(d, true);
            } else if let Some(dir) = d.parent() {
                add(dir, false);
            }
        }
        Self {
            config,
            config_target,
            descriptors,
            watch,
        }
    }

    /// Whether an event on `p` may have changed the configuration.
    fn concerns(&self, p: &Path) -> bool {
        p == self.config
            || self.config_target.as_deref() == Some(p)
            || self
                .descriptors
                .as_deref()
                .is_some_and(|d| p.starts_with(d))
            || p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".."))
    }

    fn read(&self) -> Contents {
        Contents {
            config: std::fs::read(&self.config).ok(),
            descriptors: self
                .descriptors
                .as_deref()
                .map(crate::descriptor_files::read),
        }
    }
}

impl Contents {
    /// Every file could be read (a replacement is not caught half done).
    fn readable(&self) -> bool {
        self.config.is_some() && !matches!(self.descriptors, Some(Err(_)))
    }
}

type Watcher = Box<dyn FnMut(&Path, bool) -> notify::Result<()> + Send>;

/// The platform's watcher, else the polling one; events go to `tx`.
fn watcher(
    tx: mpsc::UnboundedSender<Vec<PathBuf>>,
) -> notify::Result<(Box<dyn std::any::Any + Send>, Watcher, Watcher)> {
    let handler = move |res: DebounceEventResult| match res {
        Ok(events) => {
            let _ = tx.send(events.into_iter().map(|e| e.path).collect());
        }
        Err(e) => tracing::warn!(error = %e, "config watch error"),
    };
    match notify_debouncer_mini::new_debouncer(DEBOUNCE, handler.clone()) {
        Ok(d) => Ok(split(d)),
        Err(e) => {
            tracing::warn!(error = %e, "no file-system notifications; polling the config files");
            let cfg = notify_debouncer_mini::Config::default()
                .with_timeout(DEBOUNCE)
                .with_notify_config(
                    notify::Config::default()
                        .with_poll_interval(POLL)
                        .with_compare_contents(true),
                );
            let d =
                notify_debouncer_mini::new_debouncer_opt::<_, notify::PollWatcher>(cfg, handler)?;
            Ok(split(d))
        }
    }
}

/// A debouncer kept alive as `Any`, with closures adding and removing its watches.
fn split<W: notify::Watcher + Send + 'static>(
    d: Debouncer<W>,
) -> (Box<dyn std::any::Any + Send>, Watcher, Watcher) {
    let d = Arc::new(parking_lot::Mutex::new(d));
    let (a, b) = (d.clone(), d.clone());
    let add: Watcher = Box::new(move |p: &Path, recursive: bool| {
        let mode = if recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        a.lock().watcher().watch(p, mode)
    });
    let remove: Watcher = Box::new(move |p: &Path, _| b.lock().watcher().unwatch(p));
    (Box::new(d), add, remove)
}

/// Watch the configuration of `state` (read from `config`) until the process ends.
pub fn spawn(state: Arc<AppState>, config: PathBuf) {
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (_keep, mut add, mut remove) = match watcher(tx) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the config files; reload with SIGHUP");
                return;
            }
        };
        let mut targets = Targets::of(&state, &config);
        sync(&mut add, &mut remove, None, &targets);
        let mut last = targets.read();
        let mut generation = state.runtime().generation;
        let mut tick = tokio::time::interval(RESYNC);
        loop {
            let paths = tokio::select! {
                got = rx.recv() => match got {
                    Some(p) => p,
                    None => return,
                },
                _ = tick.tick() => {
                    // a SIGHUP reload may have changed `descriptor_config`
                    let g = state.runtime().generation;
                    if g != generation {
                        generation = g;
                        let next = Targets::of(&state, &config);
                        sync(&mut add, &mut remove, Some(&targets), &next);
                        targets = next;
                    }
                    continue;
                }
            };
            if !paths.iter().any(|p| targets.concerns(p)) {
                continue;
            }
            let mut now = targets.read();
            for _ in 0..10 {
                if now.readable() {
                    break;
                }
                // mid-replacement: read again shortly
                tokio::time::sleep(DEBOUNCE).await;
                now = targets.read();
            }
            if !now.readable() || now == last {
                continue;
            }
            if !state.runtime().loaded.service.watch_config {
                last = now;
                continue;
            }
            crate::reload_and_log(&state, "file change").await;
            generation = state.runtime().generation;
            let next = Targets::of(&state, &config);
            sync(&mut add, &mut remove, Some(&targets), &next);
            targets = next;
            // the reload may have changed `descriptor_config` itself
            last = targets.read();
        }
    });
}

/// Make the watched directories those of `next`.
fn sync(add: &mut Watcher, remove: &mut Watcher, current: Option<&Targets>, next: &Targets) {
    if let Some(cur) = current {
        if cur.watch == next.watch {
            return;
        }
        for (dir, recursive) in &cur.watch {
            if next.watch.get(dir) != Some(recursive) {
                let _ = remove(dir, *recursive);
            }
        }
    }
    for (dir, recursive) in &next.watch {
        if current.is_some_and(|c| c.watch.get(dir) == Some(recursive)) {
            continue;
        }
        if let Err(e) = add(dir, *recursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch; reload with SIGHUP");
        }
    }
}
