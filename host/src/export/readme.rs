//! The README written into an export: how to run it, what it mounts, and
//! what the target host does not enforce.

use super::{Export, ExportTarget};
use crate::config::TenantConfig;

pub(super) fn render(tenant: &TenantConfig, export: &Export) -> String {
    let id = super::spin::component_id(&tenant.name);
    let mut text = format!(
        "# `{name}`, exported by pycage {version} for {target}\n\n\
         `handler.wasm` is a WebAssembly component that exports \
         `wasi:http/incoming-handler@0.2.0`: the tenant's handler and pycage's framework, \
         imported by CPython 3.14 at build time (componentize-py 0.25.1). It answers like \
         `pycage serve` does: the same routes, the same JSON errors for 404, 405, 413 and 500 \
         (the traceback goes to the host's stderr), no body for HEAD.\n\n\
         Each request should get a fresh instance, as in pycage: Spin, wasmCloud and \
         `wasmtime serve` do that for a wasi:http 0.2 component by default.\n\n",
        name = tenant.name,
        version = env!("CARGO_PKG_VERSION"),
        target = match export.target {
            ExportTarget::Spin => "Spin 3.x",
            ExportTarget::WasiHttp => "`wasmtime serve`",
        },
    );
    text.push_str("## Run it\n\nIn this directory:\n\n```sh\n");
    match export.target {
        ExportTarget::Spin => {
            text.push_str(
                "spin up                      # http://127.0.0.1:3000/\n\
                 spin up --listen 0.0.0.0:8080\n```\n\n\
                 `spin.toml` grants what the tenant's pycage configuration grants: the files \
                 below, `allowed_outbound_hosts`, `key_value_stores` and `variables`.\n\n",
            );
            text.push_str(&format!(
                "### On Kubernetes with SpinKube\n\n\
                 Push the app as an OCI artifact, then deploy a `SpinApp`:\n\n\
                 ```sh\n\
                 spin registry push ghcr.io/YOU/{id}:v1\n\
                 kubectl apply -f spinapp.yaml\n\
                 ```\n\n\
                 ```yaml\n\
                 apiVersion: core.spinkube.dev/v1alpha1\n\
                 kind: SpinApp\n\
                 metadata:\n\
                 \x20 name: {id}\n\
                 spec:\n\
                 \x20 image: \"ghcr.io/YOU/{id}:v1\"\n\
                 \x20 executor: containerd-shim-spin\n\
                 \x20 replicas: 2\n\
                 ```\n\n"
            ));
        }
        ExportTarget::WasiHttp => {
            text.push_str(&format!(
                "./serve.sh                   # http://127.0.0.1:8080/\n\
                 ADDR=0.0.0.0:8080 ./serve.sh\n```\n\n\
                 `serve.sh` runs exactly this (wasmtime {}), after refusing a `PYCAGE_VAR_*` \
                 value with a comma (wasmtime would read it as more `-S` options): run the \
                 script, not the bare line.\n\n```sh\n{}\n```\n\n\
                 Any load balancer can spread requests over several such processes.\n\n",
                super::wasmtime::WASMTIME_VERSION,
                export.command
            ));
        }
    }
    text.push_str(
        "## Files\n\n\
         | here | guest path | what |\n| --- | --- | --- |\n",
    );
    for mount in &export.mounts {
        let what = match mount.destination.as_str() {
            "/python" => "CPython's standard library, with bytecode",
            "/1" => "the handler's files, as its modules were imported",
            "/app" => "the handler's files, for its code to read",
            _ => "a dependency layer",
        };
        text.push_str(&format!(
            "| `{}` | `{}` | {what} |\n",
            mount.source, mount.destination
        ));
    }
    text.push_str(
        "\nThe guest paths are fixed: module paths in the component's snapshot name them. The \
         files are read-only and readable by every local user: restrict this directory if the \
         handler's files are not for them.\n\n",
    );
    text.push_str("## What this host does not enforce\n\n");
    for caveat in &export.caveats {
        text.push_str(&format!("- {caveat}\n"));
    }
    text.push_str(
        "\n## Cost per request\n\n\
         pycage's own image optimisations (one merged core module, the memory image reset in \
         place, immortal snapshot objects, the warmed request path) are not part of the export: \
         it is the component as componentize-py made it. Another host instantiates all of it for \
         every request. On pycage's 2-core development machine (2026-12-07), `wasmtime serve` \
         46.0.3 with this export's flags answered 229 hello-world requests/s on one connection \
         and about 125 at 16 or 64, where `pycage serve` answered 3,065 and 7,000 \
         (pycage's `scripts/bench-serve.sh` runs them side by side).\n",
    );
    text
}
