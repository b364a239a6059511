//! Host bindings for `wit/handler.wit` and the check that a component speaks it.

use wasmtime::Engine;
use wasmtime::component::Component;

// The host's view of the `sandbox` world, in two halves: what it calls (the
// export), and the imports it implements itself (key-value, variables).
// `wasi:http` comes from wasmtime-wasi-http and the rest of WASI from
// wasmtime-wasi, each linked on its own (see `capabilities`).
wasmtime::component::bindgen!({
    path: "../wit",
    inline: "
        package pycage:host;
        world exports {
            export pycage:handler/handler@0.2.0;
        }
    ",
    world: "pycage:host/exports",
    exports: { default: async },
});

mod imports {
    wasmtime::component::bindgen!({
        path: "../wit",
        inline: "
            package pycage:host-imports;
            world imports {
                import wasi:keyvalue/store@0.2.0-draft2;
                import wasi:keyvalue/atomics@0.2.0-draft2;
                import wasi:config/store@0.2.0-draft-2024-09-27;
            }
        ",
        world: "pycage:host-imports/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::BucketRep,
            "wasi:keyvalue/atomics.cas": super::CasRep,
        },
        require_store_data_send: true,
    });
}

pub use exports::pycage::handler::handler as types;
pub(crate) use imports::wasi::config::store as config_store;
pub(crate) use imports::wasi::keyvalue::{atomics as kv_atomics, store as kv_store};
/// The pre-linked component, ready to instantiate.
pub(crate) type SandboxPre<T> = ExportsPre<T>;

/// What a `wasi:keyvalue` bucket handle stands for: a store the instance
/// opened (by its granted name).
#[derive(Debug)]
pub struct BucketRep {
    pub store: String,
}

/// What a `wasi:keyvalue` CAS handle stands for: a key of a store and the
/// value it held when the handle was made (the swap succeeds only if it
/// still does).
#[derive(Debug)]
pub struct CasRep {
    pub store: String,
    pub key: String,
    pub observed: Option<Vec<u8>>,
}

/// Every WIT file, by its path under `wit/`, as vendored; a handler's build
/// writes out (and its cache key hashes) `guest_files`.
pub(crate) const WIT_FILES: &[(&str, &str)] = &[
    (
        "deps/cli-0.2.0/command.wit",
        include_str!("../../../wit/deps/cli-0.2.0/command.wit"),
    ),
    (
        "deps/cli-0.2.0/environment.wit",
        include_str!("../../../wit/deps/cli-0.2.0/environment.wit"),
    ),
    (
        "deps/cli-0.2.0/exit.wit",
        include_str!("../../../wit/deps/cli-0.2.0/exit.wit"),
    ),
    (
        "deps/cli-0.2.0/imports.wit",
        include_str!("../../../wit/deps/cli-0.2.0/imports.wit"),
    ),
    (
        "deps/cli-0.2.0/run.wit",
        include_str!("../../../wit/deps/cli-0.2.0/run.wit"),
    ),
    (
        "deps/cli-0.2.0/stdio.wit",
        include_str!("../../../wit/deps/cli-0.2.0/stdio.wit"),
    ),
    (
        "deps/cli-0.2.0/terminal.wit",
        include_str!("../../../wit/deps/cli-0.2.0/terminal.wit"),
    ),
    (
        "deps/clocks-0.2.0/monotonic-clock.wit",
        include_str!("../../../wit/deps/clocks-0.2.0/monotonic-clock.wit"),
    ),
    (
        "deps/clocks-0.2.0/wall-clock.wit",
        include_str!("../../../wit/deps/clocks-0.2.0/wall-clock.wit"),
    ),
    (
        "deps/clocks-0.2.0/world.wit",
        include_str!("../../../wit/deps/clocks-0.2.0/world.wit"),
    ),
    (
        "deps/config-0.2.0-draft-2024-09-27/store.wit",
        include_str!("../../../wit/deps/config-0.2.0-draft-2024-09-27/store.wit"),
    ),
    (
        "deps/config-0.2.0-draft-2024-09-27/world.wit",
        include_str!("../../../wit/deps/config-0.2.0-draft-2024-09-27/world.wit"),
    ),
    (
        "deps/filesystem-0.2.0/preopens.wit",
        include_str!("../../../wit/deps/filesystem-0.2.0/preopens.wit"),
    ),
    (
        "deps/filesystem-0.2.0/types.wit",
        include_str!("../../../wit/deps/filesystem-0.2.0/types.wit"),
    ),
    (
        "deps/filesystem-0.2.0/world.wit",
        include_str!("../../../wit/deps/filesystem-0.2.0/world.wit"),
    ),
    (
        "deps/http-0.2.0/handler.wit",
        include_str!("../../../wit/deps/http-0.2.0/handler.wit"),
    ),
    (
        "deps/http-0.2.0/proxy.wit",
        include_str!("../../../wit/deps/http-0.2.0/proxy.wit"),
    ),
    (
        "deps/http-0.2.0/types.wit",
        include_str!("../../../wit/deps/http-0.2.0/types.wit"),
    ),
    (
        "deps/io-0.2.0/error.wit",
        include_str!("../../../wit/deps/io-0.2.0/error.wit"),
    ),
    (
        "deps/io-0.2.0/poll.wit",
        include_str!("../../../wit/deps/io-0.2.0/poll.wit"),
    ),
    (
        "deps/io-0.2.0/streams.wit",
        include_str!("../../../wit/deps/io-0.2.0/streams.wit"),
    ),
    (
        "deps/io-0.2.0/world.wit",
        include_str!("../../../wit/deps/io-0.2.0/world.wit"),
    ),
    (
        "deps/keyvalue-0.2.0-draft2/atomic.wit",
        include_str!("../../../wit/deps/keyvalue-0.2.0-draft2/atomic.wit"),
    ),
    (
        "deps/keyvalue-0.2.0-draft2/batch.wit",
        include_str!("../../../wit/deps/keyvalue-0.2.0-draft2/batch.wit"),
    ),
    (
        "deps/keyvalue-0.2.0-draft2/store.wit",
        include_str!("../../../wit/deps/keyvalue-0.2.0-draft2/store.wit"),
    ),
    (
        "deps/keyvalue-0.2.0-draft2/watch.wit",
        include_str!("../../../wit/deps/keyvalue-0.2.0-draft2/watch.wit"),
    ),
    (
        "deps/keyvalue-0.2.0-draft2/world.wit",
        include_str!("../../../wit/deps/keyvalue-0.2.0-draft2/world.wit"),
    ),
    (
        "deps/random-0.2.0/insecure-seed.wit",
        include_str!("../../../wit/deps/random-0.2.0/insecure-seed.wit"),
    ),
    (
        "deps/random-0.2.0/insecure.wit",
        include_str!("../../../wit/deps/random-0.2.0/insecure.wit"),
    ),
    (
        "deps/random-0.2.0/random.wit",
        include_str!("../../../wit/deps/random-0.2.0/random.wit"),
    ),
    (
        "deps/random-0.2.0/world.wit",
        include_str!("../../../wit/deps/random-0.2.0/world.wit"),
    ),
    (
        "deps/sockets-0.2.0/instance-network.wit",
        include_str!("../../../wit/deps/sockets-0.2.0/instance-network.wit"),
    ),
    (
        "deps/sockets-0.2.0/ip-name-lookup.wit",
        include_str!("../../../wit/deps/sockets-0.2.0/ip-name-lookup.wit"),
    ),
    (
        "deps/sockets-0.2.0/network.wit",
        include_str!("../../../wit/deps/sockets-0.2.0/network.wit"),
    ),
    (
        "deps/sockets-0.2.0/tcp-create-socket.wit",
        include_str!("../../../wit/deps/sockets-0.2.0/tcp-create-socket.wit"),
    ),
    (
        "deps/sockets-0.2.0/tcp.wit",
        include_str!("../../../wit/deps/sockets-0.2.0/tcp.wit"),
    ),
    (
        "deps/sockets-0.2.0/udp-create-socket.wit",
        include_str!("../../../wit/deps/sockets-0.2.0/udp-create-socket.wit"),
    ),
    (
        "deps/sockets-0.2.0/udp.wit",
        include_str!("../../../wit/deps/sockets-0.2.0/udp.wit"),
    ),
    (
        "deps/sockets-0.2.0/world.wit",
        include_str!("../../../wit/deps/sockets-0.2.0/world.wit"),
    ),
    ("handler.wit", include_str!("../../../wit/handler.wit")),
];
/// The world of `wit/handler.wit` that images implement.
pub(crate) const WORLD: &str = "sandbox";

/// The world `pycage export` builds, in a file of its own
/// ([`write_export_to`]): what it imports depends on the target and the
/// tenant's grants.
pub(crate) const EXPORT_WORLD: &str = "http-export";
/// What an exported component exports.
pub const EXPORT_INTERFACE: &str = "wasi:http/incoming-handler@0.2.0";

/// The interface a handler component must export, at exactly this version.
pub const WIT_INTERFACE: &str = "pycage:handler/handler";
pub const WIT_VERSION: &str = "0.2.0";
/// The package of `wit/handler.wit`.
const WIT_INTERFACE_PACKAGE: &str = "pycage:handler@0.2.0";

/// The versions of `wasi:keyvalue` and `wasi:config` that `wasmtime serve`
/// links, for exports to it (vendored in `wit/wasmtime/`, out of `wit/deps`
/// so that the host's bindings see one version of each); written under
/// `deps/` with the rest.
pub(crate) const EXPORT_WIT_FILES: &[(&str, &str)] = &[
    (
        "deps/keyvalue-0.2.0-draft/atomic.wit",
        include_str!("../../../wit/wasmtime/keyvalue-0.2.0-draft/atomic.wit"),
    ),
    (
        "deps/keyvalue-0.2.0-draft/batch.wit",
        include_str!("../../../wit/wasmtime/keyvalue-0.2.0-draft/batch.wit"),
    ),
    (
        "deps/keyvalue-0.2.0-draft/store.wit",
        include_str!("../../../wit/wasmtime/keyvalue-0.2.0-draft/store.wit"),
    ),
    (
        "deps/keyvalue-0.2.0-draft/watch.wit",
        include_str!("../../../wit/wasmtime/keyvalue-0.2.0-draft/watch.wit"),
    ),
    (
        "deps/keyvalue-0.2.0-draft/world.wit",
        include_str!("../../../wit/wasmtime/keyvalue-0.2.0-draft/world.wit"),
    ),
    (
        "deps/config-0.2.0-rc.1/store.wit",
        include_str!("../../../wit/wasmtime/config-0.2.0-rc.1/store.wit"),
    ),
    (
        "deps/config-0.2.0-rc.1/world.wit",
        include_str!("../../../wit/wasmtime/config-0.2.0-rc.1/world.wit"),
    ),
];

/// Every WIT file as a handler image is built with: `WIT_FILES`, with
/// `wasi:http` cut to what the guest uses (see `guest_http`).
pub(crate) fn guest_files() -> impl Iterator<Item = (&'static str, String)> {
    WIT_FILES
        .iter()
        .map(|(relative, text)| (*relative, super::guest_http::guest_version(relative, text)))
}

/// Write every WIT file of the guest's world below `dir`.
pub(crate) fn write_to(dir: &std::path::Path) -> std::io::Result<()> {
    for (relative, text) in guest_files() {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// Write the WIT of an exported component below `dir`: every vendored file
/// as upstream has it (the incoming side of `wasi:http` included), and the
/// `http-export` world importing `imports` and exporting
/// [`EXPORT_INTERFACE`].
pub(crate) fn write_export_to(dir: &std::path::Path, imports: &[&str]) -> std::io::Result<()> {
    for (relative, text) in WIT_FILES.iter().chain(EXPORT_WIT_FILES) {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    let mut world = format!("package {WIT_INTERFACE_PACKAGE};\n\nworld {EXPORT_WORLD} {{\n");
    for import in imports {
        world.push_str(&format!("    import {import};\n"));
    }
    world.push_str(&format!("    export {EXPORT_INTERFACE};\n}}\n"));
    std::fs::write(dir.join("export.wit"), world)
}

/// `Ok` if `component` exports our interface at our version; otherwise the
/// version(s) it does export (empty if none) for the error message.
pub(crate) fn check_exports(engine: &Engine, component: &Component) -> Result<(), String> {
    let prefix = format!("{WIT_INTERFACE}@");
    let found: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| name.starts_with(&prefix) || name == WIT_INTERFACE)
        .collect();
    if found
        .iter()
        .any(|name| name == &format!("{prefix}{WIT_VERSION}"))
    {
        Ok(())
    } else if found.is_empty() {
        Err(format!("no `{WIT_INTERFACE}` export"))
    } else {
        Err(found.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal component exporting `routes` under `export_name`.
    fn component(engine: &Engine, export_name: &str) -> Component {
        let wat = format!(
            r#"(component
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func $f (canon lift (core func $i "f")))
                (instance $h (export "routes" (func $f)))
                (export "{export_name}" (instance $h)))"#
        );
        Component::new(engine, wat).unwrap()
    }

    #[test]
    fn only_our_interface_at_our_version_is_accepted() {
        let engine = Engine::default();
        let ours = component(&engine, &format!("{WIT_INTERFACE}@{WIT_VERSION}"));
        assert_eq!(check_exports(&engine, &ours), Ok(()));
        let older = component(&engine, &format!("{WIT_INTERFACE}@0.0.9"));
        assert_eq!(
            check_exports(&engine, &older),
            Err(format!("{WIT_INTERFACE}@0.0.9"))
        );
        let other = component(&engine, "example:other/api@1.0.0");
        assert_eq!(
            check_exports(&engine, &other),
            Err(format!("no `{WIT_INTERFACE}` export"))
        );
    }
}
