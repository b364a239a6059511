//! A virtualenv's packages: its site-packages and the directories its `.pth`
//! files add, which is how editable installs point at a project's sources.
//!
//! The virtualenv is the operator's choice, so the path to it resolves as
//! usual; below it, the way to site-packages (`lib/python3.X/site-packages`)
//! is walked one directory at a time without following links, so what is
//! announced as granted is what is read. `.pth` path lines are the one
//! place links are followed: naming another directory is what they are
//! for, and each directory they add is announced by its real path.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::build::stage::{self, Snapshot, Tree};
use crate::error::LoadError;
use crate::host_fs::untrusted::{self, ReadError};

/// One tree of a virtualenv that is granted, by its real path.
#[derive(Debug)]
pub(crate) struct Granted {
    pub path: PathBuf,
    pub snapshot: Snapshot,
}

/// Read the virtualenv (or site-packages directory) `venv`: its
/// site-packages, then the directories its `.pth` files add.
pub(crate) fn read(venv: &Path) -> Result<Vec<Granted>, LoadError> {
    let (site, site_fd) = site_packages(venv)?;
    let snapshot = stage::read_tree(site_fd.as_fd(), &site, &Tree::VENV)?;
    let extra = pth_dirs(&site, &snapshot);
    let mut granted = vec![Granted {
        path: site,
        snapshot,
    }];
    for dir in extra {
        let snapshot = stage::snapshot_tree(&dir, &Tree::VENV)?;
        granted.push(Granted {
            path: dir,
            snapshot,
        });
    }
    Ok(granted)
}

/// The trees of `venv` stamped, not read (see `cache::index`): its
/// site-packages, then `dirs`, the `.pth` directories it had when it was
/// last read (a changed `.pth` file changes site-packages' stamps anyway).
pub(crate) fn stamp(venv: &Path, dirs: &[PathBuf]) -> Result<Vec<Granted>, LoadError> {
    let (site, site_fd) = site_packages(venv)?;
    let snapshot = stage::stamp_tree_at(site_fd.as_fd(), &site, &Tree::VENV)?;
    let mut granted = vec![Granted {
        path: site,
        snapshot,
    }];
    for dir in dirs {
        granted.push(Granted {
            path: dir.clone(),
            snapshot: stage::stamp_tree(dir, &Tree::VENV)?,
        });
    }
    Ok(granted)
}

/// `venv` may be a virtualenv (with `lib/python3.X/site-packages`) or a
/// site-packages directory itself. Returns its real path and a handle.
fn site_packages(venv: &Path) -> Result<(PathBuf, OwnedFd), LoadError> {
    let error = |message: String| LoadError::Venv {
        path: venv.to_path_buf(),
        message,
    };
    let root = std::fs::canonicalize(venv)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| error("not a directory".into()))?;
    let (root_fd, _) = untrusted::open_named(&root).map_err(stage::load_error)?;
    if root.file_name().is_some_and(|n| n == "site-packages") {
        return Ok((root, root_fd));
    }
    let walk = |relative: &Path| -> Result<Option<OwnedFd>, LoadError> {
        match untrusted::open_dir_at(root_fd.as_fd(), relative, &root) {
            Ok(fd) => Ok(Some(fd)),
            Err(ReadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(ReadError::Link { path }) => Err(error(format!(
                "{} is a symbolic link{}; pycage does not follow links inside a virtualenv: \
                 pass the directory itself as the virtualenv",
                path.display(),
                std::fs::read_link(&path)
                    .map(|t| format!(" (to {})", t.display()))
                    .unwrap_or_default()
            ))),
            Err(other) => Err(stage::load_error(other)),
        }
    };
    let windows = Path::new("Lib/site-packages");
    if let Some(fd) = walk(windows)? {
        return Ok((root.join(windows), fd));
    }
    let no_site = || error("no lib/python3.X/site-packages: is it a virtualenv?".into());
    let lib = walk(Path::new("lib"))?.ok_or_else(no_site)?;
    let mut versions: Vec<String> = rustix::fs::Dir::read_from(&lib)
        .map_err(|e| error(format!("reading lib/: {e}")))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|name| name.starts_with("python3"))
        .collect();
    versions.sort();
    let mut found = Vec::new();
    for version in versions {
        let relative = Path::new("lib").join(version).join("site-packages");
        if let Some(fd) = walk(&relative)? {
            found.push((root.join(relative), fd));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(no_site()),
        _ => Err(error(format!(
            "several site-packages ({}); pass the one to use",
            found
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Directories outside `site` that its `.pth` files (read in `snapshot`)
/// put on `sys.path`, in the order `site.addsitedir` would add them (files
/// by name, then lines), each by its real path. Lines that run code
/// (`import ...`) are left to the guest, which executes them at build time
/// as `site` does; paths that do not exist are ignored, also as `site` does.
fn pth_dirs(site: &Path, snapshot: &Snapshot) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    // `snapshot.files` is sorted by path: top-level .pth files by name.
    for pth in snapshot
        .files
        .iter()
        .filter(|f| !f.relative.contains('/') && f.relative.ends_with(".pth"))
    {
        for line in String::from_utf8_lossy(&pth.contents).lines() {
            let line = line.trim_end();
            if line.is_empty()
                || line.starts_with('#')
                || line.starts_with("import ")
                || line.starts_with("import\t")
            {
                continue;
            }
            let Ok(dir) = std::fs::canonicalize(site.join(line)) else {
                continue;
            };
            // Inside site-packages it is copied already; a directory holding
            // site-packages (a project root with its venv) would copy it twice.
            let overlaps = dir.starts_with(site) || site.starts_with(&dir);
            if dir.is_dir() && !overlaps && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn finds_site_packages_and_pth_directories() {
        let venv = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(venv.path()).unwrap();
        let site = root.join("lib/python3.11/site-packages");
        fs::create_dir_all(site.join("inside")).unwrap();
        fs::write(root.join("pyvenv.cfg"), "home = /usr\n").unwrap();
        assert_eq!(site_packages(&root).unwrap().0, site);
        assert_eq!(site_packages(&site).unwrap().0, site);
        assert!(site_packages(&root.join("lib")).is_err());

        let project = tempfile::tempdir().unwrap();
        let src = fs::canonicalize(project.path()).unwrap().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(
            site.join("b.pth"),
            format!(
                "# comment\n{}\nimport os\n/does/not/exist\ninside\n",
                src.display()
            ),
        )
        .unwrap();
        fs::write(site.join("a.pth"), format!("{}\n", src.display())).unwrap();
        // Only src: not the directory inside site-packages, nor the venv
        // root that holds site-packages.
        let granted = read(&root).unwrap();
        let paths: Vec<_> = granted.iter().map(|g| g.path.clone()).collect();
        assert_eq!(paths, [site.clone(), src]);
    }

    #[test]
    fn a_linked_site_packages_is_refused_naming_the_link() {
        let venv = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        fs::create_dir_all(venv.path().join("lib/python3.11")).unwrap();
        std::os::unix::fs::symlink(
            elsewhere.path(),
            venv.path().join("lib/python3.11/site-packages"),
        )
        .unwrap();
        let error = site_packages(venv.path()).unwrap_err().to_string();
        assert!(
            error.contains("site-packages is a symbolic link")
                && error.contains(&elsewhere.path().display().to_string()),
            "{error}"
        );
    }
}
