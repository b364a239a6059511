//! The part of `wasi:http@0.2.0` a handler image imports: the outgoing
//! calls `pycage.fetch` makes, nothing else.
//!
//! componentize-py imports every function and resource of every interface
//! in the world, and each one is wired into every new instance (a lowered
//! function, a trampoline, a table slot, a resource type): ~70 for
//! `wasi:http/types` alone, about 4 µs of each request's instantiation,
//! most of them for the incoming side (`incoming-request`,
//! `outgoing-response`, `response-outparam`), which a handler never
//! touches. The image imports `wasi:http/types@0.2.0` with only the items
//! below, which any host that links the full interface satisfies; it also
//! means a guest cannot reach the host functions it has no use for.
//!
//! The vendored files under `wit/deps/http-0.2.0` stay upstream's, whole
//! (an exported `wasi:http` component needs the incoming side); the subset
//! is cut from them here, when the build writes the WIT out.

/// Per resource (`""` for the interface's free functions): the functions
/// kept, by WIT name (`constructor` for the constructor). A resource not
/// listed is dropped with all its functions. Keep in step with
/// `guest-python/pycage/_fetch.py`.
const KEPT: &[(&str, &[&str])] = &[
    ("", &["http-error-code"]),
    ("fields", &["from-list", "entries"]),
    (
        "outgoing-request",
        &[
            "constructor",
            "body",
            "set-method",
            "set-scheme",
            "set-authority",
            "set-path-with-query",
        ],
    ),
    (
        "request-options",
        &[
            "constructor",
            "set-connect-timeout",
            "set-first-byte-timeout",
            "set-between-bytes-timeout",
        ],
    ),
    ("incoming-response", &["status", "headers", "consume"]),
    ("incoming-body", &["stream", "finish"]),
    // Returned by `incoming-body.finish`: the type must exist, its methods
    // are never called.
    ("future-trailers", &[]),
    ("outgoing-body", &["write", "finish"]),
    ("future-incoming-response", &["subscribe", "get"]),
];

/// The files of `wasi:http@0.2.0` whose guest version differs from upstream.
pub(crate) const TYPES: &str = "deps/http-0.2.0/types.wit";
pub(crate) const HANDLER: &str = "deps/http-0.2.0/handler.wit";
pub(crate) const PROXY: &str = "deps/http-0.2.0/proxy.wit";

/// The guest's version of the WIT file at `relative` (under `wit/`).
pub(crate) fn guest_version(relative: &str, text: &str) -> String {
    match relative {
        TYPES => trim_types(text),
        // `incoming-handler` names `incoming-request`, which is cut; the
        // `proxy` world exports it. Neither is part of a handler's world.
        HANDLER => drop_block(text, "interface incoming-handler {"),
        PROXY => text.replace("  export incoming-handler;\n", ""),
        _ => text.to_owned(),
    }
}

/// `types.wit` with only the `KEPT` resources and functions.
fn trim_types(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // Doc comments wait for the item they document.
    let mut docs = String::new();
    // The resource being read, and whether it is kept.
    let mut resource: Option<(&str, bool)> = None;
    // Inside a multi-line declaration being dropped.
    let mut skipping = false;
    for line in text.split_inclusive('\n') {
        let item = line.trim();
        if skipping {
            skipping = !item.ends_with(';');
            continue;
        }
        if item.starts_with("///") {
            docs.push_str(line);
            continue;
        }
        let kept_here = match resource {
            Some((_, false)) => {
                if item == "}" {
                    resource = None;
                }
                docs.clear();
                continue;
            }
            Some((name, true)) => kept(name),
            None => kept(""),
        };
        if let Some(name) = item
            .strip_prefix("resource ")
            .and_then(|rest| rest.strip_suffix(" {"))
        {
            let keep = kept_resource(name);
            resource = Some((name, keep));
            if !keep {
                docs.clear();
                continue;
            }
        } else if item == "}" && resource.is_some() {
            resource = None;
        } else if let Some(function) = declared(item)
            && !kept_here.contains(&function)
        {
            docs.clear();
            skipping = !item.ends_with(';');
            continue;
        }
        out.push_str(&docs);
        docs.clear();
        out.push_str(line);
    }
    out.push_str(&docs);
    out
}

fn kept(resource: &str) -> &'static [&'static str] {
    KEPT.iter()
        .find(|(name, _)| *name == resource)
        .map_or(&[], |(_, functions)| functions)
}

fn kept_resource(resource: &str) -> bool {
    KEPT.iter().any(|(name, _)| *name == resource)
}

/// The function a line declares (`name: func`, `name: static func`,
/// `constructor(`), without WIT's `%` escape.
fn declared(item: &str) -> Option<&str> {
    if item.starts_with("constructor(") {
        return Some("constructor");
    }
    let (name, rest) = item.split_once(':')?;
    let rest = rest.trim_start();
    (rest.starts_with("func") || rest.starts_with("static func"))
        .then(|| name.trim_start_matches('%'))
}

/// `text` without the block that starts at the line `opening` (the line
/// itself trimmed), its doc comments and its closing brace.
fn drop_block(text: &str, opening: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut docs = String::new();
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let item = line.trim();
        if inside {
            inside = line.trim_end() != "}";
            continue;
        }
        if item.starts_with("///") {
            docs.push_str(line);
            continue;
        }
        if item == opening {
            docs.clear();
            inside = true;
            continue;
        }
        out.push_str(&docs);
        docs.clear();
        out.push_str(line);
    }
    out.push_str(&docs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::wit::WIT_FILES;

    fn upstream(relative: &str) -> &'static str {
        WIT_FILES
            .iter()
            .find(|(name, _)| *name == relative)
            .map(|(_, text)| *text)
            .unwrap()
    }

    /// Every function declared in `text`, as `resource.function`.
    fn functions(text: &str) -> Vec<String> {
        let mut resource = String::new();
        let mut found = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(name) = line
                .strip_prefix("resource ")
                .and_then(|r| r.strip_suffix(" {"))
            {
                resource = name.to_owned();
            } else if line == "}" {
                resource.clear();
            } else if let Some(function) = declared(line) {
                found.push(format!("{resource}.{function}"));
            }
        }
        found
    }

    #[test]
    fn the_guest_imports_exactly_the_kept_functions_of_wasi_http_types() {
        let trimmed = guest_version(TYPES, upstream(TYPES));
        let mut expected: Vec<String> = KEPT
            .iter()
            .flat_map(|(resource, fns)| fns.iter().map(move |f| format!("{resource}.{f}")))
            .collect();
        let mut found = functions(&trimmed);
        expected.sort();
        found.sort();
        assert_eq!(found, expected);
        // Every kept name exists upstream (a typo would silently drop it).
        let all = functions(upstream(TYPES));
        assert!(expected.iter().all(|f| all.contains(f)), "{expected:?}");
        assert!(
            all.len() > expected.len() + 25,
            "upstream has {}",
            all.len()
        );
        for gone in ["incoming-request", "outgoing-response", "response-outparam"] {
            assert!(!trimmed.contains(&format!("resource {gone} ")), "{gone}");
        }
        // Braces still balance, and the types the kept items use are there.
        assert_eq!(trimmed.matches('{').count(), trimmed.matches('}').count());
        assert!(trimmed.contains("variant error-code {"));
        assert!(trimmed.contains("  }\n}"), "the interface is closed");
    }

    #[test]
    fn the_incoming_handler_is_not_part_of_the_guest_http_package() {
        let handler = guest_version(HANDLER, upstream(HANDLER));
        assert!(!handler.contains("incoming-handler"), "{handler}");
        assert!(!handler.contains("incoming-request"), "{handler}");
        assert!(handler.contains("interface outgoing-handler {"));
        assert_eq!(handler.matches('{').count(), handler.matches('}').count());
        let proxy = guest_version(PROXY, upstream(PROXY));
        assert!(!proxy.contains("incoming-handler"), "{proxy}");
        assert!(proxy.contains("import outgoing-handler;"));
        // Other files are written as they are.
        let other = "deps/io-0.2.0/streams.wit";
        assert_eq!(guest_version(other, upstream(other)), upstream(other));
    }
}
