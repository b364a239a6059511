//! The `wasi-http` target: the interface versions `wasmtime serve` 46
//! links (imported only where the tenant is granted them), and the exact
//! `wasmtime serve` command line that runs the export.

use super::{Mount, shell_quote};
use crate::config::TenantConfig;
use crate::grants::VariableSource;

/// The versions `wasmtime serve -Skeyvalue` / `-Sconfig` link
/// (wasmtime-wasi-keyvalue and wasmtime-wasi-config 46).
pub const KEYVALUE_STORE: &str = "wasi:keyvalue/store@0.2.0-draft";
pub const KEYVALUE_ATOMICS: &str = "wasi:keyvalue/atomics@0.2.0-draft";
pub const CONFIG_STORE: &str = "wasi:config/store@0.2.0-rc.1";

/// The script in the export that runs the command.
pub const SCRIPT: &str = "serve.sh";

/// The version the command line was written for.
pub const WASMTIME_VERSION: &str = "46.0.3";

/// `wasmtime serve` with the tenant's mounts, limits and grants, to be run
/// in the export's directory. Secret values never appear in it: such a
/// variable is read from `PYCAGE_VAR_<NAME>` in the shell that runs it.
pub fn command(tenant: &TenantConfig, mounts: &[Mount]) -> String {
    let mut words: Vec<String> = vec![
        "wasmtime".into(),
        "serve".into(),
        // The CLI interfaces (filesystem, environment...) that
        // componentize-py's CPython imports besides the proxy world.
        "-Scli".into(),
        "--addr".into(),
        ADDR.into(),
        format!("-Wmax-memory-size={}", tenant.limits.memory_bytes),
        format!("-Wtimeout={}ms", tenant.limits.timeout.as_millis()),
    ];
    for mount in mounts {
        words.push("--dir".into());
        words.push(shell_quote(&format!(
            "{}::{}",
            mount.source, mount.destination
        )));
    }
    if !tenant.key_value_stores.is_empty() {
        words.push("-Skeyvalue".into());
    }
    if !tenant.variables.is_empty() {
        words.push("-Sconfig".into());
        // wasmtime splits every `-S` value at commas: such a value cannot
        // be given (see `caveats`).
        for variable in tenant.variables.iter().filter(|v| !has_comma(v)) {
            let value = match &variable.source {
                VariableSource::Value(value) if !from_environment(variable) => {
                    shell_quote(&format!("{}={value}", variable.name))
                }
                _ => format!(
                    "\"{}=${{PYCAGE_VAR_{}:?set PYCAGE_VAR_{} to the value of variable {}}}\"",
                    variable.name,
                    variable.name.to_ascii_uppercase(),
                    variable.name.to_ascii_uppercase(),
                    variable.name
                ),
            };
            words.push(format!("-Sconfig-var={value}"));
        }
    }
    words.push(super::COMPONENT_FILE.into());
    words.join(" ")
}

/// Whether the command reads `variable` from `PYCAGE_VAR_<NAME>` (a
/// secret, or a value pycage itself reads from the environment or a file).
fn from_environment(variable: &crate::grants::VariableSpec) -> bool {
    variable.secret || !matches!(variable.source, VariableSource::Value(_))
}

fn has_comma(variable: &crate::grants::VariableSpec) -> bool {
    matches!(&variable.source, VariableSource::Value(value) if value.contains(','))
}

/// The address the command binds.
pub const ADDR: &str = "127.0.0.1:8080";

/// The export's `serve.sh`: the command, run from the export's directory,
/// listening on `$ADDR` (default [`ADDR`]), with extra arguments placed
/// before the component. `wasmtime` is whichever is first on `PATH`.
pub fn script(tenant: &TenantConfig, command: &str) -> String {
    // A value from the environment reaches wasmtime inside a `-S` option,
    // which wasmtime splits at commas: a comma would add options of the
    // caller's choosing (`inherit-env`, `inherit-network`). Refused first.
    let mut checks = String::new();
    for variable in tenant.variables.iter().filter(|v| from_environment(v)) {
        let env = format!("PYCAGE_VAR_{}", variable.name.to_ascii_uppercase());
        checks.push_str(&format!(
            "case \"${{{env}-}}\" in *,*) echo \"serve.sh: {env} has a comma, which wasmtime \
             would read as more options\" >&2; exit 2;; esac\n"
        ));
    }
    let (head, component) = command
        .rsplit_once(' ')
        .unwrap_or((command, super::COMPONENT_FILE));
    let head = head.replacen(
        &format!("--addr {ADDR}"),
        &format!("--addr \"${{ADDR:-{ADDR}}}\""),
        1,
    );
    format!(
        "#!/bin/sh\n\
         # Written by `pycage export --target wasi-http`: serves this export with\n\
         # wasmtime {WASMTIME_VERSION}. Listens on $ADDR (default {ADDR}); extra arguments\n\
         # go before the component, e.g. ADDR=0.0.0.0:8080 ./serve.sh -Wmax-instances=20\n\
         set -eu\n\
         {checks}\
         cd \"$(dirname \"$0\")\"\n\
         exec {head} \"$@\" {component}\n"
    )
}

/// What `wasmtime serve` does not enforce of what pycage enforces.
pub fn caveats(tenant: &TenantConfig) -> Vec<String> {
    let mut caveats = vec![
        "`wasmtime serve` grants every `--dir` read-write: the export's files are read-only on \
         disk so that a request cannot change them for the next one, which holds unless \
         wasmtime runs as root."
            .to_owned(),
        "`-Wmax-memory-size` caps each linear memory, not the instance as a whole; there is \
         no concurrency limit or output cap. The component itself refuses request and \
         response bodies over the tenant's limits, as `pycage serve` does."
            .to_owned(),
    ];
    if tenant.allowed_outbound_hosts.is_empty() {
        caveats.push(
            "`wasmtime serve` has no outbound allow-list: the component can send HTTP requests \
             to any host the machine reaches (loopback and cloud metadata addresses included), \
             although this tenant is granted none."
                .to_owned(),
        );
    } else {
        caveats.push(format!(
            "`wasmtime serve` has no outbound allow-list: the component can send HTTP requests \
             to any host the machine reaches (loopback and cloud metadata addresses included), \
             not only {}.",
            tenant
                .allowed_outbound_hosts
                .iter()
                .map(|host| host.written.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !tenant.key_value_stores.is_empty() {
        caveats.push(
            "`-Skeyvalue` is an in-memory store that opens only the store named \"\" (so \
             `pycage.kv.open` fails for every name a tenant can be granted), starts empty for \
             every request and keeps nothing; its `increment` only adds and it has no \
             `compare_and_swap`. A handler that needs its data needs Spin or `pycage serve`."
                .to_owned(),
        );
    }
    if tenant.path_prefix.is_some() {
        caveats.push(
            "The tenant's path prefix is not stripped: the component sees the full path."
                .to_owned(),
        );
    }
    for variable in tenant.variables.iter().filter(|v| has_comma(v)) {
        caveats.push(format!(
            "Variable `{}` is not passed: its value has a comma, and wasmtime splits `-S` \
             options at commas.",
            variable.name
        ));
    }
    if tenant.variables.iter().any(from_environment) {
        caveats.push(
            "Secret variables, and those pycage reads from the environment or a file, are read \
             from PYCAGE_VAR_<NAME> when serve.sh runs (one with a comma is refused); their \
             values are not in the export, but wasmtime takes them as command-line arguments, \
             which other local users can read (ps, /proc/PID/cmdline)."
                .to_owned(),
        );
    }
    caveats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::VariableSpec;

    #[test]
    fn the_command_mounts_limits_and_grants_and_holds_no_secret() {
        let mut tenant = TenantConfig::new("shop", "shop");
        tenant.key_value_stores = vec!["default".into()];
        tenant.variables = vec![
            VariableSpec {
                name: "greeting".into(),
                source: VariableSource::Value("it's me".into()),
                secret: false,
            },
            VariableSpec {
                name: "token".into(),
                source: VariableSource::Value("s3cr3t".into()),
                secret: true,
            },
        ];
        let mounts = vec![Mount {
            source: "files/app".into(),
            destination: "/app".into(),
        }];
        let command = command(&tenant, &mounts);
        assert!(!command.contains("s3cr3t"), "{command}");
        assert!(
            command.starts_with("wasmtime serve -Scli --addr 127.0.0.1:8080 "),
            "{command}"
        );
        assert!(command.contains(" --dir files/app::/app "), "{command}");
        assert!(command.contains(" -Skeyvalue "), "{command}");
        assert!(
            command.contains(r"-Sconfig-var='greeting=it'\''s me'"),
            "{command}"
        );
        assert!(command.contains("${PYCAGE_VAR_TOKEN:?"), "{command}");
        assert!(command.ends_with(" handler.wasm"), "{command}");
        let script = script(&tenant, &command);
        assert!(
            script.contains("case \"${PYCAGE_VAR_TOKEN-}\" in *,*)"),
            "{script}"
        );
        assert!(script.contains("\"$@\" handler.wasm\n"), "{script}");
        assert!(
            script.contains("--addr \"${ADDR:-127.0.0.1:8080}\" "),
            "{script}"
        );
    }
}
