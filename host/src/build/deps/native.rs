//! Finding native extension modules, which cannot run in the sandbox.
//!
//! CPython here is a WebAssembly build: an extension compiled for the host
//! (ELF, Mach-O, PE) can never be imported by it. Such a module would only
//! fail when first imported, perhaps lazily inside a request, so the build
//! refuses it up front and names the package it came from. Extensions built
//! for WASI (files starting with the Wasm magic) are left to componentize-py.

use std::collections::HashMap;

use crate::build::stage::Snapshot;

/// One extension module the sandbox cannot load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeModule {
    /// Distribution name (from `*.dist-info`), or the top-level directory.
    pub package: String,
    /// Dotted module name, e.g. `pydantic_core._pydantic_core`.
    pub module: String,
    /// The file, relative to the scanned tree.
    pub relative: String,
}

const WASM_MAGIC: &[u8] = b"\0asm";

/// Every extension module in `snapshot` that is not a WebAssembly module.
/// `import_roots` are the tree's directories on `sys.path` ("" for its top,
/// "vendor/" for a vendor directory); module names are relative to the
/// deepest one containing the file.
pub fn find(snapshot: &Snapshot, import_roots: &[&str]) -> Vec<NativeModule> {
    let owners = record_owners(snapshot);
    snapshot
        .files
        .iter()
        .filter(|f| is_extension_name(&f.relative) && !f.contents.starts_with(WASM_MAGIC))
        .map(|f| {
            let root = import_roots
                .iter()
                .filter(|root| f.relative.starts_with(*root))
                .max_by_key(|root| root.len())
                .unwrap_or(&"");
            let module = module_name(&f.relative[root.len()..]);
            let package = owners
                .get(f.relative.as_str())
                .cloned()
                .unwrap_or_else(|| module.split('.').next().unwrap_or(&module).to_owned());
            NativeModule {
                package,
                module,
                relative: f.relative.clone(),
            }
        })
        .collect()
}

/// `foo/_bar.cpython-312-x86_64-linux-gnu.so`, `foo/_bar.abi3.so`, `_bar.pyd`.
fn is_extension_name(relative: &str) -> bool {
    let name = relative.rsplit('/').next().unwrap_or(relative);
    name.ends_with(".so") || name.ends_with(".pyd")
}

/// The dotted module a file provides: path components, then the file name up
/// to its first dot (which drops the ABI tag).
fn module_name(relative: &str) -> String {
    let (dir, name) = relative.rsplit_once('/').unwrap_or(("", relative));
    let stem = name.split('.').next().unwrap_or(name);
    if dir.is_empty() {
        stem.to_owned()
    } else {
        format!("{}.{stem}", dir.replace('/', "."))
    }
}

/// File -> distribution name, from the RECORD files installers write.
fn record_owners(snapshot: &Snapshot) -> HashMap<&str, String> {
    let mut owners = HashMap::new();
    for file in &snapshot.files {
        let Some(dist_info) = file.relative.strip_suffix("/RECORD") else {
            continue;
        };
        let Some(dir_name) = dist_info.strip_suffix(".dist-info") else {
            continue;
        };
        // The prefix of the tree the dist-info sits in (e.g. "vendor/").
        let (base, dir_name) = match dir_name.rsplit_once('/') {
            Some((base, name)) => (format!("{base}/"), name),
            None => (String::new(), dir_name),
        };
        let package = dist_name(snapshot, dist_info)
            .unwrap_or_else(|| dir_name.split('-').next().unwrap_or(dir_name).to_owned());
        for line in String::from_utf8_lossy(&file.contents).lines() {
            // RECORD is CSV: path,hash,size. Paths with commas are quoted;
            // extension module paths never are.
            let Some(path) = line.split(',').next() else {
                continue;
            };
            if is_extension_name(path)
                && let Some(staged) = snapshot
                    .files
                    .iter()
                    .find(|f| f.relative == format!("{base}{path}"))
            {
                owners.insert(staged.relative.as_str(), package.clone());
            }
        }
    }
    owners
}

/// The `Name:` field of a dist-info's METADATA.
fn dist_name(snapshot: &Snapshot, dist_info: &str) -> Option<String> {
    let metadata = format!("{dist_info}/METADATA");
    let file = snapshot.files.iter().find(|f| f.relative == metadata)?;
    String::from_utf8_lossy(&file.contents)
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| line.strip_prefix("Name:").map(|n| n.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::stage::StagedFile;

    fn snap(files: &[(&str, &[u8])]) -> Snapshot {
        Snapshot {
            files: files
                .iter()
                .map(|(relative, contents)| StagedFile {
                    stamp: Default::default(),
                    relative: (*relative).to_owned(),
                    contents: contents.to_vec(),
                })
                .collect(),
            skipped: Vec::new(),
        }
    }

    #[test]
    fn names_the_distribution_and_module_and_spares_wasm() {
        let found = find(
            &snap(&[
                ("vendor/fast/__init__.py", b""),
                (
                    "vendor/fast/_speed.cpython-311-x86_64-linux-gnu.so",
                    b"\x7fELF....",
                ),
                (
                    "vendor/fast/_wasi.cpython-314-wasm32-wasi.so",
                    b"\0asm\x01\0\0\0",
                ),
                (
                    "vendor/fast_lib-1.0.dist-info/METADATA",
                    b"Metadata-Version: 2.1\nName: fast-lib\n\nbody",
                ),
                (
                    "vendor/fast_lib-1.0.dist-info/RECORD",
                    b"fast/__init__.py,,\nfast/_speed.cpython-311-x86_64-linux-gnu.so,sha256=x,9\n",
                ),
                ("loose.pyd", b"MZ"),
            ]),
            &["", "vendor/"],
        );
        assert_eq!(
            found,
            [
                NativeModule {
                    package: "fast-lib".into(),
                    module: "fast._speed".into(),
                    relative: "vendor/fast/_speed.cpython-311-x86_64-linux-gnu.so".into(),
                },
                NativeModule {
                    package: "loose".into(),
                    module: "loose".into(),
                    relative: "loose.pyd".into(),
                },
            ]
        );
    }
}
