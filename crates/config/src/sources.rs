use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// Where project files come from: the file system, or memory (tests, fuzzing, benches).
pub trait Sources {
    fn read(&self, path: &Path) -> io::Result<String>;
}

/// Reads project files from disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsSources;

impl Sources for FsSources {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
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
