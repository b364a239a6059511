//! The `spin` target: the interface versions Spin 3.x links, and a
//! `spin.toml` (manifest version 2) granting what the tenant is granted.

use toml::{Table, Value};

use super::Mount;
use std::net::IpAddr;

use crate::config::TenantConfig;
use crate::grants::{AllowedHost, HostPattern, PortPattern, SchemePattern, VariableSource};

/// The versions Spin 3.x links (and pycage's own images import).
pub const KEYVALUE_STORE: &str = "wasi:keyvalue/store@0.2.0-draft2";
pub const KEYVALUE_ATOMICS: &str = "wasi:keyvalue/atomics@0.2.0-draft2";
pub const CONFIG_STORE: &str = "wasi:config/store@0.2.0-draft-2024-09-27";

/// The manifest's file name in the export.
pub const MANIFEST: &str = "spin.toml";
/// How to serve the export, from its directory.
pub const COMMAND: &str = "spin up";

/// A Spin component id (kebab-case: words of lower-case letters and
/// digits, each starting with a letter, between single dashes), from a
/// tenant name (`a-z0-9_-`): a word starting with a digit joins the one
/// before it.
pub fn component_id(tenant: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    for word in tenant.split(['_', '-']).filter(|word| !word.is_empty()) {
        match words.last_mut() {
            Some(last) if word.starts_with(|c: char| c.is_ascii_digit()) => last.push_str(word),
            _ if word.starts_with(|c: char| c.is_ascii_digit()) => words.push(format!("app{word}")),
            _ => words.push(word.to_owned()),
        }
    }
    if words.is_empty() {
        return "app".into();
    }
    words.join("-")
}

/// Whether Spin accepts `name` as a variable name or a key-value store
/// label: words of lower-case letters and digits, each starting with a
/// letter, separated by single `_` (or, for labels, single `-`).
pub fn valid_spin_name(name: &str, dashes: bool) -> bool {
    let separator = if dashes && name.contains('-') {
        '-'
    } else {
        '_'
    };
    if dashes && name.contains('-') && name.contains('_') {
        return false;
    }
    name.split(separator).all(|word| {
        word.starts_with(|c: char| c.is_ascii_lowercase())
            && word
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    })
}

/// Why Spin cannot be given `tenant`'s grants as they are, if it cannot.
pub fn unsupported(tenant: &TenantConfig) -> Option<String> {
    if let Some(variable) = tenant
        .variables
        .iter()
        .find(|v| !valid_spin_name(&v.name, false))
    {
        return Some(format!(
            "Spin cannot name the variable `{}`: each `_`-separated word of a Spin variable name \
             starts with a letter (rename it in the tenant's configuration)",
            variable.name
        ));
    }
    if let Some(store) = tenant
        .key_value_stores
        .iter()
        .find(|name| !valid_spin_name(name, true))
    {
        return Some(format!(
            "Spin cannot name the key-value store `{store}`: a label is kebab-case or snake_case \
             with each word starting with a letter"
        ));
    }
    None
}

/// One allow-list entry as Spin writes it: `scheme://host:port`, from the
/// parsed entry (pycage also takes an upper-case scheme, a trailing `/`,
/// and `*://host` meaning each scheme's own port, which Spin writes as two
/// entries).
pub fn spin_hosts(entry: &AllowedHost) -> Vec<String> {
    let host = match &entry.host {
        HostPattern::Name(name) => name.clone(),
        HostPattern::Subdomains(suffix) => format!("*.{suffix}"),
        HostPattern::Ip(IpAddr::V4(ip)) => ip.to_string(),
        HostPattern::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        HostPattern::Any => "*".into(),
    };
    let one = |scheme: &str, port: String| format!("{scheme}://{host}:{port}");
    match (entry.scheme, entry.port) {
        (_, PortPattern::Exact(port)) => vec![one(scheme_name(entry.scheme), port.to_string())],
        (_, PortPattern::Any) => vec![one(scheme_name(entry.scheme), "*".into())],
        (SchemePattern::Http, PortPattern::SchemeDefault) => vec![one("http", "80".into())],
        (SchemePattern::Https, PortPattern::SchemeDefault) => vec![one("https", "443".into())],
        (SchemePattern::Any, PortPattern::SchemeDefault) => {
            vec![one("http", "80".into()), one("https", "443".into())]
        }
    }
}

fn scheme_name(scheme: SchemePattern) -> &'static str {
    match scheme {
        SchemePattern::Http => "http",
        SchemePattern::Https => "https",
        SchemePattern::Any => "*",
    }
}

/// The manifest text.
pub fn manifest(tenant: &TenantConfig, mounts: &[Mount]) -> String {
    let id = component_id(&tenant.name);
    let mut root = Table::new();
    root.insert("spin_manifest_version".into(), Value::Integer(2));

    let mut application = Table::new();
    application.insert("name".into(), Value::String(id.clone()));
    application.insert("version".into(), Value::String("0.1.0".into()));
    application.insert(
        "description".into(),
        Value::String(format!(
            "tenant `{}`, exported by pycage {}",
            tenant.name,
            env!("CARGO_PKG_VERSION")
        )),
    );
    root.insert("application".into(), Value::Table(application));

    // Application variables carry the values (or say they must be
    // provided); the component's variables name them.
    if !tenant.variables.is_empty() {
        let mut variables = Table::new();
        let mut component_variables = Table::new();
        for variable in &tenant.variables {
            let mut spec = Table::new();
            match (&variable.source, variable.secret) {
                (VariableSource::Value(value), false) => {
                    spec.insert("default".into(), Value::String(value.clone()));
                }
                // A secret's value never goes into a file; nor does a
                // value pycage reads from the environment or a file at
                // load: the Spin host's variable provider supplies them.
                (_, secret) => {
                    spec.insert("required".into(), Value::Boolean(true));
                    if secret {
                        spec.insert("secret".into(), Value::Boolean(true));
                    }
                }
            }
            variables.insert(variable.name.clone(), Value::Table(spec));
            component_variables.insert(
                variable.name.clone(),
                Value::String(format!("{{{{ {} }}}}", variable.name)),
            );
        }
        root.insert("variables".into(), Value::Table(variables));
        root.insert(
            "__component_variables".into(),
            Value::Table(component_variables),
        );
    }

    let mut trigger = Table::new();
    trigger.insert("route".into(), Value::String("/...".into()));
    trigger.insert("component".into(), Value::String(id.clone()));
    let mut triggers = Table::new();
    triggers.insert("http".into(), Value::Array(vec![Value::Table(trigger)]));
    root.insert("trigger".into(), Value::Table(triggers));

    let mut component = Table::new();
    component.insert("source".into(), Value::String(super::COMPONENT_FILE.into()));
    component.insert(
        "files".into(),
        Value::Array(
            mounts
                .iter()
                .map(|mount| {
                    let mut file = Table::new();
                    file.insert("source".into(), Value::String(mount.source.clone()));
                    file.insert(
                        "destination".into(),
                        Value::String(mount.destination.clone()),
                    );
                    Value::Table(file)
                })
                .collect(),
        ),
    );
    component.insert(
        "allowed_outbound_hosts".into(),
        Value::Array(
            tenant
                .allowed_outbound_hosts
                .iter()
                .flat_map(spin_hosts)
                .map(Value::String)
                .collect(),
        ),
    );
    component.insert(
        "key_value_stores".into(),
        Value::Array(
            tenant
                .key_value_stores
                .iter()
                .map(|name| Value::String(name.clone()))
                .collect(),
        ),
    );
    if let Some(Value::Table(variables)) = root.remove("__component_variables") {
        component.insert("variables".into(), Value::Table(variables));
    }
    let mut components = Table::new();
    components.insert(id, Value::Table(component));
    root.insert("component".into(), Value::Table(components));
    format!(
        "# Written by `pycage export --target spin`; run `spin up` in this directory.\n{}",
        toml::to_string(&root).expect("a table of strings serialises")
    )
}

/// What Spin does differently from `pycage serve` for this tenant.
pub fn caveats(tenant: &TenantConfig) -> Vec<String> {
    let mut caveats = vec![
        "Spin applies its own per-request limits; pycage's timeout, memory and output limits \
         for this tenant are not carried over (the component itself refuses request and \
         response bodies over the tenant's limits)."
            .to_owned(),
    ];
    if !tenant.allowed_outbound_hosts.is_empty() {
        caveats.push(
            "Spin's `allowed_outbound_hosts` matches names and ports: a permitted name that \
             resolves to a private or loopback address is reached (`pycage serve` refuses it), \
             and pycage's `resolve` overrides are not carried over."
                .to_owned(),
        );
    }
    if tenant
        .key_value_stores
        .iter()
        .any(|name| name != crate::grants::DEFAULT_STORE)
    {
        caveats.push(
            "Key-value stores other than `default` must be defined in a Spin runtime config \
             file (`spin up --runtime-config-file`); pycage's Redis or SQLite data is not \
             moved."
                .to_owned(),
        );
    }
    if tenant
        .variables
        .iter()
        .any(|v| v.secret || !matches!(v.source, VariableSource::Value(_)))
    {
        caveats.push(
            "Secret variables and those pycage reads from the environment or a file are \
             `required` in spin.toml and carry no value: provide them to Spin (for example \
             SPIN_VARIABLE_<NAME> in its environment)."
                .to_owned(),
        );
    }
    if tenant.path_prefix.is_some() {
        caveats.push(
            "The tenant's path prefix is not stripped: the component is routed at `/...` and \
             sees the full path."
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
    fn component_ids_are_kebab_case() {
        assert_eq!(component_id("shop"), "shop");
        assert_eq!(component_id("my_shop-2"), "my-shop2");
        assert_eq!(component_id("__a__b"), "a-b");
        assert_eq!(component_id("2fa"), "app2fa");
        assert_eq!(component_id("_-_"), "app");
    }

    #[test]
    fn allow_list_entries_are_written_as_spin_writes_them() {
        let hosts = |entry: &str| spin_hosts(&AllowedHost::parse(entry).unwrap());
        assert_eq!(
            hosts("HTTPS://api.example.com/"),
            ["https://api.example.com:443"]
        );
        assert_eq!(hosts("http://127.0.0.1:8089"), ["http://127.0.0.1:8089"]);
        assert_eq!(
            hosts("https://*.example.com"),
            ["https://*.example.com:443"]
        );
        assert_eq!(hosts("*://localhost:*"), ["*://localhost:*"]);
        assert_eq!(
            hosts("*://example.com"),
            ["http://example.com:80", "https://example.com:443"]
        );
        assert_eq!(hosts("http://[::1]:80"), ["http://[::1]:80"]);
    }

    #[test]
    fn spin_names_follow_spin_rules() {
        assert!(valid_spin_name("api_key", false));
        assert!(valid_spin_name("key2", false));
        assert!(!valid_spin_name("my_2fa", false));
        assert!(!valid_spin_name("my-var", false));
        assert!(valid_spin_name("my-store", true));
        assert!(valid_spin_name("my_store", true));
        assert!(!valid_spin_name("my-st_ore", true));
        assert!(!valid_spin_name("a--b", true));
        let mut tenant = TenantConfig::new("t", "t");
        tenant.variables = vec![VariableSpec {
            name: "my_2fa".into(),
            source: VariableSource::Value("x".into()),
            secret: false,
        }];
        assert!(unsupported(&tenant).unwrap().contains("my_2fa"));
    }

    #[test]
    fn the_manifest_grants_what_the_tenant_is_granted_and_holds_no_secret() {
        let mut tenant = TenantConfig::new("my_shop", "shop");
        tenant.key_value_stores = vec!["default".into()];
        tenant.allowed_outbound_hosts =
            vec![AllowedHost::parse("https://api.example.com").unwrap()];
        tenant.variables = vec![
            VariableSpec {
                name: "greeting".into(),
                source: VariableSource::Value("hi \"there\"\n".into()),
                secret: false,
            },
            VariableSpec {
                name: "api_key".into(),
                source: VariableSource::Value("s3cr3t".into()),
                secret: true,
            },
        ];
        let mounts = vec![Mount {
            source: "files/app".into(),
            destination: "/app".into(),
        }];
        let text = manifest(&tenant, &mounts);
        assert!(!text.contains("s3cr3t"), "{text}");
        let parsed: Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["spin_manifest_version"].as_integer(), Some(2));
        let component = &parsed["component"]["my-shop"];
        assert_eq!(component["source"].as_str(), Some("handler.wasm"));
        assert_eq!(component["files"][0]["destination"].as_str(), Some("/app"));
        assert_eq!(
            component["allowed_outbound_hosts"][0].as_str(),
            Some("https://api.example.com:443")
        );
        assert_eq!(component["key_value_stores"][0].as_str(), Some("default"));
        assert_eq!(
            component["variables"]["greeting"].as_str(),
            Some("{{ greeting }}")
        );
        let variables = &parsed["variables"];
        assert_eq!(
            variables["greeting"]["default"].as_str(),
            Some("hi \"there\"\n")
        );
        assert_eq!(variables["api_key"]["required"].as_bool(), Some(true));
        assert_eq!(variables["api_key"]["secret"].as_bool(), Some(true));
        let trigger = &parsed["trigger"]["http"][0];
        assert_eq!(trigger["route"].as_str(), Some("/..."));
        assert_eq!(trigger["component"].as_str(), Some("my-shop"));
    }
}
