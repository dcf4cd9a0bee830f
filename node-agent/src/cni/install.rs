//! Putting `warren-cni` in the node's CNI configuration, and taking it out.
//!
//! The runtime uses the first network configuration in its folder, by file name
//! (`.conflist`, `.conf` or `.json`), as libcni sorts them. The node's network
//! plugin (Calico, Flannel, kindnet, …) owns that file; Warren appends its entry
//! to the file's plugin list, so it runs after the network plugin, with that
//! plugin's result. A network plugin that rewrites its file drops the entry: the
//! agent checks again on its timer. Files are replaced by rename, so the runtime
//! never reads half of one.
//!
//! The entry lists the namespaces in the mesh (`meshNamespaces`): while the agent
//! is down (restarting, upgrading) the plugin cannot ask it, and a pod of one of
//! those must wait, or it would start uncaptured, while a pod of any other
//! namespace has no reason to. The list is rewritten when it changes, and lives
//! with the configuration, so it outlasts a reboot as the entry does. A namespace
//! labelled into the mesh while no agent runs is not listed yet: its starting pods
//! are captured once the agent is back and finds them, as without the plugin.

use std::{
    collections::BTreeSet,
    fs,
    io::{self, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value, json};

use super::PLUGIN_NAME;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is not a CNI network configuration: {why}")]
    Invalid { path: PathBuf, why: String },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { what, path, source }
}

/// Where the plugin goes, and what its entry says.
#[derive(Clone, Debug)]
pub struct Install {
    /// The runtime's plugin folder (`/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// The runtime's configuration folder (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The `warren-cni` binary to copy there.
    pub plugin: PathBuf,
    /// The agent's socket as the plugin (on the host) sees it.
    pub agent_socket: PathBuf,
    /// Namespaces the plugin never asks about.
    pub exclude_namespaces: Vec<String>,
    /// How long the plugin waits for the agent's answer (longer than the agent
    /// waits for a Pod object).
    pub timeout_seconds: u64,
}

/// What [`Install::ensure`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Installed {
    /// The binary or the entry was written (the file named).
    Changed(PathBuf),
    /// Both were there already.
    Unchanged,
    /// The folder has no network configuration yet (the node's network plugin is
    /// not installed yet): nothing to chain after.
    NoNetwork,
}

impl Install {
    /// Copies the plugin and adds (or updates) its entry in the primary network
    /// configuration, with the namespaces in the mesh. Idempotent: the agent calls
    /// it once configuration is read, when the namespaces change, and on its timer.
    pub fn ensure(&self, mesh_namespaces: &BTreeSet<String>) -> Result<Installed, InstallError> {
        let copied = self.copy_binary()?;
        let Some(primary) = primary_config(&self.conf_dir)? else {
            return Ok(Installed::NoNetwork);
        };
        let text = fs::read(&primary).map_err(io_error("reading", &primary))?;
        let config: Value = serde_json::from_slice(&text).map_err(|e| InstallError::Invalid {
            path: primary.clone(),
            why: e.to_string(),
        })?;
        let mut list = as_list(&primary, config)?;
        // Results before 0.3.0 carry no `ips` list: the plugin could not tell the
        // agent the pod's addresses.
        let version = list["cniVersion"].as_str().unwrap_or_default();
        if !super::plugin::SUPPORTED_VERSIONS.contains(&version) {
            return Err(InstallError::Invalid {
                path: primary.clone(),
                why: format!(
                    "cniVersion {version:?}: warren-cni speaks {}",
                    super::plugin::SUPPORTED_VERSIONS.join(", ")
                ),
            });
        }
        let entry = self.entry(mesh_namespaces);
        let plugins = plugins_mut(&primary, &mut list)?;
        match plugins.iter().position(is_ours) {
            Some(at) if plugins[at] == entry && is_conflist(&primary) => {
                return Ok(if copied {
                    Installed::Changed(self.bin_dir.join(PLUGIN_NAME))
                } else {
                    Installed::Unchanged
                });
            }
            Some(at) => plugins[at] = entry,
            None => plugins.push(entry),
        }
        // A single-network `.conf` becomes a list: written beside it as
        // `.conflist`, which sorts where it did, and the `.conf` removed.
        let target = if is_conflist(&primary) {
            primary.clone()
        } else {
            primary.with_extension("conflist")
        };
        write_atomically(&target, &pretty(&list), 0o644)?;
        if target != primary {
            fs::remove_file(&primary).map_err(io_error("removing", &primary))?;
        }
        Ok(Installed::Changed(target))
    }

    fn entry(&self, mesh_namespaces: &BTreeSet<String>) -> Value {
        json!({
            "type": PLUGIN_NAME,
            "agentSocket": self.agent_socket,
            "excludeNamespaces": self.exclude_namespaces,
            "meshNamespaces": mesh_namespaces,
            "timeoutSeconds": self.timeout_seconds,
        })
    }

    /// Copies the plugin unless the same bytes are there already.
    fn copy_binary(&self) -> Result<bool, InstallError> {
        let target = self.bin_dir.join(PLUGIN_NAME);
        let ours = fs::read(&self.plugin).map_err(io_error("reading", &self.plugin))?;
        if fs::read(&target).is_ok_and(|theirs| theirs == ours) {
            return Ok(false);
        }
        fs::create_dir_all(&self.bin_dir).map_err(io_error("creating", &self.bin_dir))?;
        write_atomically(&target, &ours, 0o755)?;
        Ok(true)
    }
}

/// Takes Warren's entry out of every network configuration in `conf_dir` and the
/// plugin out of `bin_dir` (`warren-node-agent uninstall`).
pub fn remove(conf_dir: &Path, bin_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut changed = Vec::new();
    for path in configs(conf_dir)? {
        let Ok(text) = fs::read(&path) else { continue };
        let Ok(mut config) = serde_json::from_slice::<Value>(&text) else {
            continue;
        };
        let Some(plugins) = config.get_mut("plugins").and_then(Value::as_array_mut) else {
            continue;
        };
        let before = plugins.len();
        plugins.retain(|p| !is_ours(p));
        if plugins.len() != before {
            write_atomically(&path, &pretty(&config), 0o644)?;
            changed.push(path);
        }
    }
    let binary = bin_dir.join(PLUGIN_NAME);
    match fs::remove_file(&binary) {
        Ok(()) => changed.push(binary),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("removing", &binary)(e)),
    }
    Ok(changed)
}

fn is_ours(plugin: &Value) -> bool {
    plugin["type"] == PLUGIN_NAME
}

fn is_conflist(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "conflist")
}

/// Network configuration files, in the order the runtime reads them.
fn configs(conf_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let entries = match fs::read_dir(conf_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("listing", conf_dir)(e)),
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
        })
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    Ok(found)
}

/// The configuration the runtime uses: the first by name.
fn primary_config(conf_dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    Ok(configs(conf_dir)?.into_iter().next())
}

/// A configuration as a list: a `.conf` holds one plugin, whose `cniVersion` and
/// `name` move up to the list.
fn as_list(path: &Path, config: Value) -> Result<Value, InstallError> {
    let Value::Object(mut object) = config else {
        return Err(InstallError::Invalid {
            path: path.to_owned(),
            why: "not a JSON object".into(),
        });
    };
    if object.contains_key("plugins") {
        return Ok(Value::Object(object));
    }
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(value) = object.remove(key) {
            list.insert(key.into(), value);
        }
    }
    list.insert("plugins".into(), Value::Array(vec![Value::Object(object)]));
    Ok(Value::Object(list))
}

fn plugins_mut<'a>(path: &Path, list: &'a mut Value) -> Result<&'a mut Vec<Value>, InstallError> {
    list.get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| InstallError::Invalid {
            path: path.to_owned(),
            why: "\"plugins\" is not a list".into(),
        })
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Writes a temporary file beside `path` and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    // A dot file with another extension: never read as a configuration.
    let temporary = dir.join(format!(".{name}.warren-tmp"));
    let mut file = fs::File::create(&temporary).map_err(io_error("creating", &temporary))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error("writing", &temporary))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(mode))
        .map_err(io_error("setting the mode of", &temporary))?;
    fs::rename(&temporary, path).map_err(io_error("renaming into", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(dir: &Path) -> Install {
        let plugin = dir.join("build/warren-cni");
        fs::create_dir_all(plugin.parent().unwrap()).unwrap();
        fs::write(&plugin, b"#!plugin v1").unwrap();
        Install {
            bin_dir: dir.join("opt/cni/bin"),
            conf_dir: dir.join("etc/cni/net.d"),
            plugin,
            agent_socket: "/var/run/warren/cni.sock".into(),
            exclude_namespaces: vec!["kube-system".into()],
            timeout_seconds: 15,
        }
    }

    fn mesh() -> BTreeSet<String> {
        ["shop".to_owned()].into()
    }

    fn read(path: &Path) -> Value {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn the_plugin_is_chained_after_the_first_network_and_kept_there() {
        let dir = tempfile::tempdir().unwrap();
        let install = install(dir.path());
        // No network plugin yet: nothing to chain after, the binary is in place.
        assert_eq!(install.ensure(&mesh()).unwrap(), Installed::NoNetwork);
        assert_eq!(
            fs::read(install.bin_dir.join(PLUGIN_NAME)).unwrap(),
            b"#!plugin v1"
        );

        fs::create_dir_all(&install.conf_dir).unwrap();
        let primary = install.conf_dir.join("10-calico.conflist");
        let later = install.conf_dir.join("99-loopback.conf");
        fs::write(
            &primary,
            r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"calico","mtu":1450},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        fs::write(
            &later,
            r#"{"cniVersion":"1.0.0","name":"lo","type":"loopback"}"#,
        )
        .unwrap();
        assert_eq!(
            install.ensure(&mesh()).unwrap(),
            Installed::Changed(primary.clone())
        );
        let list = read(&primary);
        let plugins = list["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(
            plugins[0]["mtu"], 1450,
            "the network plugin's entry is kept"
        );
        assert_eq!(plugins[2]["type"], PLUGIN_NAME);
        assert_eq!(plugins[2]["agentSocket"], "/var/run/warren/cni.sock");
        assert_eq!(plugins[2]["excludeNamespaces"], json!(["kube-system"]));
        assert_eq!(plugins[2]["meshNamespaces"], json!(["shop"]));
        assert_eq!(plugins[2]["timeoutSeconds"], 15);
        assert!(!read(&later).to_string().contains(PLUGIN_NAME));
        // Again: nothing to do.
        assert_eq!(install.ensure(&mesh()).unwrap(), Installed::Unchanged);
        // A namespace joins the mesh: the plugin learns it for when the agent is down.
        let more: BTreeSet<String> = ["pay".to_owned(), "shop".to_owned()].into();
        assert_eq!(
            install.ensure(&more).unwrap(),
            Installed::Changed(primary.clone())
        );
        assert_eq!(
            read(&primary)["plugins"][2]["meshNamespaces"],
            json!(["pay", "shop"])
        );

        // The network plugin rewrites its file: the entry comes back, once.
        fs::write(
            &primary,
            r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","plugins":[{"type":"calico","mtu":1400}]}"#,
        )
        .unwrap();
        assert_eq!(
            install.ensure(&mesh()).unwrap(),
            Installed::Changed(primary.clone())
        );
        let plugins = read(&primary)["plugins"].as_array().unwrap().clone();
        assert_eq!(plugins.len(), 2);
        assert_eq!(plugins[1]["type"], PLUGIN_NAME);

        // A new agent version: the binary is replaced.
        fs::write(&install.plugin, b"#!plugin v2").unwrap();
        assert_eq!(
            install.ensure(&mesh()).unwrap(),
            Installed::Changed(install.bin_dir.join(PLUGIN_NAME))
        );
        assert_eq!(
            fs::read(install.bin_dir.join(PLUGIN_NAME)).unwrap(),
            b"#!plugin v2"
        );
        let mode = fs::metadata(install.bin_dir.join(PLUGIN_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);

        // Uninstalled: the entry and the binary go, the rest stays.
        let removed = remove(&install.conf_dir, &install.bin_dir).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        let plugins = read(&primary)["plugins"].as_array().unwrap().clone();
        assert_eq!(plugins, vec![json!({"type":"calico","mtu":1400})]);
        assert!(!install.bin_dir.join(PLUGIN_NAME).exists());
        // No temporary file is left for the runtime to trip on.
        let names: Vec<_> = fs::read_dir(&install.conf_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_single_network_conf_becomes_a_list() {
        let dir = tempfile::tempdir().unwrap();
        let install = install(dir.path());
        fs::create_dir_all(&install.conf_dir).unwrap();
        let conf = install.conf_dir.join("10-flannel.conf");
        fs::write(
            &conf,
            r#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"isDefaultGateway":true}}"#,
        )
        .unwrap();
        let list_path = install.conf_dir.join("10-flannel.conflist");
        assert_eq!(
            install.ensure(&mesh()).unwrap(),
            Installed::Changed(list_path.clone())
        );
        assert!(!conf.exists());
        let list = read(&list_path);
        assert_eq!(list["cniVersion"], "0.3.1");
        assert_eq!(list["name"], "cbr0");
        assert_eq!(
            list["plugins"][0],
            json!({"type":"flannel","delegate":{"isDefaultGateway":true}})
        );
        assert_eq!(list["plugins"][1]["type"], PLUGIN_NAME);
    }

    #[test]
    fn a_network_too_old_to_report_addresses_is_not_chained() {
        let dir = tempfile::tempdir().unwrap();
        let install = install(dir.path());
        fs::create_dir_all(&install.conf_dir).unwrap();
        let old = install.conf_dir.join("10-old.conf");
        let text = r#"{"cniVersion":"0.2.0","name":"old","type":"bridge"}"#;
        fs::write(&old, text).unwrap();
        let error = install.ensure(&mesh()).unwrap_err().to_string();
        assert!(
            error.contains("10-old.conf") && error.contains("0.2.0"),
            "{error}"
        );
        assert_eq!(fs::read_to_string(&old).unwrap(), text);
    }

    #[test]
    fn a_broken_network_configuration_is_named_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let install = install(dir.path());
        fs::create_dir_all(&install.conf_dir).unwrap();
        let broken = install.conf_dir.join("05-broken.conflist");
        fs::write(&broken, "{ half").unwrap();
        let error = install.ensure(&mesh()).unwrap_err().to_string();
        assert!(error.contains("05-broken.conflist"), "{error}");
        assert_eq!(fs::read(&broken).unwrap(), b"{ half");
    }
}
