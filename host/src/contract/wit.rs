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
pub(crate) const WIT_SOURCE: &str = include_str!("../../../wit/handler.wit");
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
