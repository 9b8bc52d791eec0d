//! `descriptor_config`: envoyproxy/ratelimit configuration files, read as they are and handed to
//! the core (`DomainSet::from_documents`).
//!
//! The key names a file or a directory; a relative path is relative to the directory of the
//! service's config file. A directory is read the way envoyproxy/ratelimit reads its runtime
//! `config` directory: every regular file below it (recursively, in path order), each file one
//! or more YAML documents, one domain per document, a domain defined twice an error naming both
//! files. Entries whose name starts with `.` are skipped, as with envoyproxy/ratelimit's
//! `RUNTIME_IGNOREDOTFILES=true`: a Kubernetes ConfigMap volume keeps a second copy of every
//! file under `..data/` and `..<timestamp>/`, which would otherwise define each domain twice.
//! Symbolic links to files are followed (ConfigMap files are such links); links to directories
//! are not (no cycles).
//!
//! Bounds: at most [`MAX_FILES`] files and [`MAX_BYTES`] in total; a directory without any file
//! is an error (an unmounted volume must not mean "no limits").

use std::path::{Path, PathBuf};

/// Most files under a `descriptor_config` directory.
pub const MAX_FILES: usize = 1_000;
/// Most bytes of all `descriptor_config` files together (16 MiB).
pub const MAX_BYTES: u64 = 16 << 20;

/// `path` resolved against the directory of `config_file` when relative.
pub fn resolve(path: &Path, config_file: Option<&Path>) -> PathBuf {
    match config_file.and_then(Path::parent) {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// The files of `path` (itself if a file), sorted.
fn files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("descriptor_config: cannot read {}: {e}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !meta.is_dir() {
        return Err(format!(
            "descriptor_config: {} is neither a file nor a directory",
            path.display()
        ));
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let read = std::fs::read_dir(&dir)
            .map_err(|e| format!("descriptor_config: cannot list {}: {e}", dir.display()))?;
        for entry in read {
            let entry = entry
                .map_err(|e| format!("descriptor_config: cannot list {}: {e}", dir.display()))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = entry.path();
            let link = entry
                .file_type()
                .map_err(|e| format!("descriptor_config: {}: {e}", p.display()))?;
            if link.is_dir() {
                dirs.push(p);
            } else if std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
                out.push(p);
                if out.len() > MAX_FILES {
                    return Err(format!(
                        "descriptor_config: {} holds more than {MAX_FILES} files",
                        path.display()
                    ));
                }
            }
        }
    }
    if out.is_empty() {
        return Err(format!(
            "descriptor_config: directory {} holds no config file",
            path.display()
        ));
    }
    out.sort();
    Ok(out)
}

/// Read every file of `path`: `(origin, text)` pairs, origin being the file's path.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, String> {
    let mut total = 0u64;
    let mut docs = Vec::new();
    for f in files(path)? {
        let bytes = std::fs::read(&f)
            .map_err(|e| format!("descriptor_config: cannot read {}: {e}", f.display()))?;
        total += bytes.len() as u64;
        if total > MAX_BYTES {
            return Err(format!(
                "descriptor_config: {} exceeds {MAX_BYTES} bytes in total",
                path.display()
            ));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("descriptor_config: {} is not valid UTF-8", f.display()))?;
        docs.push((f.display().to_string(), text));
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rw-desc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    #[test]
    fn a_directory_is_read_recursively_in_order_without_dot_entries() {
        let d = tmp("tree");
        std::fs::create_dir_all(d.join("sub")).expect("sub");
        std::fs::create_dir_all(d.join("..data")).expect("dot dir");
        std::fs::write(d.join("b.yaml"), "domain: b\n").expect("b");
        std::fs::write(d.join("a.yaml"), "domain: a\n").expect("a");
        std::fs::write(d.join("sub/c.yml"), "domain: c\n").expect("c");
        std::fs::write(d.join(".hidden.yaml"), "domain: h\n").expect("h");
        std::fs::write(d.join("..data/a.yaml"), "domain: a\n").expect("dup");
        let docs = read(&d).expect("read");
        let texts: Vec<&str> = docs.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, ["domain: a\n", "domain: b\n", "domain: c\n"]);
        assert!(docs[0].0.ends_with("a.yaml"));
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn empty_missing_and_binary_are_errors_naming_the_path() {
        let d = tmp("empty");
        let e = read(&d).expect_err("empty");
        assert!(e.contains("holds no config file"), "{e}");
        let e = read(&d.join("missing")).expect_err("missing");
        assert!(e.contains("missing"), "{e}");
        std::fs::write(d.join("x.yaml"), b"\xff\xfe").expect("bin");
        let e = read(&d).expect_err("binary");
        assert!(e.contains("x.yaml") && e.contains("UTF-8"), "{e}");
        std::fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let p = resolve(
            Path::new("rls"),
            Some(Path::new("/etc/ratewall/ratewall.yaml")),
        );
        assert_eq!(p, Path::new("/etc/ratewall/rls"));
        let p = resolve(
            Path::new("/abs"),
            Some(Path::new("/etc/ratewall/ratewall.yaml")),
        );
        assert_eq!(p, Path::new("/abs"));
    }
}
