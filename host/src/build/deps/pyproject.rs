//! The dependency list a handler declares in its `pyproject.toml`.
//!
//! Each requirement is parsed (a strict subset of PEP 508: a name, extras,
//! version specifiers and an environment marker) and rebuilt from its parts
//! with the name normalised (PEP 503: lower case, runs of `-_.` as one
//! `-`). The installer only ever sees that rebuilt form, so nothing a
//! tenant writes can read as an option, a URL, a path or an archive file
//! name (`evil.tar.lzma` becomes the index name `evil-tar-lzma`).

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

/// Longest requirement accepted, and most requirements in one file.
const MAX_REQUIREMENT: usize = 512;
const MAX_REQUIREMENTS: usize = 1000;

/// The `[project] dependencies` of `path`, normalised for keying and for
/// the installer: parsed and rebuilt, sorted and without duplicates (their
/// order means nothing to a resolver). Empty when the file declares none.
pub fn dependencies(path: &Path, text: &str) -> Result<Vec<String>, LoadError> {
    let error = |message: String| LoadError::Pyproject {
        path: path.to_path_buf(),
        message,
    };
    let parsed: PyProject = toml::from_str(text).map_err(|e| error(e.message().to_owned()))?;
    let declared = parsed.project.map(|p| p.dependencies).unwrap_or_default();
    if declared.len() > MAX_REQUIREMENTS {
        return Err(error(format!(
            "{} dependencies, over the limit of {MAX_REQUIREMENTS}",
            declared.len()
        )));
    }
    let mut deps = Vec::with_capacity(declared.len());
    for (index, requirement) in declared.iter().enumerate() {
        let requirement = requirement.trim();
        if requirement.is_empty() {
            return Err(error(format!("dependency #{} is empty", index + 1)));
        }
        let rebuilt = parse(requirement).ok_or_else(|| {
            error(format!(
                "`{}` is not a requirement on the package index (name, extras, version \
                 specifiers and markers only; no URLs, paths or options)",
                crate::guest_text::one_line(requirement, 200)
            ))
        })?;
        deps.push(rebuilt);
    }
    deps.sort();
    deps.dedup();
    Ok(deps)
}

/// `name [extras] [specifiers] [; marker]`, rebuilt with the name and
/// extras normalised; `None` if it is anything else (a URL, a path, an
/// option). Also applied to what comes from packages: the build
/// requirements of a source distribution, the requirement pip reports.
pub(crate) fn parse(requirement: &str) -> Option<String> {
    if requirement.len() > MAX_REQUIREMENT {
        return None;
    }
    let (head, marker) = match requirement.split_once(';') {
        Some((head, marker)) => (head.trim(), Some(marker.trim())),
        None => (requirement.trim(), None),
    };
    let name_end = head
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(head.len());
    let name = normalize_name(&head[..name_end])?;
    let mut rest = head[name_end..].trim_start();
    let mut out = name;
    if let Some(after) = rest.strip_prefix('[') {
        let (extras, after) = after.split_once(']')?;
        let mut names = Vec::new();
        for extra in extras.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            names.push(normalize_name(extra)?);
        }
        if !names.is_empty() {
            out.push('[');
            out.push_str(&names.join(","));
            out.push(']');
        }
        rest = after.trim_start();
    }
    // `name (>=1.0)` is the old spelling of `name >=1.0`.
    let specifiers = match rest.strip_prefix('(') {
        Some(inner) => inner.strip_suffix(')')?.trim(),
        None => rest,
    };
    if !specifiers.is_empty() {
        let mut parts = Vec::new();
        for spec in specifiers.split(',') {
            parts.push(specifier(spec.trim())?);
        }
        out.push_str(&parts.join(","));
    }
    if let Some(marker) = marker {
        if marker.is_empty() || !valid_marker(marker) {
            return None;
        }
        out.push_str("; ");
        out.push_str(marker);
    }
    Some(out)
}

/// A PEP 508 name, normalised (PEP 503); `None` if it is not one.
fn normalize_name(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return None;
    }
    let mut out = String::with_capacity(name.len());
    let mut separator = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            separator = true;
        } else {
            if separator {
                out.push('-');
                separator = false;
            }
            out.push(c.to_ascii_lowercase());
        }
    }
    Some(out)
}

/// One version specifier (`>=1.0`, `==2.*`, `~=3.1`), spaces removed.
fn specifier(spec: &str) -> Option<String> {
    let operator = ["===", "~=", "==", "!=", "<=", ">=", "<", ">"]
        .into_iter()
        .find(|op| spec.starts_with(op))?;
    let version = spec[operator.len()..].trim();
    let valid = !version.is_empty()
        && version.len() <= 64
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '-' | '_'));
    valid.then(|| format!("{operator}{version}"))
}

/// A marker expression's characters: names, quoted strings, comparison
/// operators, parentheses. No `@`, no `;`, nothing that is not printable
/// ASCII (the installer evaluates it, and nothing else reads it).
fn valid_marker(marker: &str) -> bool {
    marker.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                ' ' | '\'' | '"' | '=' | '!' | '<' | '>' | '~' | '(' | ')' | '.' | '_' | '-' | '*'
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_file(text: &str) -> Result<Vec<String>, LoadError> {
        dependencies(Path::new("pyproject.toml"), text)
    }

    #[test]
    fn reads_normalises_sorts_and_validates() {
        assert_eq!(
            parse_file(
                "[project]\nname='x'\ndependencies=[' idna==3.7', 'attrs>=23', 'IDNA == 3.7']\n"
            )
            .unwrap(),
            ["attrs>=23", "idna==3.7"]
        );
        assert!(
            parse_file("[tool.black]\nline-length = 100\n")
                .unwrap()
                .is_empty()
        );
        assert!(parse_file("[project]\nname='x'\n").unwrap().is_empty());
        let bad = parse_file("[project]\ndependencies = 'attrs'\n").unwrap_err();
        assert!(bad.to_string().starts_with("pyproject.toml: "), "{bad}");
        for bad in [
            "--index-url=http://evil",
            "-e .",
            "evil @ https://example.com/evil.whl",
            "./local/pkg",
            "/etc/passwd",
            "pkg @ file:///etc",
            "pkg>=1.0 @ x",
            "pkg; os_name == 'x' @ evil",
            "pkg==1.0 --hash=sha256:x",
            "C:\\\\evil",
            "pkg[extra",
            "pkg==",
            "pkg ==1.0 extra",
            "-pkg",
        ] {
            let text = format!("[project]\ndependencies = [{bad:?}]\n");
            let error = parse_file(&text).map(|_| ()).unwrap_err();
            assert!(
                error.to_string().contains("not a requirement"),
                "{bad}: {error}"
            );
        }
        assert!(parse_file("[project]\ndependencies = ['']\n").is_err());
    }

    #[test]
    fn what_the_installer_sees_cannot_be_a_file_name() {
        // Archive-looking names are index names once normalised, whatever
        // the extension (pip reads `x.tar.lzma` as a file).
        for (given, rebuilt) in [
            ("evil.tar.lzma", "evil-tar-lzma"),
            ("evil.tlz", "evil-tlz"),
            ("evil.TAR.GZ", "evil-tar-gz"),
            ("evil.whl", "evil-whl"),
            (
                "pkg-1.0-py3-none-any.whl ; os_name == 'posix'",
                "pkg-1-0-py3-none-any-whl; os_name == 'posix'",
            ),
            ("zope.interface>=5", "zope-interface>=5"),
            ("Foo__Bar[Extra_One, two]", "foo-bar[extra-one,two]"),
            ("six (>=1.5)", "six>=1.5"),
            (
                "six>=1.5; python_version >= \"3\"",
                "six>=1.5; python_version >= \"3\"",
            ),
            ("pkg ~= 1.4.2, != 1.4.5", "pkg~=1.4.2,!=1.4.5"),
        ] {
            assert_eq!(parse(given).as_deref(), Some(rebuilt), "{given}");
        }
    }
}
