//! `serve --watch`: reload the project when one of its files changes.
//!
//! The decision of what a reload does lives in [`crate::server::Reloader`]; this module only
//! notices changes. It polls modification times twice a second: the project's entry file and
//! every `.edn` file under its root folder (imports resolve there), skipping hidden folders and
//! `target`, `node_modules` and `data`. A development project has a handful of files, so a poll
//! costs little, and it needs no file-notification dependency whose behaviour differs between
//! platforms and editors (which often replace a file rather than write it).
//!
//! ```no_run
//! # async fn f(reloader: fhirgate::server::Reloader) {
//! fhirgate::reload::watch(reloader, "core.edn".into(), ".".into(), |outcome| {
//!     println!("{outcome:?}");
//! })
//! .await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::server::{ReloadError, Reloader};

/// How deep below the root folder `.edn` files are looked for.
const MAX_DEPTH: usize = 6;
/// At most this many files are watched.
const MAX_FILES: usize = 2_000;

/// Poll the project's files; after a change (settled for one poll), reload and hand the outcome
/// to `report`. Runs until the process ends.
pub async fn watch(
    reloader: Reloader,
    config: PathBuf,
    root_dir: PathBuf,
    report: impl Fn(Result<String, ReloadError>),
) {
    let mut seen = snapshot(&config, &root_dir);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = snapshot(&config, &root_dir);
        if now == seen {
            continue;
        }
        // an editor may write in several steps: wait until two polls agree
        tokio::time::sleep(Duration::from_millis(200)).await;
        let settled = snapshot(&config, &root_dir);
        if settled != now {
            continue;
        }
        seen = settled;
        report(reloader.reload(&config).await);
    }
}

/// Modification times of the watched files.
fn snapshot(config: &Path, root: &Path) -> BTreeMap<PathBuf, Option<SystemTime>> {
    let mut out = BTreeMap::new();
    out.insert(config.to_path_buf(), modified(config));
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if out.len() >= MAX_FILES {
                return out;
            }
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let skip = name.starts_with('.')
                    || matches!(name.as_ref(), "target" | "node_modules" | "data");
                if !skip && depth < MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
            } else if name.ends_with(".edn") {
                let m = modified(&path);
                out.insert(path, m);
            }
        }
    }
    out
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_sees_edn_files_and_skips_data_and_hidden_folders() {
        let dir = std::env::temp_dir().join(format!("fhirgate-watch-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::write(dir.join("core.edn"), "{}").unwrap();
        std::fs::write(dir.join("lib/extra.edn"), "{}").unwrap();
        std::fs::write(dir.join("data/x.edn"), "{}").unwrap();
        std::fs::write(dir.join(".git/y.edn"), "{}").unwrap();
        std::fs::write(dir.join("notes.txt"), "").unwrap();
        let snap = snapshot(&dir.join("core.edn"), &dir);
        let names: Vec<_> = snap
            .keys()
            .map(|p| p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["core.edn", "lib/extra.edn"]);
        assert!(snap.values().all(Option::is_some));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
