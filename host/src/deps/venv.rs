//! A virtualenv's packages: its site-packages and the directories its `.pth`
//! files add, which is how editable installs point at a project's sources.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::LoadError;

/// `venv` may be a virtualenv (with `lib/python3.X/site-packages`) or a
/// site-packages directory itself.
pub fn site_packages(venv: &Path) -> Result<PathBuf, LoadError> {
    let error = |message: String| LoadError::Venv {
        path: venv.to_path_buf(),
        message,
    };
    if !venv.is_dir() {
        return Err(error("not a directory".into()));
    }
    if venv.file_name().is_some_and(|n| n == "site-packages") {
        return Ok(venv.to_path_buf());
    }
    let windows = venv.join("Lib").join("site-packages");
    if windows.is_dir() {
        return Ok(windows);
    }
    let lib = venv.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .map_err(|_| error("no lib/python3.X/site-packages: is it a virtualenv?".into()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages"))
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(error(
            "no lib/python3.X/site-packages: is it a virtualenv?".into(),
        )),
        _ => Err(error(format!(
            "several site-packages ({}); pass the one to use",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Directories outside `site` that its `.pth` files put on `sys.path`, in
/// the order `site.addsitedir` would add them (files by name, then lines).
/// Lines that run code (`import ...`) are left to the guest, which executes
/// them at build time as `site` does; paths that do not exist are ignored,
/// also as `site` does.
pub fn pth_dirs(site: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: site.to_path_buf(),
        source,
    };
    let mut pth_files: Vec<PathBuf> = fs::read_dir(site)
        .map_err(io)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pth") && p.is_file())
        .collect();
    pth_files.sort();
    let site_real = fs::canonicalize(site).map_err(io)?;
    let mut dirs = Vec::new();
    for pth in pth_files {
        let text = fs::read(&pth).map_err(|source| LoadError::Io {
            path: pth.clone(),
            source,
        })?;
        for line in String::from_utf8_lossy(&text).lines() {
            let line = line.trim_end();
            if line.is_empty()
                || line.starts_with('#')
                || line.starts_with("import ")
                || line.starts_with("import\t")
            {
                continue;
            }
            let Ok(dir) = fs::canonicalize(site.join(line)) else {
                continue;
            };
            // Inside site-packages it is copied already; a directory holding
            // site-packages (a project root with its venv) would copy it twice.
            let overlaps = dir.starts_with(&site_real) || site_real.starts_with(&dir);
            if dir.is_dir() && !overlaps && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_site_packages_and_pth_directories() {
        let venv = tempfile::tempdir().unwrap();
        let site = venv.path().join("lib/python3.11/site-packages");
        fs::create_dir_all(site.join("inside")).unwrap();
        fs::write(venv.path().join("pyvenv.cfg"), "home = /usr\n").unwrap();
        assert_eq!(site_packages(venv.path()).unwrap(), site);
        assert_eq!(site_packages(&site).unwrap(), site);
        assert!(site_packages(&venv.path().join("lib")).is_err());

        let project = tempfile::tempdir().unwrap();
        let src = project.path().join("src");
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
        assert_eq!(pth_dirs(&site).unwrap(), [fs::canonicalize(&src).unwrap()]);
    }
}
