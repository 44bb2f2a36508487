//! Loading plugins: shared libraries that provide layer and updater types (see
//! `singa_core::plugin` for the plugin side and `docs/plugins.md` for the guide).
//!
//! A library is checked in four steps, each with its own one-line refusal: its ELF headers
//! must describe a whole file (see `elf.rs`), it must load, it
//! must carry singa's interface stamp with a compatible version (read with a plain symbol
//! lookup, so a plugin from another version is named as such), and its root module's layout
//! must match this build's (`abi_stable`'s check, whose long report is condensed unless the
//! caller asks for it). Libraries are never unloaded: the types they hand out point into them.

pub mod check;
#[cfg(target_os = "linux")]
mod elf;

use crate::config::JobConfig;
use crate::registry::{Provenance, Registry};
use abi_stable::library::{lib_header_from_raw_library, LibraryError, RawLibrary, RootModule};
use singa_core::plugin::{
    interface_compatible, InterfaceStamp, PluginModuleRef, INTERFACE_SYMBOL, INTERFACE_VERSION,
};
use singa_core::{Error, LayerType, Result, UpdaterType};
use std::path::{Path, PathBuf};

/// The environment variable with plugin libraries to load (separated like `PATH`).
pub const PLUGIN_PATH_VAR: &str = "SINGA_PLUGIN_PATH";

/// How much a refusal says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Detail {
    /// One line per refusal.
    #[default]
    Brief,
    /// With `abi_stable`'s full layout report where there is one.
    Full,
}

/// A plugin library, loaded and checked.
#[derive(Debug)]
pub struct Plugin {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The plugin's name (its crate's).
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// The layer types it provides.
    pub layers: Vec<LayerType>,
    /// The updater types it provides.
    pub updaters: Vec<UpdaterType>,
}

impl Plugin {
    /// Where its types come from, as the registry shows it.
    pub fn provenance(&self) -> Provenance {
        Provenance::Plugin(format!(
            "{} {} from {}",
            self.name,
            self.version,
            self.path.display()
        ))
    }
}

/// Loads the plugin at `path`, or says in one line why it cannot be loaded.
pub fn load(path: &Path, detail: Detail) -> Result<Plugin> {
    let refuse = |message: String| Error::plugin(path.display(), message);
    // The loader searches the system's library folders for a bare file name: make it a path.
    let file = path.canonicalize().map_err(|e| {
        refuse(match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".into(),
            _ => format!("cannot be read ({e})"),
        })
    })?;
    let not_loadable = |e: &dyn std::fmt::Display| {
        let reason = first_line(e);
        let reason = reason
            .strip_prefix(&format!("{}: ", file.display()))
            .unwrap_or(&reason);
        refuse(format!("not a loadable shared library ({reason})"))
    };
    #[cfg(target_os = "linux")]
    elf::check(&file).map_err(refuse)?;
    // SAFETY: loading a library runs its initialisers; that is what asking for a plugin means.
    // Rust cdylibs (what `export_plugin!` builds) have none beyond the standard library's.
    let lib = unsafe { libloading::Library::new(&file) }.map_err(|e| not_loadable(&e))?;
    // From here on the library stays loaded, even when it is refused: abi_stable's layout
    // checks keep references into it (and so do the types it hands out).
    let lib = std::mem::ManuallyDrop::new(lib);
    // SAFETY: the symbol is an `InterfaceStamp` in every singa plugin; its layout is fixed
    // forever, and its magic bytes are checked before anything else is read.
    let stamp = unsafe { lib.get::<*const InterfaceStamp>(INTERFACE_SYMBOL.as_bytes()) }
        .map_err(|_| {
            refuse(format!(
                "not a singa plugin (it has no `{INTERFACE_SYMBOL}` symbol; a plugin crate ends with `singa_core::export_plugin!`)"
            ))
        })?;
    let version = unsafe { &**stamp }
        .version()
        .ok_or_else(|| {
            refuse(format!(
                "not a singa plugin (its `{INTERFACE_SYMBOL}` symbol is not singa's stamp)"
            ))
        })?
        .to_string();
    if !interface_compatible(INTERFACE_VERSION, &version) {
        return Err(refuse(format!(
            "built against singa plugin interface {version}, but this singa has interface {INTERFACE_VERSION}: rebuild the plugin against singa-core {INTERFACE_VERSION}"
        )));
    }
    let raw =
        std::mem::ManuallyDrop::new(RawLibrary::load_at(&file).map_err(|e| not_loadable(&e))?);
    // SAFETY: as above; the library stays loaded for the rest of the process.
    let module = unsafe { lib_header_from_raw_library(&raw) }
        .and_then(|header| header.init_root_module::<PluginModuleRef>())
        .map_err(|e| refuse(describe_library_error(&e, &version, detail)))?;

    let name = module.name().to_string();
    let plugin_version = module.version().to_string();
    let in_plugin = |e: Error| Error::plugin(format!("{name} ({})", path.display()), e);
    let layers = (module.layer_types())().into_result().map_err(in_plugin)?;
    let updaters = (module.updater_types())()
        .into_result()
        .map_err(in_plugin)?;
    Ok(Plugin {
        path: path.to_path_buf(),
        name,
        version: plugin_version,
        layers: layers.into_vec(),
        updaters: updaters.into_vec(),
    })
}

fn first_line(e: &(impl std::fmt::Display + ?Sized)) -> String {
    let text = e.to_string();
    text.lines().next().unwrap_or_default().trim().to_string()
}

fn describe_library_error(e: &LibraryError, version: &str, detail: Detail) -> String {
    match e {
        LibraryError::AbiInstability(report) => {
            let brief = format!(
                "its types' layout differs from this singa's although it claims a compatible interface ({version}; {INTERFACE_VERSION} here), so it was built against another singa-core: rebuild it against this one"
            );
            match detail {
                Detail::Brief => format!("{brief} (run with -v for abi_stable's full report)"),
                Detail::Full => format!("{brief}\n{report}"),
            }
        }
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "{} built against interface {actual_version}, this singa has {expected_version}: rebuild it against singa-core {expected_version}",
            PluginModuleRef::NAME
        ),
        other => match detail {
            Detail::Brief => first_line(other),
            Detail::Full => other.to_string(),
        },
    }
}

/// The plugin libraries named in [`PLUGIN_PATH_VAR`], in order.
pub fn paths_from_env() -> Vec<PathBuf> {
    std::env::var_os(PLUGIN_PATH_VAR)
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

impl Registry {
    /// The built-in types and those of the plugins named in [`PLUGIN_PATH_VAR`], then in
    /// `extra` (the command line's `--plugin`), then in the job file.
    pub fn with_plugins(
        extra: &[PathBuf],
        job: Option<&JobConfig>,
        detail: Detail,
    ) -> Result<Registry> {
        let mut paths = paths_from_env();
        paths.extend_from_slice(extra);
        if let Some(job) = job {
            paths.extend(job.plugins.iter().cloned());
        }
        let mut registry = Registry::builtin();
        registry.load_plugins(&paths, detail)?;
        Ok(registry)
    }

    /// Loads every plugin in `paths` (a library named twice is loaded once) and adds its types;
    /// a type name that is already taken refuses the plugin, naming both origins.
    pub fn load_plugins(&mut self, paths: &[PathBuf], detail: Detail) -> Result<Vec<Plugin>> {
        let mut seen: Vec<PathBuf> = Vec::new();
        let mut loaded = Vec::new();
        for path in paths {
            let key = path.canonicalize().unwrap_or_else(|_| path.clone());
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let plugin = load(path, detail)?;
            let from = plugin.provenance();
            for t in &plugin.layers {
                self.add_layer(t.clone(), from.clone())?;
            }
            for t in &plugin.updaters {
                self.add_updater(t.clone(), from.clone())?;
            }
            loaded.push(plugin);
        }
        Ok(loaded)
    }
}
