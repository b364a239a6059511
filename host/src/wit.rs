//! Host bindings for `wit/handler.wit` and the check that a component speaks it.

use wasmtime::Engine;
use wasmtime::component::Component;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sandbox",
    exports: { default: async },
});

pub use exports::pycage::handler::handler as types;

/// The WIT text, fed to componentize-py and hashed into cache keys.
pub(crate) const WIT_SOURCE: &str = include_str!("../../wit/handler.wit");
/// The interface a handler component must export, at exactly this version.
pub const WIT_INTERFACE: &str = "pycage:handler/handler";
pub const WIT_VERSION: &str = "0.1.0";

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
