//! The dependency list a handler declares in its `pyproject.toml`.

use std::path::Path;

use serde::Deserialize;

use crate::error::LoadError;

#[derive(Deserialize)]
struct PyProject {
    project: Option<Project>,
}

#[derive(Deserialize)]
struct Project {
    #[serde(default)]
    dependencies: Vec<String>,
}

/// The `[project] dependencies` of `path`, normalised for keying: trimmed,
/// sorted and without duplicates (their order means nothing to a resolver).
/// Empty when the file declares none.
pub fn dependencies(path: &Path, text: &str) -> Result<Vec<String>, LoadError> {
    let parsed: PyProject = toml::from_str(text).map_err(|e| LoadError::Pyproject {
        path: path.to_path_buf(),
        message: e.message().to_owned(),
    })?;
    let mut deps: Vec<String> = parsed
        .project
        .map(|p| p.dependencies)
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.trim().to_owned())
        .collect();
    if let Some(empty) = deps.iter().position(String::is_empty) {
        return Err(LoadError::Pyproject {
            path: path.to_path_buf(),
            message: format!("dependency #{} is empty", empty + 1),
        });
    }
    // Only names from the package index, with extras, versions and markers:
    // an option would change what the installer does, and a direct
    // reference (`name @ url`) or a path would make the host fetch or read
    // whatever a tenant names.
    if let Some(bad) = deps.iter().find(|d| !is_index_requirement(d)) {
        return Err(LoadError::Pyproject {
            path: path.to_path_buf(),
            message: format!(
                "`{bad}` is not a requirement on the package index (name, extras, version \
                 specifiers and markers only; no URLs, paths or options)"
            ),
        });
    }
    deps.sort();
    deps.dedup();
    Ok(deps)
}

/// `name[extras] <specifiers> ; <marker>` with a PEP 508 name.
fn is_index_requirement(requirement: &str) -> bool {
    let head = requirement.split(';').next().unwrap_or_default();
    let starts_with_name = head
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    // pip reads a requirement ending like an archive as a file name.
    let archive = [
        ".whl", ".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz",
    ]
    .iter()
    .any(|suffix| head.trim_end().to_ascii_lowercase().ends_with(suffix));
    starts_with_name && !archive && !head.contains(['@', '/', '\\', ':'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<String>, LoadError> {
        dependencies(Path::new("pyproject.toml"), text)
    }

    #[test]
    fn reads_sorts_and_validates() {
        assert_eq!(
            parse("[project]\nname='x'\ndependencies=[' idna==3.7', 'attrs>=23', 'idna==3.7']\n")
                .unwrap(),
            ["attrs>=23", "idna==3.7"]
        );
        assert!(
            parse("[tool.black]\nline-length = 100\n")
                .unwrap()
                .is_empty()
        );
        assert!(parse("[project]\nname='x'\n").unwrap().is_empty());
        let bad = parse("[project]\ndependencies = 'attrs'\n").unwrap_err();
        assert!(bad.to_string().starts_with("pyproject.toml: "), "{bad}");
        for bad in [
            "--index-url=http://evil",
            "evil @ https://example.com/evil.whl",
            "./local/pkg",
            "/etc/passwd",
            "pkg-1.0-py3-none-any.whl ; os_name == 'posix'",
        ] {
            let text = format!("[project]\ndependencies = [{bad:?}]\n");
            let error = parse(&text).map(|_| ()).unwrap_err();
            assert!(
                error.to_string().contains("not a requirement"),
                "{bad}: {error}"
            );
        }
        assert!(parse("[project]\ndependencies = ['six>=1.5; python_version >= \"3\"']\n").is_ok());
        assert!(parse("[project]\ndependencies = ['']\n").is_err());
    }
}
