use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// Where project files come from: the file system, or memory (tests, fuzzing, benches).
pub trait Sources {
    fn read(&self, path: &Path) -> io::Result<String>;

    /// Whether `path` names a readable file (seed `:files` are checked, not read, at load).
    fn exists(&self, path: &Path) -> bool {
        self.read(path).is_ok()
    }
}

/// Reads project files from disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsSources;

impl Sources for FsSources {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.is_file()
    }
}

/// Project files held in memory, by path.
#[derive(Debug, Clone, Default)]
pub struct MemorySources {
    files: HashMap<PathBuf, String>,
}

impl MemorySources {
    pub fn new<P: Into<PathBuf>, S: Into<String>>(files: impl IntoIterator<Item = (P, S)>) -> Self {
        MemorySources {
            files: files
                .into_iter()
                .map(|(p, s)| (p.into(), s.into()))
                .collect(),
        }
    }
}

impl Sources for MemorySources {
    fn read(&self, path: &Path) -> io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }
}
